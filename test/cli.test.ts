import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, eventually, ROOST_BIN as roostBin, runInTerminal, runRoost, TestHome, type CliResult } from './helpers.js';

const home = new TestHome();
afterAll(() => home.cleanup());

function roost(args: string[], options: { stdin?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return runRoost(args, { env: options.env ?? home.env, ...(options.stdin !== undefined ? { stdin: options.stdin } : {}) });
}

describe('roost run', () => {
  it('runs a command in a fresh sandbox and passes its exit code and output through', async () => {
    const r = await roost(['run', '--', 'sh', '-c', 'uname -s; echo oops >&2; exit 42']);
    expect(r).toMatchObject({ code: 42, stdout: 'Linux\n', stderr: 'oops\n' });
    // Not detached: nothing is left behind.
    const ps = await roost(['ps', '-a', '--json']);
    expect(JSON.parse(ps.stdout)).toEqual([]);
  });

  it('passes env, workdir, user, stdin (-i) and resources', async () => {
    const r = await roost(
      [
        'run',
        '-i',
        '--cpus',
        '2',
        '--memory',
        '128',
        '-e',
        'A=1',
        '-e',
        'B=two words',
        '-w',
        '/tmp',
        '-u',
        'nobody',
        '--',
        'sh',
        '-c',
        'echo "$A|$B|$(pwd)|$(id -u)|$(nproc)"; cat',
      ],
      { stdin: 'from stdin\n' },
    );
    expect(r).toMatchObject({ code: 0, stdout: '1|two words|/tmp|65534|2\nfrom stdin\n' });
  });

  it('gives an interactive terminal with -t', async () => {
    // script(1) gives the CLI a real terminal on its stdin and stdout.
    const cmd = `node ${roostBin} run -t -- sh -c 'tty; exit 3'`;
    const r = await runInTerminal(cmd, home.env);
    expect(r.stdout).toMatch(/\/dev\/pts\/\d+/);
    expect(r.code).toBe(3);
  });

  it('kills a command at --timeout and exits 124', async () => {
    const r = await roost(['run', '--timeout', '300', '--', 'sh', '-c', 'echo started; sleep 30']);
    expect(r.code).toBe(124);
    expect(r.stdout).toBe('started\n');
    expect(r.stderr).toMatch(/timed out/);
  });

  it('reports a missing command with exit 127', async () => {
    const r = await roost(['run', '--', 'definitely-not-here']);
    expect(r.code).toBe(127);
    expect(r.stderr).toMatch(/definitely-not-here/);
  });

  it('rejects bad flags with a clear message', async () => {
    const r = await roost(['run', '--cpus', 'lots', '--', 'true']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--cpus takes a whole number/);
    const m = await roost(['run', '--memory', '1', '--', 'true']);
    expect(m.code).toBe(125);
    expect(m.stderr).toMatch(/memoryMiB/);
  });
});

describe('detached sandboxes through the CLI', () => {
  it('run -d, exec, ps, logs, stop, rm', async () => {
    const started = await roost(['run', '-d', '--', 'sh', '-c', 'echo main-command-output; sleep 600']);
    expect(started.code).toBe(0);
    const id = started.stdout.trim();
    expect(id).toMatch(/^[0-9a-f]{12}$/);

    const ps = await roost(['ps', '--json']);
    const info = (JSON.parse(ps.stdout) as { id: string; status: string; pid: number }[]).find((s) => s.id === id)!;
    expect(info.status).toBe('running');
    expect(alive(info.pid)).toBe(true);
    expect((await roost(['ps'])).stdout).toMatch(new RegExp(`^${id}\\s+-\\s+running`, 'm'));

    const ex = await roost(['exec', id.slice(0, 5), '--', 'sh', '-c', 'ps -o args | grep -c "^sleep 600"; exit 4']);
    expect(ex).toMatchObject({ code: 4, stdout: '1\n' });

    await eventually(async () => (await roost(['logs', id])).stdout.includes('main-command-output'), 10_000, 'main command output in logs');

    const stop = await roost(['stop', id]);
    expect(stop).toMatchObject({ code: 0, stdout: `${id}\n` });
    expect(alive(info.pid)).toBe(false);
    expect((await roost(['ps'])).stdout).not.toContain(id);
    expect((await roost(['ps', '-a'])).stdout).toMatch(new RegExp(`^${id}\\s+-\\s+stopped`, 'm'));

    expect(await roost(['rm', id])).toMatchObject({ code: 0 });
    expect((await roost(['ps', '-a'])).stdout).not.toContain(id);
  });

  it('rm -f kills a running sandbox; errors name what is wrong', async () => {
    const id = (await roost(['run', '-d'])).stdout.trim();
    const rm = await roost(['rm', id]);
    expect(rm.code).toBe(125);
    expect(rm.stderr).toMatch(/running.*force/);
    expect(await roost(['rm', '-f', id])).toMatchObject({ code: 0 });
    const gone = await roost(['exec', id, '--', 'true']);
    expect(gone.code).toBe(125);
    expect(gone.stderr).toMatch(/no sandbox/);
  });
});

describe('roost events (embedded)', () => {
  it('follows until it is interrupted, past its poll interval, with nothing else keeping the process alive', async () => {
    // Events of the sandboxes above are in the log: --since 0 replays them first.
    const p = spawn(process.execPath, [roostBin, 'events', '--since', '0', '--json'], { env: home.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    const exited = new Promise<number | null>((resolve) => p.once('exit', (code) => resolve(code)));
    try {
      await eventually(() => stdout.includes('"sandbox.created"'), 10_000, 'the replayed events');
      // Three poll intervals (1 s each) with nothing to print: a follower whose timers did not hold the process ended here.
      await new Promise((r) => setTimeout(r, 3_000));
      expect(alive(p.pid!)).toBe(true);
      p.kill('SIGINT');
      expect(await exited).toBe(0);
    } finally {
      if (p.exitCode === null) p.kill('SIGKILL');
    }
  });
});
