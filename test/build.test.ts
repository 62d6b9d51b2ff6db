import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildProgressEvent } from '@roost/api';
import type { Runtime } from '@roost/core';
import { ImageStore } from '@roost/core';
import { buildBusyboxImage } from '@roost/testkit';
import { TestHome } from './helpers.js';

/*
 * The image builder with real VMs (issue 20): a multi-stage Dockerfile with
 * every supported instruction, the result run and checked; the cache; a
 * deletion in RUN as a whiteout; reproducibility; the error cases.
 */

const home = new TestHome();
let runtime: Runtime;
let work: string;
const BASE = 'roost-test/busybox:1';

async function context(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(work, 'ctx-'));
  for (const [name, text] of Object.entries(files)) {
    await mkdir(join(dir, name, '..'), { recursive: true });
    await writeFile(join(dir, name), text);
  }
  return dir;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'roost-build-'));
  const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1' });
  await new ImageStore({ home: home.root }).import(busybox.dir, { tag: BASE });
  runtime = await home.runtime();
});

afterAll(async () => {
  await home.cleanup();
  await rm(work, { recursive: true, force: true });
});

describe('roost build', () => {
  it('builds a RUN and a COPY into an image that runs', async () => {
    const ctx = await context({
      Dockerfile: `FROM ${BASE}\nWORKDIR /app\nCOPY hello.txt ./\nRUN echo built > /app/built.txt && rm /etc/motd\nCMD ["cat", "/app/built.txt"]\n`,
      'hello.txt': 'hi\n',
    });
    const events: BuildProgressEvent[] = [];
    const r = await runtime.images.build(ctx, { tags: ['built:1'], onProgress: (e) => events.push(e) }).catch(async (e: unknown) => {
      const { readdirSync } = await import('node:fs');
      console.log('EVENTS', JSON.stringify(events.filter((x) => x.type !== 'output')), 'BLOBS', readdirSync(join(home.root, 'images/blobs/sha256')));
      throw e;
    });
    expect(r.image.tags).toContain('docker.io/library/built:1');
    const sb = await home.create({ image: 'built:1' });
    const out = await sb.commands.run('cat /app/hello.txt /app/built.txt; ls /etc/motd 2>&1; pwd');
    expect(out.stdout).toBe('hi\nbuilt\n');
    console.log(
      out,
      events.filter((e) => e.type !== 'output'),
    );
  });
});
