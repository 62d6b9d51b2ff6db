import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { ActorInfo, ActorMessageRecord, ActorModuleInfo, ActorState } from '@roost/api';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { watModule } from './actor-modules.js';
import { ROOST_BIN, runInTerminal, runRoost, TestHome, type CliResult } from './helpers.js';

/*
 * `roost actor ...` from the shell, no VM. Without a daemon the CLI's own
 * runtime handles the messages while a command runs: a call is handled by
 * the command that waits for it, a send is stored and handled by the next
 * command's runtime (before that command's own message: a mailbox is
 * ordered). Then the same commands through a daemon, when @roost/client
 * has `actors` (the REST face).
 */

const COUNTER = fileURLToPath(new URL('../examples/actors/counter/counter.wasm', import.meta.url));
const STACK_FRAME = /^\s+at /m;

const work = mkdtempSync(join(tmpdir(), 'roost-cli-actors-'));
const homes: TestHome[] = [];
afterAll(async () => {
  for (const home of homes) await home.cleanup();
  rmSync(work, { recursive: true, force: true });
});

/** A fresh home, and `roost` run in it with no daemon (none is started by the actor commands). */
function newHome(): { home: TestHome; roost: (args: string[], stdin?: string) => Promise<CliResult> } {
  const home = new TestHome();
  homes.push(home);
  const env: NodeJS.ProcessEnv = { ...home.env, ROOST_AUTO_DAEMON: '0' };
  delete env.ROOST_HOST;
  delete env.ROOST_DEBUG;
  return { home, roost: (args, stdin) => runRoost(args, { env, cwd: work, ...(stdin !== undefined ? { stdin } : {}) }) };
}

