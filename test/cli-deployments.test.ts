import { readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { DeploymentInfo, SandboxInfo } from '@roost/api';
import { alive, endProcess, eventually, httpGet, qemusOf, runRoost, servesOf, startedDaemonPid, TestHome, type CliResult } from './helpers.js';

/*
 * Deployments from the shell, with a real daemon and real VMs: `roost deploy
 * -f web.yaml` starts the home's daemon, whose replica (busybox httpd of the
 * base image) answers through the service port; `roost deployments ls,
 * inspect, scale, rollback, rm`; a spec file with mistakes; `roost serve
 * stop` refusing while a deployment exists. At most two replicas run at
 * once. Every daemon a test learns of is stopped by its pid, and every QEMU
 * of the test's homes killed, whatever happened.
 */

const homes: TestHome[] = [];
/** The daemons started here, by pid: stopped at the end whatever happened. */
const daemons = new Set<number>();
/** Environments of homes whose daemon may still keep deployments at the end. */
const envs: NodeJS.ProcessEnv[] = [];

afterAll(async () => {
  // Deployments first: a daemon stopped with them would leave their replicas to the cleanup's runtime, which would reconcile them.
  for (const env of envs) {
    const left = await runRoost(['deployments', 'ls', '-q'], { env });
    const names = left.code === 0 ? left.stdout.split('\n').filter(Boolean) : [];
    if (names.length > 0) await runRoost(['deployments', 'rm', ...names], { env });
  }
  for (const pid of daemons) await endProcess(pid);
  for (const home of homes) {
    await home.cleanup();
    expect(qemusOf(home.root), `QEMUs left in ${home.root}`).toEqual([]);
  }
}, 120_000);

/** A fresh home; the CLI run in it may start daemons (whatever this process's environment says). */
function newHome(): { home: TestHome; env: NodeJS.ProcessEnv } {
  const home = new TestHome();
  homes.push(home);
  const env = home.env;
  delete env.ROOST_AUTO_DAEMON;
  delete env.ROOST_HOST;
  envs.push(env);
  return { home, env };
}

/** The spec of a web server answering `text` at / on guest port 8000, health-checked over HTTP every second. */
function webSpec(text: string, extra = ''): string {
  return [
    '# busybox httpd of the base image',
    'name: web',
    'replicas: 1',
    `command: mkdir -p /tmp/www && echo ${text} > /tmp/www/index.html && exec httpd -f -p 8000 -h /tmp/www`,
    'ports:',
    '  - 127.0.0.1::8000',
    'health:',
    '  http:',
    '    port: 8000',
    '  intervalMs: 1000',
    extra,
  ].join('\n');
}

/** Resolves true when a TCP connection to 127.0.0.1:port is refused. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

describe('roost deploy and roost deployments, through the daemon the CLI starts', () => {
  const { home, env } = newHome();
  const roost = (args: string[], stdin?: string) => runRoost(args, { env, ...(stdin !== undefined ? { stdin } : {}) });
  const ok = async (args: string[]): Promise<string> => {
    const r = await roost(args);
    expect(r, `roost ${args.join(' ')}`).toMatchObject({ code: 0 });
    return r.stdout;
  };
  const file = (name: string, text: string): string => {
    const path = join(home.root, name);
    writeFileSync(path, text);
    return path;
  };
  const inspect = async (): Promise<DeploymentInfo> => JSON.parse(await ok(['deployments', 'inspect', 'web', '--json'])) as DeploymentInfo;
  /** The ids of the home's sandboxes (any status). */
  const sandboxes = async (): Promise<string[]> => (await ok(['ps', '-a', '-q'])).split('\n').filter(Boolean).sort();
  /** GET / through the service port until it answers `body` (a rollout may still be draining the old replica). */
  const serves = (body: string, timeoutMs = 120_000) =>
    eventually(async () => (await httpGet(port, 5_000)) === body, timeoutMs, `the service port answering ${JSON.stringify(body)}`);
  let daemon: number;
  let port: number;
  let first: string;

  it('deploy -f web.yaml starts a daemon and prints the generation and service port, which answers through the replica', async () => {
    const r = await roost(['deploy', '-f', file('web.yaml', webSpec('v1'))]);
    expect(r.code, r.stderr).toBe(0);
    daemon = startedDaemonPid(r.stderr)!;
    expect(daemon, r.stderr).not.toBeNull();
    daemons.add(daemon);
    expect(r.stderr).toBe(`roost: started a daemon for ${home.root} (pid ${daemon}, log ${home.root}/logs/daemon.log); stop it with roost serve stop\n`);
    expect(readFileSync(join(home.root, 'logs', 'daemon.log'), 'utf8')).toMatch(/roost serve started by roost deploy \(pid \d+\), for deployment web\n/);
    const m = /^web: generation 1, [01]\/1 replicas healthy( \(rolling out\))?\n {2}127\.0\.0\.1:(\d+) -> 8000\n$/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    port = Number(m![2]);
    expect(port).toBeGreaterThan(0);
    await serves('v1\n');
  }, 180_000);

  it('deployments ls and inspect show it, as JSON and as text; ps shows its replica, labelled', async () => {
    await eventually(async () => (await inspect()).observedGeneration === 1, 30_000, 'generation 1 observed');
    const [listed] = JSON.parse(await ok(['deployments', 'ls', '--json'])) as DeploymentInfo[];
    expect(listed).toMatchObject({
      name: 'web',
      generation: 1,
      observedGeneration: 1,
      replicas: 1,
      healthyReplicas: 1,
      updatedReplicas: 1,
      ports: [{ hostIp: '127.0.0.1', hostPort: port, guestPort: 8000 }],
      spec: { replicas: 1, restart: 'always', health: { http: { port: 8000, path: '/' }, intervalMs: 1000, timeoutMs: 2000, retries: 3 } },
      lastError: null,
    });
    expect(await ok(['deployments', 'ls'])).toMatch(
      new RegExp(`^NAME +REPLICAS +UP-TO-DATE +GENERATION +PORTS +AGE\\nweb +1/1 +1 +1/1 +127\\.0\\.0\\.1:${port}->8000 +\\d+[smhd]\\n$`),
    );
    expect(await ok(['deployments', 'ls', '-q'])).toBe('web\n');

    const info = await inspect();
    expect(info.members).toHaveLength(1);
    first = info.members[0]!.id;
    expect(info.members[0]).toMatchObject({ revision: info.revision, current: true, state: 'healthy', restarts: 0, lastProbe: { ok: true }, lastExit: null });
    expect(info.events.map((e) => e.type)).toEqual(expect.arrayContaining(['deployment.created', 'replica.created', 'replica.healthy']));
    const text = await ok(['deployments', 'inspect', 'web']);
    expect(text).toMatch(/\nReplicas: +1 wanted: 1 existing, 1 healthy, 1 up to date\n/);
    expect(text).toMatch(new RegExp(`\\nPorts: +127\\.0\\.0\\.1:${port} -> 8000 \\(round-robin\\)\\n`));
    expect(text).toMatch(new RegExp(`\\n {2}${first} +${info.revision} +healthy +0 +\\S+ ago +ok: `));
    expect(text).toMatch(/\nEvents:\n(.*\n)* {2}\S+ +\d+ +replica\.healthy +[0-9a-f]{12} +deployment=web/);

    const [replica] = JSON.parse(await ok(['ps', '--json'])) as SandboxInfo[];
    expect(replica).toMatchObject({
      id: first,
      status: 'running',
      detached: true,
      labels: { 'roost.deployment': 'web', 'roost.deployment.revision': info.revision },
    });
  }, 60_000);

  it('deployments scale web 2, then 1 (--wait): both replicas serve, and the newest goes first', async () => {
    const up = await ok(['deployments', 'scale', 'web', '2', '--wait']);
    expect(up).toBe(`web: generation 2, 2/2 replicas healthy\n  127.0.0.1:${port} -> 8000\n`);
    const two = await sandboxes();
    expect(two).toHaveLength(2);
    expect(two).toContain(first);
    for (let i = 0; i < 4; i++) expect(await httpGet(port)).toBe('v1\n');

    const down = await ok(['deployments', 'scale', 'web', '1', '--wait']);
    expect(down).toBe(`web: generation 3, 1/1 replicas healthy\n  127.0.0.1:${port} -> 8000\n`);
    expect(await sandboxes()).toEqual([first]);
    expect(await httpGet(port)).toBe('v1\n');
  }, 240_000);

  it('a changed command rolls out a new revision on the same port; rollback goes back to the one before', async () => {
    const before = await inspect();
    const updated = await ok(['deploy', '-f', file('web2.yaml', webSpec('v2')), '--wait']);
    expect(updated).toBe(`web: generation 4, 1/1 replicas healthy\n  127.0.0.1:${port} -> 8000\n`);
    await serves('v2\n', 30_000);
    const after = await inspect();
    expect(after.revision).not.toBe(before.revision);
    expect(after).toMatchObject({ canRollback: true, members: [{ revision: after.revision, current: true, state: 'healthy' }] });
    expect(await sandboxes()).not.toContain(first);

    const back = await ok(['deployments', 'rollback', 'web', '--wait']);
    expect(back).toBe(`web: generation 5, 1/1 replicas healthy\n  127.0.0.1:${port} -> 8000\n`);
    await serves('v1\n', 30_000);
    const rolledBack = await inspect();
    expect(rolledBack).toMatchObject({ revision: before.revision, generation: 5, observedGeneration: 5 });
    expect(rolledBack.events.map((e) => e.type)).toContain('deployment.rolledback');
    expect(await sandboxes()).toHaveLength(1);
  }, 360_000);

  it('a bad spec file fails with its file, line and field (exit 125), from a file or stdin, and changes nothing', async () => {
    const tooMany = file('too-many.yaml', 'name: web\ncommand: httpd\nreplicas: 100\n');
    const r1 = await roost(['deploy', '-f', tooMany]);
    expect(r1).toMatchObject({ code: 125, stdout: '' });
    expect(r1.stderr).toBe(`roost: invalid deployment spec:\n${tooMany}:3: replicas: Too big: expected number to be <=64\n`);

    const typo = file('typo.yaml', 'name: web\nreplica: 2\ncommand: httpd\n');
    const r2 = await roost(['deploy', '-f', typo]);
    expect(r2.code).toBe(125);
    expect(r2.stderr).toMatch(new RegExp(`^roost: invalid deployment spec:\\n${typo.replace(/[.]/g, '\\.')}:2: replica: `));

    const r3 = await roost(['deploy', '-f', '-'], 'name: web\ncommand: [httpd\n');
    expect(r3.code).toBe(125);
    expect(r3.stderr).toMatch(/^roost: invalid deployment spec:\nstdin:\d+: /);

    const r4 = await roost(['deploy', '-f', join(home.root, 'missing.yaml')]);
    expect(r4.code).toBe(125);
    expect(r4.stderr).toMatch(/^roost: ENOENT: no such file or directory, stat '.*missing\.yaml'\n$/);

    expect((await inspect()).generation).toBe(5);
  });

  it('roost serve stop refuses while the deployment exists, naming it', async () => {
    const r = await roost(['serve', 'stop']);
    expect(r.code).toBe(125);
    expect(r.stderr).toMatch(/keeps deployment web, which nothing keeps filled or running once it stops: remove them first, or `roost serve stop --force`/);
    expect(alive(daemon)).toBe(true);
  });

  it('deployments rm removes it and its replicas, and its port closes; then the daemon stops', async () => {
    expect(await ok(['deployments', 'rm', 'web'])).toBe('web\n');
    expect(await sandboxes()).toEqual([]);
    expect(await ok(['deployments', 'ls', '-q'])).toBe('');
    expect(await refused(port)).toBe(true);
    const missing = await roost(['deployments', 'inspect', 'web']);
    expect(missing).toMatchObject({ code: 125, stderr: 'roost: no deployment web (see `roost deployments ls`)\n' });

    expect(await roost(['serve', 'stop'])).toMatchObject({ code: 0 });
    expect(alive(daemon)).toBe(false);
    expect(qemusOf(home.root)).toEqual([]);
  }, 60_000);
});

