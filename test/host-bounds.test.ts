import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '@roost/core';
import { serve, type ServeHandle } from '@roost/server';
import { TestHome } from './helpers.js';

/*
 * Issue 16, "bounded host cost" and "privacy", with a real VM: a sandbox
 * with a 64 MiB disk makes a 1 GiB sparse file and files of real data; the
 * files API and `roost cp` (embedded and through a daemon) bring to the host
 * no more than the limit (default: the disk's size), keep holes as holes
 * and leave no partial file. The home, made under umask 022, is private.
 */

const roostBin = fileURLToPath(new URL('../packages/cli/bin/roost.js', import.meta.url));
const MiB = 2 ** 20;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function roost(env: NodeJS.ProcessEnv, args: string[], cwd: string): Promise<Result> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [roostBin, ...args], { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Entries below `dir` (not through symlinks: the cache is the real home's, shared) that others could reach. */
function exposed(dir: string): string[] {
  const out: string[] = [];
  const mode = lstatSync(dir).mode & 0o777;
  if (mode !== 0o700) out.push(`${dir} ${mode.toString(8)}`);
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isSymbolicLink()) continue;
    if (e.isDirectory()) out.push(...exposed(p));
    else {
      const m = lstatSync(p).mode & 0o777;
      // Regular files exactly 0600; sockets (QEMU's) have no bits for group or others.
      if (e.isFile() ? m !== 0o600 : (m & 0o077) !== 0) out.push(`${p} ${m.toString(8)}`);
    }
  }
  return out;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('a guest cannot make the host spend more than it has; the home is private', () => {
  const home = new TestHome();
  let umask: number;
  let work: string;
  let sb: Sandbox;
  let id: string;
  let daemon: ServeHandle | undefined;

  const sh = async (cmd: string): Promise<string> => {
    const r = await sb.commands.run(cmd);
    if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
    return r.stdout;
  };
  const cp = (...args: string[]) => roost(home.env, ['cp', ...args], work);

  beforeAll(async () => {
    // As most shells have it; the home as an older Roost (or mkdir) left it.
    umask = process.umask(0o022);
    chmodSync(home.root, 0o755);
    work = mkdtempSync(join(tmpdir(), 'roost-bounds-'));
    sb = await home.create({ diskSizeMiB: 64, detached: true });
    id = sb.id;
    // 1 GiB that costs the guest nothing; 48 MiB with data at both ends; real data.
    await sh('truncate -s 1G /root/sparse && printf start | dd of=/root/sparse conv=notrunc 2>/dev/null');
    await sh(
      'truncate -s 48M /root/holes && printf head | dd of=/root/holes conv=notrunc 2>/dev/null && printf tail | dd of=/root/holes bs=1 seek=41943040 conv=notrunc 2>/dev/null',
    );
    await sh('mkdir /root/dir && head -c 1048576 /dev/urandom > /root/dir/a && head -c 1048576 /dev/urandom > /root/dir/b');
  });
  afterAll(async () => {
    await daemon?.close();
    await home.cleanup();
    process.umask(umask);
    rmSync(work, { recursive: true, force: true });
  });

  it('the files API stops at the disk size by default, or at maxBytes, with RESOURCE_EXHAUSTED', async () => {
    const t = performance.now();
    const tooMuch = { code: 'RESOURCE_EXHAUSTED', details: { maxBytes: 64 * MiB, option: 'maxBytes', path: '/root/sparse' } };
    let got = 0;
    await expect(
      (async () => {
        for await (const c of await sb.files.read('/root/sparse', { format: 'stream' })) got += c.length;
      })(),
    ).rejects.toMatchObject(tooMuch);
    console.log(`a 1 GiB sparse file stopped after ${got} bytes in ${(performance.now() - t).toFixed(0)} ms`);
    expect(got).toBeLessThanOrEqual(64 * MiB);
    await expect(sb.files.read('/root/sparse', { format: 'bytes' })).rejects.toMatchObject(tooMuch);
    await expect(
      (async () => {
        for await (const c of await sb.files.readArchive('/root/dir', { maxBytes: MiB })) expect(c.length).toBeGreaterThan(0);
      })(),
    ).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED', details: { maxBytes: MiB } });
    // Under the limit, as before.
    expect((await sb.files.read('/root/dir/a', { format: 'bytes' })).length).toBe(MiB);
  });

  it('is private: every file Roost made is 0600 and every directory 0700 (the shared cache aside)', async () => {
    expect(exposed(home.root)).toEqual([]);
    expect(lstatSync(join(home.root, 'cache')).isSymbolicLink()).toBe(true);
    // The CLI from here on owns the home (the sandbox is detached).
    await home.release();
  });

  it('roost cp keeps holes as holes', async () => {
    const r = await cp(`${id}:/root/holes`, 'holes');
    expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
    const st = statSync(join(work, 'holes'));
    expect(st.size).toBe(48 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB);
    const guest = await roost(home.env, ['exec', id, '--', 'sha256sum', '/root/holes'], work);
    expect(guest.stdout.split(' ')[0]).toBe(sha256(readFileSync(join(work, 'holes'))));
  });

  it('roost cp refuses a 1 GiB sparse file from a 64 MiB disk by default, naming --max-bytes, and writes nothing', async () => {
    const r = await cp(`${id}:/root/sparse`, 'sparse');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/1 GiB .* more than 64 MiB .*--max-bytes/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(existsSync(join(work, 'sparse'))).toBe(false);
  });

  it('roost cp stops real data past --max-bytes and leaves no partial file', async () => {
    // A file known to be too large is refused before anything is sent.
    let r = await cp('--max-bytes', '512K', `${id}:/root/dir/a`, 'a');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/more than 512 KiB .*--max-bytes/);
    expect(existsSync(join(work, 'a'))).toBe(false);
    // A directory is stopped as it streams: the file cut short is removed, the whole one before it stays.
    r = await cp('--max-bytes', '1536K', `${id}:/root/dir`, 'dir');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/more than 1.5 MiB .*--max-bytes/);
    const left = existsSync(join(work, 'dir')) ? readdirSync(join(work, 'dir')) : [];
    expect(left.length).toBeLessThanOrEqual(1);
    for (const f of left) expect(statSync(join(work, 'dir', f)).size).toBe(MiB);
    rmSync(join(work, 'dir'), { recursive: true, force: true });
    // With room, the same copy is whole.
    r = await cp('--max-bytes', '4M', `${id}:/root/dir`, 'dir');
    expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(readdirSync(join(work, 'dir')).sort()).toEqual(['a', 'b']);
  });

  it('through a daemon, the limit holds on the REST face too', async () => {
    daemon = await serve({ home: home.root });
    const r = await cp('--max-bytes', '1536K', `${id}:/root/dir`, 'dir2');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/more than 1.5 MiB .*--max-bytes/);
    const left = existsSync(join(work, 'dir2')) ? readdirSync(join(work, 'dir2')) : [];
    for (const f of left) expect(statSync(join(work, 'dir2', f)).size).toBe(MiB);
    const ok = await cp(`${id}:/root/holes`, 'holes2');
    expect(ok, ok.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(statSync(join(work, 'holes2')).blocks * 512).toBeLessThan(MiB);
    // The daemon's files are private too (its socket, its token).
    expect(exposed(home.root)).toEqual([]);
  });
});
