import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createGunzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRoostError, type BuildImageOptions, type BuildProgressEvent, type RoostEvent } from '@roost/api';
import type { Runtime } from '@roost/core';
import { ImageStore } from '@roost/core';
import { buildBusyboxImage, startRegistry, tarEntries, type TestRegistry } from '@roost/testkit';
import { expectCode, freePort, qemusOf, TestHome } from './helpers.js';

/*
 * The image builder with real VMs (issue 20): a multi-stage Dockerfile with
 * every supported instruction, the result run and checked; the cache (a
 * second build runs no VM); a deletion in RUN as a whiteout; two --no-cache
 * builds with SOURCE_DATE_EPOCH giving one digest; and the error cases (a
 * failing RUN, paths out of the context, a bad Dockerfile, a cancelled
 * build). The base is the testkit's busybox image, imported once.
 */

const execFileP = promisify(execFile);
const home = new TestHome();
const registries: TestRegistry[] = [];
let runtime: Runtime;
let store: ImageStore;
let work: string;
const BASE = 'roost-test/busybox:1';

async function context(files: Record<string, string | Buffer>): Promise<string> {
  const dir = await mkdtemp(join(work, 'ctx-'));
  for (const [name, data] of Object.entries(files)) {
    await mkdir(join(dir, name, '..'), { recursive: true });
    await writeFile(join(dir, name), data);
  }
  return dir;
}

async function build(ctx: string, options: BuildImageOptions = {}) {
  const events: BuildProgressEvent[] = [];
  const result = await runtime.images.build(ctx, { ...options, onProgress: (e) => events.push(e) });
  return { ...result, events, steps: events.filter((e) => e.type === 'step') };
}

async function run(image: string, cmd: string): Promise<string> {
  const sb = await home.create({ image });
  try {
    const r = await sb.commands.run(cmd);
    if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
    return r.stdout;
  } finally {
    await sb.remove({ force: true });
  }
}

/** The sandboxes ever created in the home (events), to tell whether a build booted any. */
async function created(): Promise<number> {
  const out: RoostEvent[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  for await (const e of runtime.events({ after: 0, signal: ac.signal })) if (e.type === 'sandbox.created') out.push(e);
  return out.length;
}

/** A stored layer's entries: name -> type. */
async function layerEntries(digest: string): Promise<Map<string, string>> {
  const tarPath = join(work, `${digest.slice(7, 19)}.tar`);
  const { pipeline } = await import('node:stream/promises');
  const { createWriteStream } = await import('node:fs');
  await pipeline(createReadStream(store.blobs.path(digest)), createGunzip(), createWriteStream(tarPath));
  const out = new Map<string, string>();
  for await (const e of tarEntries(tarPath)) out.set(e.path, e.type);
  return out;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'roost-build-'));
  const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
  store = new ImageStore({ home: home.root });
  await store.import(busybox.dir, { tag: BASE });
  runtime = await home.runtime();
});

afterAll(async () => {
  await Promise.all(registries.map((r) => r.stop()));
  await home.cleanup();
  expect(qemusOf(home.root), `QEMUs left in ${home.root}`).toEqual([]);
  await rm(work, { recursive: true, force: true });
});

const MULTI_STAGE = `# syntax=docker/dockerfile:1
# A comment, then a global ARG used by FROM.
ARG BASE=${BASE}
FROM \${BASE} AS builder
ARG SALUTE=hello
ENV APP_HOME=/opt/app \\
    MODE=build
WORKDIR $APP_HOME
COPY src/ ./src/
COPY *.txt ./txt/
RUN echo "$SALUTE from $MODE" > out.txt && cp src/main.sh app.sh && chmod 755 app.sh
SHELL ["/bin/sh", "-e", "-c"]
RUN mkdir -p /gone && echo x > /gone/f
RUN rm -rf /gone

FROM \${BASE}
LABEL org.example.name="roost test" \\
      org.example.version=1
COPY --from=builder /opt/app/out.txt /srv/out.txt
COPY --from=builder /opt/app/app.sh /usr/local/bin/app
ADD pkg.tar /opt/
COPY --chown=app:app --chmod=640 data.txt /srv/data.txt
ENV PATH=/usr/local/bin:$PATH
WORKDIR /srv
USER app
EXPOSE 8080 53/udp
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD test -f /srv/out.txt
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["world"]
`;

