import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, endProcess, eventually, httpGet, qemusOf, runRoost, servesOf, startedDaemonPid, TestHome, type CliResult } from './helpers.js';

/*
 * The long-lived owner: `roost run -d` with published ports and no daemon
 * starts `roost serve` for the home in the background, which serves the
 * ports after the CLI exits; `roost serve status|stop` manage it;
 * ROOST_AUTO_DAEMON=0 opts out; two commands at once end with one daemon.
 * Real daemons, real VMs (busybox httpd in the base image), traffic on
 * 127.0.0.1. Every daemon a test learns of is stopped by its pid.
 */

const homes: TestHome[] = [];
/** The daemons started here, by pid: stopped at the end whatever happened. */
const daemons = new Set<number>();

afterAll(async () => {
  for (const pid of daemons) await endProcess(pid);
  for (const home of homes) {
    await home.cleanup();
    expect(qemusOf(home.root), `QEMUs left in ${home.root}`).toEqual([]);
  }
});

/** A fresh home; the CLI run in it may start daemons (whatever this process's environment says). */
function newHome(): { home: TestHome; env: NodeJS.ProcessEnv } {
  const home = new TestHome();
  homes.push(home);
  const env = home.env;
  delete env.ROOST_AUTO_DAEMON;
  delete env.ROOST_HOST;
  return { home, env };
}

/** The pid of the daemon a CLI run says it started (remembered for the cleanup), or null. */
function startedDaemon(r: CliResult): number | null {
  const pid = startedDaemonPid(r.stderr);
  if (pid !== null) daemons.add(pid);
  return pid;
}

/** `run -d -p 127.0.0.1::8000` of busybox httpd serving `text`. */
function httpdArgs(text: string): string[] {
  return [
    'run',
    '-d',
    '-p',
    '127.0.0.1::8000',
    '--',
    'sh',
    '-c',
    `mkdir -p /tmp/www && echo ${text} > /tmp/www/index.html && exec httpd -f -p 8000 -h /tmp/www`,
  ];
}

describe('a daemon started by roost run -d', () => {
  const { home, env } = newHome();
  const roost = (args: string[], extra: NodeJS.ProcessEnv = {}) => runRoost(args, { env: { ...env, ...extra } });
  let pid: number;
  let first: string;
  let port: number;

  /** The host port a sandbox's guest port 8000 is published on (asked through whatever owns the home). */
  async function publishedPort(id: string): Promise<number> {
    const r = await roost(['port', 'ls', id, '8000']);
    expect(r, r.stderr).toMatchObject({ code: 0 });
    return Number(r.stdout.trim().split(':').pop());
  }

  it('starts when none runs, says so once, and serves the published port after the CLI exited', async () => {
    const r = await roost(httpdArgs('served-by-the-daemon'));
    expect(r.code, r.stderr).toBe(0);
    first = r.stdout.trim();
    expect(first).toMatch(/^[0-9a-f]{12}$/);
    pid = startedDaemon(r)!;
    const log = join(home.root, 'logs', 'daemon.log');
    // One line, and no note about ports that die with the CLI.
    expect(r.stderr).toBe(`roost: started a daemon for ${home.root} (pid ${pid}, log ${log}); stop it with roost serve stop\n`);
    expect(alive(pid)).toBe(true);
    // In a session of its own (no terminal's hangup reaches it), in the home's directory, its output in the log.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    expect(Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3])).toBe(pid);
    expect(readlinkSync(`/proc/${pid}/cwd`)).toBe(home.root);
    expect(readFileSync(log, 'utf8')).toMatch(/^--- \S+ roost serve started by roost run -d \(pid \d+\), for published ports\nroost serve: home /);

    // The CLI has exited: the daemon serves the port.
    port = await publishedPort(first);
    let body: string | null = null;
    await eventually(async () => (body = await httpGet(port, 5_000)) !== null, 30_000, 'httpd answering through the published port');
    expect(body).toBe('served-by-the-daemon\n');
  }, 120_000);

  it('a second run -d uses the same daemon, without a message', async () => {
    const r = await roost(httpdArgs('second'));
    expect(r).toMatchObject({ code: 0, stderr: '' });
    const second = r.stdout.trim();
    const secondPort = await publishedPort(second);
    let body: string | null = null;
    await eventually(async () => (body = await httpGet(secondPort, 5_000)) !== null, 30_000, 'the second httpd answering');
    expect(body).toBe('second\n');
    expect(servesOf(home.root)).toEqual([pid]);
  }, 120_000);

  it('roost serve status reports it (exit 0), as text and JSON', async () => {
    const text = await roost(['serve', 'status']);
    expect(text).toMatchObject({ code: 0, stderr: '' });
    expect(text.stdout.split('\n')).toEqual([
      `roost serve: running for ${home.root}`,
      `  pid:       ${pid}`,
      `  socket:    unix://${home.root}/roost.sock`,
      `  tcp:       -`,
      expect.stringMatching(/^ {2}uptime: {4}\d+s$/),
      `  sandboxes: 2 (2 detached)`,
      expect.stringMatching(/^ {2}version: {3}\S+$/),
      `  log:       ${home.root}/logs/daemon.log`,
      '',
    ]);
    const json = await roost(['serve', 'status', '--json']);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({
      home: home.root,
      running: true,
      answering: true,
      pid,
      socket: `unix://${home.root}/roost.sock`,
      url: null,
      sandboxes: { live: 2, detached: 2 },
      log: `${home.root}/logs/daemon.log`,
      heldBy: null,
    });
  });

  it('roost serve stop stops it; status then exits 3, and the port is served no more', async () => {
    const r = await roost(['serve', 'stop']);
    expect(r).toMatchObject({ code: 0, stdout: '' });
    expect(r.stderr).toBe(
      `roost serve: stopped the daemon of ${home.root} (pid ${pid})\n` +
        'roost serve: 2 detached sandboxes run on, without their networks and published ports until a roost process owns the home again\n',
    );
    expect(alive(pid)).toBe(false);
    expect(existsSync(join(home.root, 'roost.sock'))).toBe(false);
    const status = await roost(['serve', 'status']);
    expect(status).toMatchObject({ code: 3, stdout: `roost serve: not running for ${home.root}\n` });
    expect(await httpGet(port, 5_000)).toBeNull();
    // Stopping what is stopped is not an error.
    expect(await roost(['serve', 'stop'])).toMatchObject({ code: 0, stderr: `roost serve: no daemon runs for ${home.root}\n` });
  }, 60_000);

  it('the next run -d starts another, which serves the earlier ports again; a SIGKILLed one leaves a socket the next start replaces', async () => {
    const r = await roost(httpdArgs('third'));
    expect(r.code, r.stderr).toBe(0);
    const again = startedDaemon(r);
    expect(again).not.toBeNull();
    expect(again).not.toBe(pid);
    // It re-attached to the sandboxes the stopped daemon left running, and serves their ports.
    let body: string | null = null;
    await eventually(async () => (body = await httpGet(port, 5_000)) !== null, 30_000, 'the first httpd answering again');
    expect(body).toBe('served-by-the-daemon\n');

    process.kill(again!, 'SIGKILL');
    await eventually(() => !alive(again!), 10_000, 'the daemon killed');
    expect(existsSync(join(home.root, 'roost.sock'))).toBe(true);
    expect((await roost(['serve', 'status'])).code).toBe(3);
    const after = await roost(httpdArgs('fourth'));
    expect(after.code, after.stderr).toBe(0);
    const third = startedDaemon(after);
    expect(third).not.toBeNull();
    expect(servesOf(home.root)).toEqual([third]);
    expect(JSON.parse((await roost(['serve', 'status', '--json'])).stdout)).toMatchObject({ pid: third, sandboxes: { live: 4 } });
    expect(await roost(['serve', 'stop'])).toMatchObject({ code: 0 });
    expect(alive(third!)).toBe(false);
  }, 180_000);
});

