import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { serve } from '@roost/server';
import { runRoost, TestHome, type CliResult } from './helpers.js';

const home = new TestHome();
const scratch = mkdtempSync(join(tmpdir(), 'roost-cli-volumes-'));
afterAll(async () => {
  await home.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

function roost(args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return runRoost(args, { env: options.env ?? home.env, cwd: options.cwd ?? scratch });
}

describe('roost volume and run -v', () => {
  it('creates, lists and inspects volumes; run -v mounts host directories (relative ones too), named volumes and read-only ones', async () => {
    const rw = join(scratch, 'rw');
    const ro = join(scratch, 'ro');
    mkdirSync(rw);
    mkdirSync(ro);
    writeFileSync(join(ro, 'in.txt'), 'from host\n');

    expect(await roost(['volume', 'create', 'cli-vol', '-l', 'team=a'])).toMatchObject({ code: 0, stdout: 'cli-vol\n' });
    expect((await roost(['volume', 'create', 'cli-vol'])).stderr).toMatch(/cli-vol already exists/);
    const ls = JSON.parse((await roost(['volume', 'ls', '--json'])).stdout) as { name: string; labels: Record<string, string> }[];
    expect(ls).toMatchObject([{ name: 'cli-vol', labels: { team: 'a' } }]);
    expect((await roost(['volume', 'ls', '-q'])).stdout).toBe('cli-vol\n');
    expect((await roost(['volumes'])).stdout).toMatch(/^NAME\s+CREATED\s+USED BY\s+PATH\ncli-vol\s/);

    const r = await roost([
      'run',
      '--network',
      'none',
      '-v',
      './rw:/h',
      '-v',
      'cli-vol:/v',
      '-v',
      `${ro}:/r:ro`,
      '--',
      'sh',
      '-c',
      'echo guest > /h/out.txt; cat /r/in.txt; echo kept > /v/k; echo x > /r/no',
    ]);
    expect(r.stdout).toBe('from host\n');
    expect(r.stderr).toMatch(/Read-only file system/);
    expect(r.code).toBe(1);
    expect(readFileSync(join(rw, 'out.txt'), 'utf8')).toBe('guest\n');

    const inspect = JSON.parse((await roost(['volume', 'inspect', 'cli-vol', '--json'])).stdout) as { path: string; usedBy: string[] };
    expect(inspect.usedBy).toEqual([]);
    expect(readFileSync(join(inspect.path, 'k'), 'utf8')).toBe('kept\n');
    expect((await roost(['volume', 'inspect', 'cli-vol'])).stdout).toMatch(/Name:\s+cli-vol\nPath:\s+\S+\/volumes\/cli-vol\/data\n/);
  });

  it('refuses to remove a volume a sandbox mounts, naming it; removes it after', async () => {
    const d = await roost(['run', '-d', '-v', 'busy:/b']);
    expect(d.code).toBe(0);
    const id = d.stdout.trim();
    expect((await roost(['inspect', id])).stdout).toMatch(/Volumes:\s+busy:\/b\n/);
    const refused = await roost(['volume', 'rm', 'busy']);
    expect(refused.code).toBe(125);
    expect(refused.stderr).toContain(`volume busy is mounted by sandbox ${id}`);
    expect((await roost(['rm', '-f', id])).code).toBe(0);
    expect(await roost(['volume', 'rm', 'busy', 'cli-vol'])).toMatchObject({ code: 0, stdout: 'busy\ncli-vol\n' });
    expect((await roost(['volume', 'ls', '-q'])).stdout).toBe('');
  });

  it('rejects bad -v flags with a clear message', async () => {
    const cases: [string, RegExp][] = [
      ['novolume', /expected SRC:DST/],
      ['a:/b:rx', /the mode is "ro" or "rw"/],
      ['/no/such/dir:/x', /the host directory \/no\/such\/dir does not exist/],
      ['vol:relative', /must be absolute/],
    ];
    for (const [flag, message] of cases) {
      const r = await roost(['run', '-v', flag, '--', 'true']);
      expect(r.code, flag).toBe(125);
      expect(r.stderr, flag).toMatch(message);
    }
  });
});

describe('roost volume against a daemon', () => {
  it('goes to the daemon of the home (found on its socket, or given with --host)', async () => {
    const daemonHome = new TestHome();
    const daemon = await serve({ home: daemonHome.root });
    try {
      const env = daemonHome.env;
      expect(await roost(['volume', 'create', 'remote-1'], { env })).toMatchObject({ code: 0, stdout: 'remote-1\n' });
      const r = await roost(['--host', `unix://${daemon.socketPath}`, 'run', '-v', 'remote-1:/r', '--', 'sh', '-c', 'echo remote > /r/f'], { env });
      expect(r).toMatchObject({ code: 0 });
      const info = JSON.parse((await roost(['volume', 'inspect', 'remote-1', '--json'], { env })).stdout) as { path: string; usedBy: string[] };
      expect(info.usedBy).toEqual([]);
      expect(readFileSync(join(info.path, 'f'), 'utf8')).toBe('remote\n');
      expect(await roost(['--host', `unix://${daemon.socketPath}`, 'volume', 'rm', 'remote-1'], { env })).toMatchObject({ code: 0, stdout: 'remote-1\n' });
      expect((await roost(['volume', 'ls', '-q'], { env })).stdout).toBe('');
    } finally {
      await daemon.close();
      await daemonHome.cleanup();
    }
  });
});