function tarOf(files: Record<string, string>): Buffer {
  const blocks: Buffer[] = [];
  for (const [name, text] of Object.entries(files)) {
    const h = Buffer.alloc(512);
    h.write(name, 0);
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write(Buffer.byteLength(text).toString(8).padStart(11, '0') + '\0', 124);
    h.write('00000000000\0', 136);
    h.write('0', 156);
    h.write('ustar\0', 257);
    h.write('00', 263);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    const body = Buffer.alloc(Math.ceil(Buffer.byteLength(text) / 512) * 512);
    body.write(text);
    blocks.push(h, body);
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

describe('roost build', () => {
  let multiCtx: string;

  it('builds a multi-stage Dockerfile with every supported instruction; the image runs as the Dockerfile says', async () => {
    multiCtx = await context({
      Dockerfile: MULTI_STAGE,
      '.dockerignore': 'secret.txt\n',
      'src/main.sh': '#!/bin/sh\necho "app says $1: $(cat /srv/out.txt)"\n',
      'a.txt': 'A\n',
      'b.txt': 'B\n',
      'secret.txt': 'never copied\n',
      'data.txt': 'data\n',
      'pkg.tar': tarOf({ 'pkg/readme': 'unpacked\n' }),
    });
    const r = await build(multiCtx, { tags: ['multi:1'], buildArgs: { SALUTE: 'howdy' } });
    expect(r.events.some((e) => e.type === 'note' && /syntax/.test(e.message))).toBe(true);
    // Only the target stage's layers: the base's, then COPY, COPY, ADD, COPY (the builder's RUN layers are not in it).
    const base = store.layersOf(BASE).layers.length;
    expect(r.image.layers).toBe(base + 4 + 1);
    expect(r.image.config).toMatchObject({ entrypoint: ['/usr/local/bin/app'], cmd: ['world'], workingDir: '/srv', user: 'app' });
    const doc = await store.rawConfig('multi:1');
    const cfg = doc.config as Record<string, unknown>;
    expect(cfg.Labels).toEqual({ 'org.example.name': 'roost test', 'org.example.version': '1' });
    expect(cfg.ExposedPorts).toEqual({ '53/udp': {}, '8080/tcp': {} });
    expect(cfg.Volumes).toEqual({ '/data': {} });
    expect(cfg.StopSignal).toBe('SIGTERM');
    expect(cfg.Healthcheck).toMatchObject({ Test: ['CMD-SHELL', 'test -f /srv/out.txt'], Interval: 5e9, Retries: 2 });
    expect((cfg.Env as string[]).find((e) => e.startsWith('PATH='))).toMatch(/^PATH=\/usr\/local\/bin:/);
    expect((doc.history as unknown[]).length).toBeGreaterThan(10);

    const sb = await home.create({ image: 'multi:1' });
    try {
      const out = await sb.commands.run('/usr/local/bin/app world; cat /opt/pkg/readme; id -u; pwd; ls -ln /srv/data.txt; ls /gone 2>&1; echo $PATH');
      expect(out.stdout).toContain('app says world: howdy from build');
      expect(out.stdout).toContain('unpacked');
      expect(out.stdout).toMatch(/^1000$/m);
      expect(out.stdout).toMatch(/^\/srv$/m);
      expect(out.stdout).toMatch(/-rw-r----- +1 1000 +1000 .*\/srv\/data.txt/);
      expect(out.stdout).toMatch(/^\/usr\/local\/bin:/m);
    } finally {
      await sb.remove({ force: true });
    }
  });

  it('a built image is pushed with and without auth, seen by skopeo with its own digest, and pulled by digest into another home', async () => {
    const built = await store.inspect('multi:1');
    for (const auth of ['none', 'basic'] as const) {
      const registry = await startRegistry({ auth });
      registries.push(registry);
      if (auth === 'basic') {
        await expectCode(store.push('multi:1', { destination: `${registry.host}/built/multi:1` }), 'IMAGE', /roost login/);
        await store.credentials.login(registry.host, registry.user, registry.password);
      }
      const pushed = await store.push('multi:1', { destination: `${registry.host}/built/multi:1` });
      expect(pushed.manifestDigest).toBe(built.id);
      const creds = auth === 'none' ? [] : ['--creds', `${registry.user}:${registry.password}`];
      const { stdout } = await execFileP('skopeo', ['inspect', '--tls-verify=false', ...creds, `docker://${registry.host}/built/multi:1`]);
      expect((JSON.parse(stdout) as { Digest: string }).Digest).toBe(built.id);
      if (auth === 'none') {
        const other = new TestHome();
        try {
          const image = await new ImageStore({ home: other.root }).pull(`${registry.host}/built/multi@${built.id}`);
          expect(image.id).toBe(built.id);
          const sb = await other.create({ image: image.id });
          expect((await sb.commands.run('/usr/local/bin/app pulled')).stdout).toContain('app says pulled: howdy from build');
        } finally {
          await other.cleanup();
        }
      }
    }
  });

  it('a second build of the same context runs nothing and boots no VM: every step is CACHED, same image', async () => {
    const first = await store.inspect('multi:1');
    const before = await created();
    const r = await build(multiCtx, { tags: ['multi:1'], buildArgs: { SALUTE: 'howdy' } });
    expect(r.ran).toBe(0);
    expect(r.cached).toBeGreaterThan(5);
    expect(r.image.id).toBe(first.id);
    expect(r.steps.filter((s) => s.type === 'step' && s.status === 'running')).toEqual([]);
    expect(await created()).toBe(before);
    // A changed build argument reruns the builder's RUN that uses it, and what follows.
    const changed = await build(multiCtx, { tags: ['multi:2'], buildArgs: { SALUTE: 'hi' } });
    expect(changed.ran).toBeGreaterThan(0);
    expect(await run('multi:2', 'cat /srv/out.txt')).toBe('hi from build\n');
  });

  it('a deletion in RUN is a whiteout in its layer (an emptied-and-remade directory is opaque) and the file is gone', async () => {
    const ctx = await context({
      Dockerfile: `FROM ${BASE}\nRUN rm /etc/motd && rm -rf /home/app && mkdir /home/app && echo new > /home/app/f\n`,
    });
    const r = await build(ctx, { tags: ['wh:1'] });
    const layer = r.steps.find((s) => s.type === 'step' && s.status === 'done' && s.layer)!;
    const entries = await layerEntries((layer as { layer: string }).layer);
    expect(entries.get('etc/.wh.motd')).toBe('file');
    expect(entries.get('home/app/.wh..wh..opq')).toBe('file');
    expect(entries.get('home/app/f')).toBe('file');
    expect(await run('wh:1', 'ls /etc/motd 2>&1; ls /home/app')).toMatch(/No such file[\s\S]*^f$/m);
  });

  it('two --no-cache builds with the same SOURCE_DATE_EPOCH give the same digest', async () => {
    const ctx = await context({
      Dockerfile: `FROM ${BASE}\nCOPY a.txt /a.txt\nRUN echo fixed > /b.txt && touch /c.txt\nCMD ["cat", "/b.txt"]\n`,
      'a.txt': 'a\n',
    });
    const one = await build(ctx, { noCache: true, sourceDateEpoch: 1_700_000_000 });
    const two = await build(ctx, { noCache: true, sourceDateEpoch: 1_700_000_000 });
    expect(two.ran).toBeGreaterThan(0);
    expect(two.image.id).toBe(one.image.id);
    const doc = await store.rawConfig(one.image.id);
    expect(doc.created).toBe('2023-11-14T22:13:20Z');
    expect(JSON.stringify(doc)).not.toContain(hostname());
  });

  it('a failing RUN is BUILD_FAILED naming the step with the end of its output, and tags nothing', async () => {
    const ctx = await context({ Dockerfile: `FROM ${BASE}\nRUN echo starting\nRUN echo oops >&2 && exit 3\n` });
    const e = await expectCode(build(ctx, { tags: ['failed:1'] }), 'BUILD_FAILED', /Dockerfile:3: RUN echo oops[\s\S]*status 3[\s\S]*oops/);
    expect(isRoostError(e) && e.details.exitCode).toBe(3);
    await expectCode(runtime.images.inspect('failed:1'), 'NOT_FOUND');
    // Nothing of the build is left running.
    expect((await runtime.list()).filter((s) => s.status === 'running' || s.status === 'creating')).toEqual([]);
  });

  it('refuses sources outside the context, a bad Dockerfile naming its line, and a missing base image', async () => {
    const outside = await context({ Dockerfile: `FROM ${BASE}\nCOPY ../secret /x\n` });
    await expectCode(build(outside), 'INVALID_ARGUMENT', /Dockerfile:2/);
    const viaLink = await context({ Dockerfile: `FROM ${BASE}\nCOPY link/passwd /x\n` });
    await symlink('/etc', join(viaLink, 'link'));
    await expectCode(build(viaLink), 'INVALID_ARGUMENT', /Dockerfile:2/);
    await expectCode(build(await context({ Dockerfile: `FROM ${BASE}\nFROB x\n` })), 'INVALID_ARGUMENT', /Dockerfile:2: .*FROB/i);
    // A registry that does not answer: the pull's error, naming the image.
    const port = await freePort();
    await expectCode(
      build(await context({ Dockerfile: `FROM 127.0.0.1:${port}/missing/image:1\nRUN true\n` })),
      'NETWORK',
      new RegExp(`Dockerfile:1: the base image 127\\.0\\.0\\.1:${port}/missing/image:1`),
    );
    await expectCode(build(await context({ 'other.txt': 'x' })), 'NOT_FOUND', /Dockerfile/);
  });

  it('a cancelled build stops its VM and leaves no sandbox and no half image', async () => {
    const ctx = await context({ Dockerfile: `FROM ${BASE}\nRUN echo started && sleep 600\n` });
    const ac = new AbortController();
    const started = new Promise<void>((resolve) => {
      void runtime.images
        .build(ctx, {
          tags: ['cancelled:1'],
          signal: ac.signal,
          onProgress: (e) => {
            if (e.type === 'output' && e.data.includes('started')) resolve();
          },
        })
        .catch(() => {});
    });
    await started;
    const t0 = Date.now();
    ac.abort();
    await expectCode(runtime.images.build(ctx, { tags: ['cancelled:1'], signal: AbortSignal.abort() }), 'ABORTED');
    // The first build's sandbox goes within seconds.
    for (let i = 0; i < 100 && (await runtime.list()).some((s) => s.status === 'running' || s.status === 'creating'); i++)
      await new Promise((r) => setTimeout(r, 100));
    expect((await runtime.list()).filter((s) => s.status === 'running' || s.status === 'creating')).toEqual([]);
    expect(Date.now() - t0).toBeLessThan(15_000);
    await expectCode(runtime.images.inspect('cancelled:1'), 'NOT_FOUND');
  });
});
