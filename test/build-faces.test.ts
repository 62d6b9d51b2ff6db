import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as tar from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildCacheEntry, ImageInfoBody, TemplateInfo } from '@roost/api';
import { ImageStore } from '@roost/core';
import { serve, type ServeHandle } from '@roost/server';
import { buildBusyboxImage } from '@roost/testkit';
import { ApiClient } from './api-client.js';
import { eventually, ROOST_BIN, runRoost, TestHome, type CliResult } from './helpers.js';

/*
 * The faces of the image builder with real VMs, few of them: `roost build`
 * through a real daemon (plain progress, the cache on a second run, build
 * arguments, the image run), a failing RUN, `roost images ls --all`,
 * `roost template create --build`, and POST /v1/images/build itself: a
 * context sent as a tar, and hostile tars refused without a byte written
 * outside the daemon's temp directory.
 */

const home = new TestHome();
const BASE = 'roost-test/busybox:1';
let daemon: ServeHandle;
let host: string;
let api: ApiClient;
let work: string;

function roost(args: string[]): Promise<CliResult> {
  return runRoost(['--host', host, ...args], { env: home.env });
}

async function context(name: string, files: Record<string, string>): Promise<string> {
  const dir = join(work, name);
  for (const [file, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, file)), { recursive: true });
    await writeFile(join(dir, file), text);
  }
  return dir;
}

/** A tar of entries as a hostile client would send it. */
async function tarOf(entries: { name: string; body?: string; link?: string }[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.link !== undefined) pack.entry({ name: e.name, type: 'symlink', linkname: e.link });
    else pack.entry({ name: e.name, mode: 0o644 }, e.body ?? '');
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'roost-build-faces-'));
  const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
  await new ImageStore({ home: home.root }).import(busybox.dir, { tag: BASE });
  daemon = await serve({ home: home.root });
  host = `unix://${daemon.socketPath}`;
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
});

afterAll(async () => {
  await daemon?.close();
  await home.cleanup();
  await rm(work, { recursive: true, force: true });
});