describe('roost deploy with ROOST_AUTO_DAEMON=0', () => {
  it('writes the deployment through an embedded runtime, says nothing runs it, refuses --wait, and boots nothing', async () => {
    const { home, env } = newHome();
    const off = { ...env, ROOST_AUTO_DAEMON: '0' };
    const roost = (args: string[]): Promise<CliResult> => runRoost(args, { env: off });
    const spec = join(home.root, 'web.yaml');
    writeFileSync(spec, webSpec('embedded'));

    const r = await roost(['deploy', '-f', spec]);
    expect(r).toMatchObject({
      code: 0,
      stdout: 'web: generation 1, 0/1 replicas healthy (rolling out)\n  127.0.0.1:(any free port) -> 8000\n',
      stderr: 'roost: note: no daemon runs, so nothing runs deployment web until a daemon (`roost serve`) or an embedded runtime opens the home\n',
    });
    const waited = await roost(['deployments', 'scale', 'web', '2', '--wait']);
    expect(waited.code).toBe(125);
    expect(waited.stderr).toMatch(/^roost: --wait: no daemon runs for the home, so nothing would roll deployment web out/);
    expect(JSON.parse((await roost(['deployments', 'ls', '--json'])).stdout)).toMatchObject([{ name: 'web', generation: 1, replicas: 0, members: [] }]);
    expect(servesOf(home.root)).toEqual([]);
    expect(qemusOf(home.root)).toEqual([]);
    expect(await roost(['deployments', 'rm', 'web'])).toMatchObject({ code: 0, stdout: 'web\n' });
    expect((await roost(['deployments', 'ls', '-q'])).stdout).toBe('');
  }, 60_000);
});
