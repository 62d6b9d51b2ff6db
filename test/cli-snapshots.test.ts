import { afterAll, describe, expect, it } from 'vitest';
import { serve } from '@roost/server';
import { runRoost, TestHome, type CliResult } from './helpers.js';

/*
 * `roost pause/resume/snapshot/fork`, `roost snapshots` and `roost template`,
 * each a separate process with its own embedded runtime (the sandboxes are
 * detached and outlive them), and `roost snapshots ls` against a daemon.
 */

const home = new TestHome();
afterAll(() => home.cleanup());

function roost(args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return runRoost(args, { env: options.env ?? home.env });
}

/** Runs the CLI; it must succeed. */
async function ok(args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await roost(args, options);
  expect(r, `roost ${args.join(' ')}`).toMatchObject({ code: 0 });
  return r.stdout;
}

interface SnapshotJson {
  id: string;
  name: string;
  kind: string;
  dependents: { sandboxes: string[]; snapshots: string[] };
}

describe('roost pause, resume, snapshot, fork and snapshots', () => {
  it('pauses and resumes a sandbox; snapshots it, restores it with run --snapshot, forks it, and refuses to remove a snapshot in use', async () => {
    const id = (await ok(['run', '-d'])).trim();
    expect(id).toMatch(/^[0-9a-f]{12}$/);
    await ok(['exec', id, '--', 'sh', '-c', 'echo before > /root/marker']);

    expect(await ok(['pause', id])).toBe(`${id}\n`);
    expect(JSON.parse(await ok(['ps', '--json']))).toMatchObject([{ id, status: 'paused' }]);
    expect(await ok(['ps', '-f', 'status=paused', '-q'])).toBe(`${id}\n`);
    expect(await ok(['pause', id])).toBe(`${id}\n`);
    expect(await ok(['resume', id])).toBe(`${id}\n`);
    expect(await ok(['exec', id, '--', 'cat', '/root/marker'])).toBe('before\n');

    const taken = await ok(['snapshot', id, 'cli-snap']);
    expect(taken).toMatch(/^cli-snap {2}[0-9a-f]{12} {2}\d+(\.\d+)?[kMG]?B\n$/);
    const snapId = taken.split(/\s+/)[1]!;
    const dup = await roost(['snapshot', id, 'cli-snap']);
    expect(dup.code).toBe(125);
    expect(dup.stderr).toMatch(/cli-snap/);
    await ok(['exec', id, '--', 'sh', '-c', 'echo after > /root/marker']);

    const table = await ok(['snapshots', 'ls']);
    expect(table).toMatch(/^NAME\s+ID\s+KIND\s+SOURCE\s+SIZE\s+CREATED\s+DEPENDENTS\n/);
    expect(table).toMatch(new RegExp(`\\ncli-snap\\s+${snapId}\\s+user\\s+${id}\\s+\\S+\\s+\\d+s ago\\s+-\\n`));
    const listed = JSON.parse(await ok(['snapshots', 'ls', '--json'])) as SnapshotJson[];
    expect(listed).toMatchObject([{ id: snapId, name: 'cli-snap', kind: 'user' }]);
    expect(JSON.parse(await ok(['snapshots', 'inspect', snapId]))).toMatchObject({ id: snapId, name: 'cli-snap', sourceSandbox: id });

    // A restore runs the command on the disk as it was, and is removed after.
    const run = await roost(['run', '--snapshot', 'cli-snap', '--', 'cat', '/root/marker']);
    expect(run).toMatchObject({ code: 0, stdout: 'before\n' });
    const imageToo = await roost(['run', '--snapshot', 'cli-snap', 'alpine', '--', 'true']);
    expect(imageToo.code).toBe(125);
    expect(imageToo.stderr).toMatch(/--snapshot brings its own image/);

    const restored = (await ok(['run', '-d', '--snapshot', 'cli-snap'])).trim();
    expect((await ok(['inspect', restored])).includes(`Snapshot:`)).toBe(true);
    expect(JSON.parse(await ok(['inspect', '--json', restored]))).toMatchObject({ status: 'running', snapshot: snapId });
    const refused = await roost(['snapshots', 'rm', 'cli-snap']);
    expect(refused.code).toBe(125);
    expect(refused.stderr).toContain(restored);
    expect(await ok(['snapshots', 'ls'])).toMatch(/\ncli-snap\s.*\s1 sandbox\n/);
    await ok(['rm', '-f', restored]);
    expect(await ok(['snapshots', 'rm', 'cli-snap'])).toBe('cli-snap\n');

    const forked = (await ok(['fork', id, '-n', '2'])).trim().split('\n');
    expect(forked).toHaveLength(2);
    for (const f of forked) {
      expect(f).toMatch(/^[0-9a-f]{12}$/);
      expect(await ok(['exec', f, '--', 'cat', '/root/marker'])).toBe('after\n');
    }
    const ps = JSON.parse(await ok(['ps', '--json'])) as { id: string; status: string }[];
    expect(
      ps
        .filter((s) => s.status === 'running')
        .map((s) => s.id)
        .sort(),
    ).toEqual([id, ...forked].sort());
    const base = (JSON.parse(await ok(['snapshots', 'ls', '--json'])) as SnapshotJson[]).find((s) => s.kind === 'fork')!;
    expect([...base.dependents.sandboxes].sort()).toEqual([...forked].sort());
    expect((await roost(['snapshots', 'rm', base.id])).code).toBe(125);
    await ok(['rm', '-f', id, ...forked]);
  });

  it('defines, lists, warms, uses and removes a template', async () => {
    expect(await ok(['template', 'create', 'cli-tpl', '--memory', '128', '--setup', 'echo ready > /root/t'])).toBe('cli-tpl\n');
    expect(await ok(['template', 'ls'])).toMatch(
      /^NAME\s+IMAGE\s+CPUS\s+MEMORY\s+SETUP\s+SNAPSHOT\s+CREATED\ncli-tpl\s+-\s+1\s+128MiB\s+echo ready > \/root\/t\s+-\s/,
    );
    const warm = await ok(['template', 'warm', 'cli-tpl']);
    expect(warm).toMatch(/^cli-tpl {2}[0-9a-f]{12}\n$/);
    const r = await roost(['run', '--template', 'cli-tpl', '--', 'sh', '-c', 'cat /root/t; grep MemTotal /proc/meminfo']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ready\nMemTotal:\s+1\d{5} kB\n$/);
    expect(await ok(['template', 'rm', 'cli-tpl'])).toBe('cli-tpl\n');
    expect(await ok(['template', 'ls', '-q'])).toBe('');
    const gone = await roost(['run', '--template', 'cli-tpl', '--', 'true']);
    expect(gone.code).toBe(125);
  });
});

describe('roost snapshots against a daemon', () => {
  it("lists the daemon's snapshots and forks through it", async () => {
    const daemonHome = new TestHome();
    const daemon = await serve({ home: daemonHome.root });
    try {
      const env = daemonHome.env;
      const id = (await ok(['run', '-d'], { env })).trim();
      expect(await ok(['pause', id], { env })).toBe(`${id}\n`);
      expect(await ok(['resume', id], { env })).toBe(`${id}\n`);
      expect(await ok(['--host', `unix://${daemon.socketPath}`, 'snapshot', id, 'remote-snap'], { env })).toMatch(/^remote-snap {2}/);
      expect(await ok(['snapshots', 'ls', '-q'], { env })).toBe('remote-snap\n');
      const forked = (await ok(['fork', id], { env })).trim().split('\n');
      expect(forked).toHaveLength(1);
      await ok(['rm', '-f', id, ...forked], { env });
      expect(await ok(['snapshots', 'rm', 'remote-snap'], { env })).toBe('remote-snap\n');
    } finally {
      await daemon.close();
      await daemonHome.cleanup();
    }
  });
});