describe('roost build through the daemon', () => {
  let app: string;

  it('builds with plain progress, answers from the cache the second time, and the image runs', async () => {
    app = await context('app', {
      // FLAVOR: the busybox image's Env has GREETING already (an ENV wins over an ARG).
      Dockerfile: `FROM ${BASE}\nARG FLAVOR=plain\nWORKDIR /app\nCOPY greeting.txt ./\nRUN echo "$FLAVOR $(cat greeting.txt)" > /app/out.txt && echo built-it\nCMD ["cat", "/app/out.txt"]\n`,
      'greeting.txt': 'hello',
      '.dockerignore': 'secret.txt\n',
      'secret.txt': 'not sent into the image',
    });
    const first = await roost(['build', '-t', 'faces:1', '--progress', 'plain', '--build-arg', 'FLAVOR=spicy', app]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toMatch(/^#3 \[stage-0 3\/5\] COPY greeting\.txt \.\/\n#3 DONE \d+\.\ds$/m);
    expect(first.stderr).toMatch(/^#4 \[stage-0 4\/5\] RUN echo .*\n#4 built-it\n#4 DONE \d+\.\ds$/m);
    expect(first.stdout).toMatch(/^Built sha256:[0-9a-f]{64} in \d+\.\ds \(2 steps ran, 0 cached\)\nTagged faces:1\n$/);

    const second = await roost(['build', '-t', 'faces:1', '--progress', 'plain', '--build-arg', 'FLAVOR=spicy', app]);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toMatch(/^#3 CACHED$/m);
    expect(second.stderr).toMatch(/^#4 CACHED$/m);
    expect(second.stderr).not.toMatch(/^#4 built-it$/m);
    expect(second.stdout).toMatch(/\(0 steps ran, 2 cached\)/);

    const run = await roost(['run', 'faces:1']);
    expect(run).toMatchObject({ code: 0, stdout: 'spicy hello\n' });
    const ignored = await roost(['run', 'faces:1', '--', 'ls', '/app']);
    expect(ignored.stdout.split('\n').filter(Boolean).sort()).toEqual(['greeting.txt', 'out.txt']);

    // Another build argument is another step: it runs again.
    const other = await roost(['build', '-q', '--build-arg', 'FLAVOR=mild', app]);
    expect(other.code, other.stderr).toBe(0);
    expect(other.stdout).toMatch(/^sha256:[0-9a-f]{64}\n$/);
    expect(other.stderr).toBe('');
    expect((await roost(['run', other.stdout.trim(), '--', 'cat', '/app/out.txt'])).stdout).toBe('mild hello\n');
  });

  it('lists the build cache with images ls --all', async () => {
    const ls = await roost(['images', 'ls', '--all']);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stdout).toMatch(/^BUILD CACHE\s+STEP\s+LAYER\s+SIZE\s+LAST USED$/m);
    expect(ls.stdout).toMatch(/^[0-9a-f]{12}\s+COPY greeting\.txt \.\/\s+[0-9a-f]{12}\s+\d/m);
    expect(ls.stdout).toMatch(/^[0-9a-f]{12}\s+RUN echo "\$FLAVOR/m);
    const json = JSON.parse((await roost(['images', 'ls', '--all', '--json'])).stdout) as { images: ImageInfoBody[]; buildCache: BuildCacheEntry[] };
    expect(json.images.some((i) => i.tags.includes('docker.io/library/faces:1'))).toBe(true);
    // Two RUNs (spicy, mild), and the COPY before them (once per ARG value: the engine keys steps after an ARG by its value).
    const kinds = json.buildCache.map((e) => e.step.split(' ')[0]);
    expect(kinds.filter((k) => k === 'RUN')).toHaveLength(2);
    expect(kinds.filter((k) => k === 'COPY').length).toBeGreaterThanOrEqual(1);
    expect(json.buildCache.every((e) => /^sha256:[0-9a-f]{64}$/.test(e.key) && (e.layer === null) === (e.size === null))).toBe(true);
    expect((await api.get<{ entries: BuildCacheEntry[] }>('/v1/build-cache')).body.entries).toEqual(json.buildCache);
  });

  it('fails a build whose RUN exits non-zero with status 1, the step and the end of its output', async () => {
    const bad = await context('bad', { Dockerfile: `FROM ${BASE}\nRUN echo first words; echo last words >&2; exit 3\n` });
    const r = await roost(['build', '-t', 'faces:bad', '--progress', 'plain', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^roost: build failed: Dockerfile:2: RUN echo first words; echo last words >&2; exit 3: exited with status 3$/m);
    expect(r.stderr).toMatch(/^ {2}\| last words$/m);
    expect(r.stdout).toBe('');
    // No half image is tagged.
    expect((await roost(['images', 'ls'])).stdout).not.toMatch(/faces\s+bad/);
  });

  it('cancels a build on Ctrl-C: exit 130, its sandbox gone', async () => {
    const slow = await context('slow', { Dockerfile: `FROM ${BASE}\nRUN echo started; sleep 60\n` });
    const p = spawn(process.execPath, [ROOST_BIN, '--host', host, 'build', '--progress', 'plain', slow], { env: home.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((r) => p.on('close', r));
    await eventually(() => stderr.includes('#1 started'), 30_000, 'the RUN step started');
    p.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(stderr).toMatch(/roost: build cancelled\n$/);
    await eventually(async () => JSON.parse((await roost(['ps', '-a', '--json'])).stdout).length === 0, 15_000, 'no sandbox left');
  });

  it('makes a template from a build (cached: no VM), its image tagged roost-template/NAME:latest', async () => {
    const r = await roost(['template', 'create', 'faces-tpl', '--build', app, '--build-arg', 'FLAVOR=spicy', '--progress', 'quiet']);
    expect(r.code, r.stderr).toBe(0);
    const t = JSON.parse((await roost(['template', 'inspect', 'faces-tpl'])).stdout) as TemplateInfo;
    expect(t.image).toBe('roost-template/faces-tpl:latest');
    const again = await roost(['template', 'create', 'faces-tpl', '--build', app]);
    expect(again.code).toBe(125);
    expect(again.stderr).toMatch(/exists already/);
  });
});

describe('POST /v1/images/build', () => {
  it('builds a context sent as a tar, the answer NDJSON BuildEvents as documented', async () => {
    const ctx = await context('rest', { Dockerfile: `FROM ${BASE}\nCOPY a.txt /a.txt\nCMD ["cat", "/a.txt"]\n`, 'a.txt': 'from rest' });
    const body = execFileSync('tar', ['-C', ctx, '-cf', '-', '.']);
    const res = await api.stream('POST', `/v1/images/build?options=${encodeURIComponent(JSON.stringify({ tags: ['faces:rest'] }))}`, {
      raw: body,
      headers: { 'content-type': 'application/x-tar' },
    });
    expect(res.status).toBe(200);
    const lines: { type: string }[] = [];
    for await (const l of res.lines()) lines.push(l as { type: string });
    expect(lines.at(-1)).toMatchObject({ type: 'done', ran: 1, image: { tags: ['docker.io/library/faces:rest'] } });
    expect(readdirSync(join(home.root, 'tmp')).filter((n) => n.startsWith('context.'))).toEqual([]);
  });

  it('refuses hostile tars (.., an absolute name, a symlink then a file through it) and writes nothing outside its temp directory', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    const dockerfile = { name: 'Dockerfile', body: `FROM ${BASE}\n` };
    const cases: [string, { name: string; body?: string; link?: string }[], RegExp][] = [
      ['dot-dot', [dockerfile, { name: '../../escaped-dotdot', body: 'pwned' }], /climbs out with \.\./],
      ['absolute', [dockerfile, { name: join(outside, 'escaped-absolute'), body: 'pwned' }], /has an absolute path/],
      ['symlink', [dockerfile, { name: 'link', link: outside }, { name: 'link/escaped-symlink', body: 'pwned' }], /below the symlink link/],
      ['symlink to the home', [dockerfile, { name: 'up', link: '../..' }, { name: 'up/escaped-up', body: 'pwned' }], /below the symlink up/],
    ];
    for (const [what, entries, why] of cases) {
      const res = await api.request('POST', '/v1/images/build', { raw: await tarOf(entries), headers: { 'content-type': 'application/x-tar' } });
      expect(res.status, what).toBe(400);
      expect(res.body, what).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringMatching(why) as unknown } });
    }
    expect(readdirSync(outside)).toEqual([]);
    // `../..` from the temp directory (home/tmp/context.*) is the home.
    expect(existsSync(join(home.root, 'escaped-dotdot'))).toBe(false);
    expect(existsSync(join(home.root, 'escaped-up'))).toBe(false);
    expect(readdirSync(join(home.root, 'tmp'))).toEqual([]);
  });
});