/** The run succeeded: its stdout. */
function out(r: CliResult): string {
  expect(r.stderr, `stderr of a run that should succeed`).not.toMatch(STACK_FRAME);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

/** The run failed with `code`, a message matching `message` on stderr, and no stack trace. */
function failed(r: CliResult, message: RegExp, code = 125): void {
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(STACK_FRAME);
  expect(r.code).toBe(code);
}

describe('roost actor, embedded (no daemon)', () => {
  const { home, roost } = newHome();

  it('create, call, state, send then call (the send handled first), logs, ls, inspect, versions, snapshot', async () => {
    const id = out(await roost(['actor', 'create', 'counter', '--module', COUNTER])).trim();
    expect(id).toMatch(/^[0-9a-f]{12}$/);
    // Not a terminal: the reply as it is, no newline added.
    expect(out(await roost(['actor', 'call', 'counter', 'tick']))).toBe('1');
    expect(out(await roost(['actor', 'call', 'counter', 'tick']))).toBe('2');

    const state = JSON.parse(out(await roost(['actor', 'state', 'counter', '--json']))) as ActorState;
    expect(state).toMatchObject({ actor: id, version: 2, entries: [{ key: 'count', value: '2' }] });
    expect(state.root).toMatch(/^[0-9a-f]{64}$/);
    const table = out(await roost(['actor', 'state', 'counter']));
    expect(table).toContain(`version 2  root ${state.root}`);
    expect(table).toMatch(/^count\s+2$/m);

    const sent = await roost(['actor', 'send', 'counter', 'x']);
    expect(out(sent).trim()).toMatch(/^\d+$/);
    expect(sent.stderr).toMatch(/no daemon runs, so the message is handled when a runtime owns the home/);
    expect(out(await roost(['actor', 'call', 'counter', 'tick']))).toBe('4');
    // From stdin, and the outcome as JSON.
    expect(JSON.parse(out(await roost(['actor', 'call', 'counter', '-', '--json'], 'tock')))).toMatchObject({ version: 5, reply: '5' });

    const records = out(await roost(['actor', 'logs', 'counter', '--json']))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as ActorMessageRecord);
    expect(records.map((r) => [r.ok, r.version, r.reply ?? null])).toEqual([
      [true, 1, '1'],
      [true, 2, '2'],
      [true, 3, null],
      [true, 4, '4'],
      [true, 5, '5'],
    ]);
    expect(out(await roost(['actor', 'logs', 'counter', '--after', String(records[3]!.seq)]))).toMatch(/^#\d+ .* ok v5 .* reply 5\n$/);

    const ls = out(await roost(['actor', 'ls']));
    expect(ls).toMatch(/^ID\s+NAME\s+MODULE\s+VERSION\s+MAILBOX\s+HANDLED\s+FAILED/);
    expect(ls).toMatch(new RegExp(`^${id}\\s+counter\\s+[0-9a-f]{12}\\s+5\\s+0\\s+5\\s+0\\s`, 'm'));
    expect(out(await roost(['actor', 'ls', '-q']))).toBe(`${id}\n`);
    expect(JSON.parse(out(await roost(['actor', 'inspect', id.slice(0, 6)])))).toMatchObject({ id, name: 'counter', version: 5, handled: 5 });
    expect(JSON.parse(out(await roost(['actor', 'versions', 'counter', '--json']))).map((v: { version: number }) => v.version)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(out(await roost(['actor', 'snapshot', 'counter']))).toMatch(/^5 {2}[0-9a-f]{64}\n$/);
    expect(out(await roost(['actor', 'versions', 'counter']))).toMatch(/^5\s+[0-9a-f]{64}\s+\d+\s+yes\s/m);

    // In a terminal, a newline ends the reply.
    const tty = await runInTerminal(`${process.execPath} ${ROOST_BIN} actor call counter tick`, { ...home.env, ROOST_AUTO_DAEMON: '0' });
    expect(tty.stdout).toBe('6\r\n');
  });

  it('deploy, modules, create with flags and a fork, rm-module refused while used', async () => {
    const digest = out(await roost(['actor', 'deploy', COUNTER])).trim();
    expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const modules = JSON.parse(out(await roost(['actor', 'modules', '--json']))) as ActorModuleInfo[];
    expect(modules).toMatchObject([{ digest, actors: 1 }]);
    expect(out(await roost(['actor', 'modules']))).toContain(digest);

    const created = JSON.parse(
      out(
        await roost([
          'actor',
          'create',
          'limited',
          '--module',
          digest,
          '--ref',
          'counter',
          '--grant',
          'random',
          '--fetch-allow',
          'example.com:443',
          '--fuel',
          '5000000',
          '--memory',
          '1m',
          '--timeout',
          '2000',
          '--mailbox',
          '10',
          '--keep-versions',
          '3',
          '--json',
        ]),
      ),
    ) as ActorInfo;
    expect(created).toMatchObject({
      name: 'limited',
      module: digest,
      refs: [{ ref: 1 }],
      grants: { random: true, fetch: { default: 'deny', allow: ['example.com:443'] } },
      limits: { fuel: 5_000_000, memoryBytes: 1024 * 1024, timeoutMs: 2000, mailbox: 10 },
      keepVersions: 3,
    });

    // A fork of counter at version 2 goes on from 2.
    out(await roost(['actor', 'create', 'fork', '--from', 'counter@2']));
    expect(out(await roost(['actor', 'call', 'fork', 'tick']))).toBe('3');

    failed(await roost(['actor', 'rm-module', digest]), /used by 3 actors/);
    expect(out(await roost(['actor', 'rm', 'limited', 'fork']))).toBe('limited\nfork\n');
  });

  it("a handler's failure exits 1 with the reason; Roost's errors exit 125 with one line", async () => {
    const probe = join(work, 'probe.wasm');
    writeFileSync(probe, watModule('probe'));
    out(await roost(['actor', 'create', 'probe', '--module', probe]));
    failed(await roost(['actor', 'call', 'probe', 'r']), /^roost: actor \S+: message \d+ failed \(returned\): .*7/m, 1);
    expect(JSON.parse(out(await roost(['actor', 'inspect', 'probe'])))).toMatchObject({ failed: 1, lastError: { reason: 'returned' } });
    expect(out(await roost(['actor', 'logs', 'probe']))).toMatch(/error \(returned\)/);

    failed(await roost(['actor', 'call', 'nobody', 'tick']), /^roost: no actor nobody$/m);
    failed(await roost(['actor', 'state', 'nobody']), /^roost: no actor nobody$/m);
    const bad = join(work, 'bad.wasm');
    writeFileSync(bad, 'not wasm');
    failed(await roost(['actor', 'create', 'bad', '--module', bad]), /^roost: .*bad\.wasm: invalid actor module: not a WASM binary/m);
    failed(await roost(['actor', 'create', 'bad', '--module', join(work, 'missing.wasm')]), /^roost: --module .*missing\.wasm: no such file$/m);
    failed(await roost(['actor', 'create', 'bad']), /give what the actor runs: --module/);
    failed(await roost(['actor', 'create', 'bad', '--module', COUNTER, '--grant', 'fly']), /--grant fly: unknown grant/);
    failed(await roost(['actor', 'create', 'bad', '--module', COUNTER, '--memory', 'lots']), /--memory lots: expected a size/);
    failed(await roost(['actor', 'create', 'counter', '--module', COUNTER]), /an actor named counter exists/);
    expect(
      out(await roost(['actor', 'ls', '-q']))
        .trim()
        .split('\n'),
    ).toHaveLength(2);
  });

  it('logs -f follows new messages until Ctrl-C', async () => {
    const env = { ...home.env, ROOST_AUTO_DAEMON: '0' };
    const p = spawn(process.execPath, [ROOST_BIN, 'actor', 'logs', 'counter', '-f', '-n', '1'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    const ended = new Promise<number | null>((resolve) => p.on('close', resolve));
    for (let i = 0; i < 100 && !stdout.includes('reply 6'); i++) await new Promise((r) => setTimeout(r, 100));
    expect(stdout).toMatch(/^#\d+ .* reply 6\n$/);
    p.kill('SIGINT');
    expect(await ended).toBe(0);
  });

  it('rm removes the actor', async () => {
    expect(out(await roost(['actor', 'rm', 'counter', 'probe']))).toBe('counter\nprobe\n');
    expect(out(await roost(['actor', 'ls', '-q']))).toBe('');
  });
});

/** True when this checkout's @roost/client talks to the daemon's actors (the REST face). */
function clientHasActors(): boolean {
  const client = new RoostClient({ host: 'http://127.0.0.1:9', token: 'x' });
  try {
    return typeof (client as { actors?: { call?: unknown } }).actors?.call === 'function';
  } finally {
    void client.close();
  }
}

describe.skipIf(!clientHasActors())('roost actor, through a daemon', () => {
  const { home, roost } = newHome();
  let daemon: ServeHandle | undefined;
  afterAll(async () => {
    await daemon?.close();
  });

  it('create, call, send (handled by the daemon), state, logs, rm', async () => {
    daemon = await serve({ home: home.root });
    const id = out(await roost(['actor', 'create', 'counter', '--module', COUNTER])).trim();
    expect(id).toMatch(/^[0-9a-f]{12}$/);
    expect(out(await roost(['actor', 'call', 'counter', 'tick']))).toBe('1');
    const sent = await roost(['actor', 'send', 'counter', 'x']);
    expect(out(sent).trim()).toMatch(/^\d+$/);
    expect(sent.stderr).toBe('');
    expect(out(await roost(['actor', 'call', 'counter', 'tick']))).toBe('3');
    expect(JSON.parse(out(await roost(['actor', 'state', 'counter', '--json'])))).toMatchObject({ version: 3, entries: [{ key: 'count', value: '3' }] });
    expect(
      out(await roost(['actor', 'logs', 'counter', '--json']))
        .trim()
        .split('\n'),
    ).toHaveLength(3);
    failed(await roost(['actor', 'call', 'nobody', 'tick']), /no actor nobody/);
    expect(out(await roost(['actor', 'rm', 'counter']))).toBe('counter\n');
  });
});
