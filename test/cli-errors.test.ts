import { existsSync, readFileSync, renameSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient } from './api-client.js';
import { runRoost, TestHome, type CliResult } from './helpers.js';

/*
 * Every class of failure a user can cause, through the roost binary: each
 * ends with a non-zero status and a message on stderr, never a JavaScript
 * stack trace. One daemon serves the home (so the HTTP statuses are seen
 * too, and checked against the OpenAPI document), and one sandbox serves
 * every case that needs a guest.
 */

const home = new TestHome();
let daemon: ServeHandle;
let api: ApiClient;
let work: string;
let id = '';

const STACK_FRAME = /^\s+at /m;

async function roost(args: string[]): Promise<CliResult> {
  const env = { ...home.env };
  delete env.ROOST_TOKEN;
  delete env.ROOST_DEBUG;
  return runRoost(args, { env, cwd: work });
}

/** A failure: non-zero, a message matching `message` on stderr, no stack frames. */
async function fails(args: string[], message: RegExp, code = 125): Promise<CliResult> {
  const r = await roost(args);
  expect(r.stderr).not.toMatch(STACK_FRAME);
  expect(r.stderr).toMatch(message);
  expect(r.code).toBe(code);
  return r;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'roost-cli-errors-'));
  daemon = await serve({ home: home.root });
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
});

afterAll(async () => {
  await daemon?.close();
  await home.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('failures without a guest', () => {
  it('an image reference with a port out of range is INVALID_ARGUMENT, not a TypeError', async () => {
    const r = await fails(['run', 'localhost:99999/x'], /invalid image reference "localhost:99999\/x": port 99999 .*out of range/);
    expect(r.stderr).not.toMatch(/TypeError|Invalid URL/);
  });

  it('usage errors, unknown sandboxes, host files that are not there, a daemon that is not there', async () => {
    await fails(['frobnicate'], /unknown command/, 2);
    await fails(['exec', '0123456789ab', '--', 'true'], /no sandbox 0123456789ab/);
    await fails(['cp', './not-here', '0123456789ab:/x'], /no sandbox|not-here/);
    await fails(['--host', `unix://${join(work, 'nothing.sock')}`, 'ps'], /nothing\.sock/);
  });

  it('a JSON body over the limit is 413 naming the limit (here: a create with 1.2 MB of env)', async () => {
    const env = Array.from({ length: 12 }, (_, i) => ['-e', `V${i}=${'x'.repeat(100_000)}`]).flat();
    await fails(['run', ...env, '--', 'true'], /limit of 1048576 bytes \(1 MiB\).*as a stream/);
  });

  it('a deleted api-token is reported as a missing token file, with where it was and what to do', async () => {
    const file = join(home.root, 'api-token');
    renameSync(file, `${file}.away`);
    try {
      await fails(['ps'], new RegExp(`token file ${file} is missing.*restart the daemon`));
    } finally {
      renameSync(`${file}.away`, file);
    }
    expect((await roost(['ps'])).code).toBe(0);
  });

  it('names that look like ids are refused for volumes', async () => {
    await fails(['volume', 'create', '0123456789ab'], /may not look like ids/);
  });
});

describe('failures with a guest (one shared sandbox)', () => {
  it('a boot timeout names the flag typed and no file that is gone', async () => {
    const r = await fails(['run', '--boot-timeout', '1', '--', 'true'], /did not boot within 1 ms: raise the boot timeout \(--boot-timeout\)/);
    expect(r.stderr).not.toMatch(/timeoutMs|console\.log/);
    // Whatever paths the message names exist.
    for (const path of r.stderr.match(/\/[\w./-]+/g) ?? []) if (path.startsWith(home.root)) expect(existsSync(path)).toBe(true);
  });

  it('starts the shared sandbox', async () => {
    const r = await roost(['run', '-d', '--', 'sh', '-c', 'sleep 600']);
    expect(r.code).toBe(0);
    id = r.stdout.trim();
    const made = await roost(['exec', id, '--', 'sh', '-c', 'mkfifo /tmp/fifo && mkdir -p /tmp/d && mkfifo /tmp/d/pipe && echo hi > /tmp/d/f']);
    expect(made).toMatchObject({ code: 0 });
  });

  it('the files API answers a FIFO with a 4xx naming its type, not an empty 200', async () => {
    const res = await api.get(`/v1/sandboxes/${id}/files/content?path=/tmp/fifo`);
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringMatching(/not a regular file but a FIFO/) } });
  });

  it('cp of a FIFO fails and copies nothing; of a directory holding one, copies the rest and fails', async () => {
    await fails(['cp', `${id}:/tmp/fifo`, './fifo'], /not a regular file, directory or symlink/);
    expect(existsSync(join(work, 'fifo'))).toBe(false);
    const r = await fails(['cp', `${id}:/tmp/d`, './d'], /skipped d\/pipe \(FIFO\)[\s\S]*except 1 entry/);
    expect(r.stderr).not.toMatch(STACK_FRAME);
    expect(readFileSync(join(work, 'd', 'f'), 'utf8')).toBe('hi\n');
    expect(existsSync(join(work, 'd', 'pipe'))).toBe(false);
  });

  it('cp of a procfs file (size 0) copies its contents', async () => {
    const r = await roost(['cp', `${id}:/proc/self/status`, './status']);
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(readFileSync(join(work, 'status'), 'utf8')).toMatch(/^Name:/);
  });

  it('a snapshot may not be named like an id, so an id keeps meaning its snapshot', async () => {
    await fails(['snapshot', id, '0123456789ab'], /may not look like ids/);
    expect(JSON.parse((await roost(['snapshots', 'ls', '--json'])).stdout)).toEqual([]);
  });

  it('a template whose setup fails leaves no template', async () => {
    await fails(['template', 'create', 'broken', '--setup', 'echo setting up; exit 3', '--warm'], /setup command of template broken exited with 3/);
    const ls = await roost(['template', 'ls', '-q']);
    expect(ls).toMatchObject({ code: 0, stdout: '' });
    expect(JSON.parse((await roost(['snapshots', 'ls', '--json'])).stdout)).toEqual([]);
  });

  it('exec in a stopped sandbox says to start it', async () => {
    expect((await roost(['stop', id])).code).toBe(0);
    await fails(['exec', id, '--', 'true'], new RegExp(`is stopped.*start it first \\(\`roost start ${id}\``));
    expect((await roost(['rm', id])).code).toBe(0);
  });
});