describe('ROOST_AUTO_DAEMON=0', () => {
  it('keeps the embedded runtime and its note, and starts nothing', async () => {
    const { home, env } = newHome();
    const off = { ...env, ROOST_AUTO_DAEMON: '0' };
    const r = await runRoost(httpdArgs('embedded'), { env: off });
    expect(r.code, r.stderr).toBe(0);
    expect(startedDaemon(r)).toBeNull();
    expect(r.stderr).toBe(
      "roost: note: no daemon runs, so this sandbox's network and published ports work only while a roost command holds the home: run `roost serve` to keep them up\n",
    );
    expect(servesOf(home.root)).toEqual([]);
    expect(existsSync(join(home.root, 'roost.sock'))).toBe(false);
    expect(existsSync(join(home.root, 'logs', 'daemon.log'))).toBe(false);
    expect((await runRoost(['serve', 'status'], { env: off })).code).toBe(3);
    expect(await runRoost(['rm', '-f', r.stdout.trim()], { env: off })).toMatchObject({ code: 0 });
  }, 120_000);
});

describe('two run -d -p at once', () => {
  it('end with exactly one daemon, which both went through', async () => {
    const { home, env } = newHome();
    const [a, b] = await Promise.all([runRoost(httpdArgs('a'), { env }), runRoost(httpdArgs('b'), { env })]);
    const started = [startedDaemon(a), startedDaemon(b)].filter((p) => p !== null);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    // One start was announced; the other command used the winner's daemon (its own exited on the home's lock).
    expect(started).toHaveLength(1);
    expect([a.stderr, b.stderr].filter((s) => s === '')).toHaveLength(1);
    const pid = started[0]!;
    await eventually(() => servesOf(home.root).length === 1, 10_000, 'the losing daemon gone');
    expect(servesOf(home.root)).toEqual([pid]);
    const status = JSON.parse((await runRoost(['serve', 'status', '--json'], { env })).stdout) as { pid: number; sandboxes: { live: number } };
    expect(status).toMatchObject({ pid, sandboxes: { live: 2 } });
    const ids = (await runRoost(['ps', '-q'], { env })).stdout.trim().split('\n').sort();
    expect(ids).toEqual([a.stdout.trim(), b.stdout.trim()].sort());
    expect(await runRoost(['serve', 'stop'], { env })).toMatchObject({ code: 0 });
    expect(alive(pid)).toBe(false);
  }, 180_000);
});
