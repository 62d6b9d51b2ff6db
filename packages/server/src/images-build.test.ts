import { describe, expect, it } from 'vitest';
import { MAX_BUILD_CONTEXT_BYTES, RoostError, type BuildContextArchive, type BuildImageOptions, type BuildResult } from '@roost/api';
import { createApp } from './app.js';
import type { DaemonRuntime } from './daemon-runtime.js';

/*
 * POST /v1/images/build as a thin adapter, over a fake runtime whose build
 * reads the context stream and reports what the test scripts: the options
 * from the query, the body handed over as it came, NDJSON lines, early
 * failures as statuses, late ones as an `error` line, a gone client aborting
 * the build, a flood of output bounded for a client that does not read.
 */

type Script = (o: BuildImageOptions, context: Buffer) => Promise<BuildResult>;

const image = {
  id: 'sha256:' + 'a'.repeat(64),
  tags: ['docker.io/library/app:1'],
  size: 1,
  configDigest: 'sha256:' + 'b'.repeat(64),
  created: null,
  addedAt: '2024-01-01T00:00:00Z',
  source: 'build',
  rootfsSize: null,
  layers: 1,
  config: { entrypoint: [], cmd: [], env: [], workingDir: '', user: '' },
};

function appWith(script: Script) {
  const seen: { options?: BuildImageOptions; context?: Buffer } = {};
  const runtime = {
    home: '/nonexistent',
    images: {
      async build(context: BuildContextArchive, options: BuildImageOptions) {
        const chunks: Buffer[] = [];
        for await (const c of context.tar) chunks.push(Buffer.from(c));
        seen.options = options;
        seen.context = Buffer.concat(chunks);
        return script(options, seen.context);
      },
    },
  } as unknown as DaemonRuntime;
  return { app: createApp({ runtime, token: null, version: 'test' }), seen };
}

const post = (query: string, body = 'TAR', headers: Record<string, string> = {}) => ({
  method: 'POST',
  body,
  headers: { 'content-type': 'application/x-tar', ...headers },
  path: `/v1/images/build${query}`,
});

async function send(app: ReturnType<typeof appWith>['app'], r: ReturnType<typeof post>): Promise<Response> {
  return app.request(r.path, { method: r.method, body: r.body, headers: r.headers });
}

const lines = async (res: Response) =>
  (await res.text())
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { type: string; [k: string]: unknown });

describe('POST /v1/images/build', () => {
  it('passes the options and the context through, and streams the progress then done', async () => {
    const { app, seen } = appWith(async (o) => {
      o.onProgress?.({ type: 'step', stage: '0', step: 1, of: 1, text: 'RUN make', status: 'running' });
      o.onProgress?.({ type: 'output', step: 1, stream: 'stdout', data: 'ok\n' });
      o.onProgress?.({ type: 'step', stage: '0', step: 1, of: 1, text: 'RUN make', status: 'done', durationMs: 5 });
      return { image, ran: 1, cached: 0 };
    });
    const options = { tags: ['app:1'], buildArgs: { A: '1' }, noCache: true, network: 'none' };
    const res = await send(app, post(`?options=${encodeURIComponent(JSON.stringify(options))}`, 'the tar bytes'));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/x-ndjson');
    expect((await lines(res)).map((l) => `${l.type}${l.status ? `:${String(l.status)}` : ''}`)).toEqual(['step:running', 'output', 'step:done', 'done']);
    expect(seen.context?.toString()).toBe('the tar bytes');
    expect(seen.options).toMatchObject(options);
    expect(seen.options?.signal).toBeInstanceOf(AbortSignal);
  });

  it('answers the BuildResult alone with Accept: application/json', async () => {
    const { app } = appWith(async () => ({ image, ran: 0, cached: 2 }));
    const res = await send(app, post('', 'x', { accept: 'application/json' }));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ image, ran: 0, cached: 2 });
  });

  it('refuses bad options with 400 naming the field, before reading the body', async () => {
    const { app, seen } = appWith(async () => ({ image, ran: 0, cached: 0 }));
    for (const [query, field] of [
      [{ tags: 'app' }, 'options.tags'],
      [{ bogus: true }, 'options.bogus'],
      [{ network: 'bridge' }, 'options.network'],
      [{ buildArgs: { 'not a name': 'x' } }, 'options.buildArgs.not a name'],
    ] as const) {
      const res = await send(app, post(`?options=${encodeURIComponent(JSON.stringify(query))}`));
      expect(res.status).toBe(400);
      const body = (await res.json()) as { error: { code: string; message: string; details: { field: string } } };
      expect(body.error.code).toBe('INVALID_ARGUMENT');
      expect(body.error.details.field).toBe(field);
      expect(body.error.message).toContain(`query: ${field}`);
    }
    const notJson = await send(app, post('?options=%7Bnope'));
    expect(notJson.status).toBe(400);
    expect(((await notJson.json()) as { error: { message: string } }).error.message).toMatch(/^query: options: invalid JSON/);
    const unknownParam = await send(app, post('?tag=x'));
    expect(unknownParam.status).toBe(400);
    const wrongType = await send(app, post('', '{}', { 'content-type': 'application/json' }));
    expect(wrongType.status).toBe(400);
    expect(((await wrongType.json()) as { error: { message: string } }).error.message).toMatch(/tar stream \(Content-Type: application\/x-tar\)/);
    expect(seen.context).toBeUndefined();
  });

  it('refuses a context announced over the limit with 413 before reading it', async () => {
    const { app, seen } = appWith(async () => ({ image, ran: 0, cached: 0 }));
    const res = await app.fetch(
      new Request('http://x/v1/images/build', {
        method: 'POST',
        body: 'x',
        headers: { 'content-type': 'application/x-tar', 'content-length': String(MAX_BUILD_CONTEXT_BYTES + 1) },
      }),
    );
    expect(res.status).toBe(413);
    const body = (await res.json()) as { error: { code: string; message: string; details: { maxBytes: number } } };
    expect(body.error.code).toBe('INVALID_ARGUMENT');
    expect(body.error.details.maxBytes).toBe(MAX_BUILD_CONTEXT_BYTES);
    expect(seen.context).toBeUndefined();
  });

  it('answers a build that fails before its first line with its own status (the context refused, a failing first step)', async () => {
    const refused = appWith(async () => {
      throw new RoostError('INVALID_ARGUMENT', 'build context: entry "../x" climbs out with ..; the archive is refused');
    });
    const res = await send(refused.app, post(''));
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/climbs out/);

    const failed = appWith(async () => {
      throw new RoostError('BUILD_FAILED', 'Dockerfile:2: RUN false: exited with status 1', { details: { line: 2, exitCode: 1, output: '' } });
    });
    const res2 = await send(failed.app, post(''));
    expect(res2.status).toBe(422);
    expect(((await res2.json()) as { error: { code: string } }).error.code).toBe('BUILD_FAILED');
  });

  it('ends the stream with an error line when the build fails after its first line', async () => {
    const { app } = appWith(async (o) => {
      o.onProgress?.({ type: 'step', stage: '0', step: 1, of: 1, text: 'RUN false', status: 'running' });
      o.onProgress?.({ type: 'output', step: 1, stream: 'stderr', data: 'boom\n' });
      throw new RoostError('BUILD_FAILED', 'Dockerfile:2: RUN false: exited with status 1\nboom', { details: { line: 2, exitCode: 1, output: 'boom\n' } });
    });
    const res = await send(app, post(''));
    expect(res.status).toBe(200);
    const all = await lines(res);
    expect(all.at(-1)).toEqual({
      type: 'error',
      error: { code: 'BUILD_FAILED', message: 'Dockerfile:2: RUN false: exited with status 1\nboom', details: { line: 2, exitCode: 1, output: 'boom\n' } },
    });
  });

  it('aborts the build when the client goes away', async () => {
    let aborted!: () => void;
    const gone = new Promise<void>((r) => (aborted = r));
    const { app } = appWith(async (o) => {
      o.onProgress?.({ type: 'step', stage: '0', step: 1, of: 1, text: 'RUN sleep 1000', status: 'running' });
      o.signal?.addEventListener('abort', () => aborted(), { once: true });
      await gone;
      throw new RoostError('ABORTED', 'the build was aborted');
    });
    const res = await send(app, post(''));
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
    await gone;
  });

  it('drops RUN output rather than queueing it without bound for a client that does not read, and says how much', async () => {
    const chunk = 'y'.repeat(64 * 1024);
    const { app } = appWith(async (o) => {
      o.onProgress?.({ type: 'step', stage: '0', step: 1, of: 1, text: 'RUN yes', status: 'running' });
      for (let i = 0; i < 256; i++) o.onProgress?.({ type: 'output', step: 1, stream: 'stdout', data: chunk }); // 16 MiB
      o.onProgress?.({ type: 'step', stage: '0', step: 1, of: 1, text: 'RUN yes', status: 'done', durationMs: 1 });
      return { image, ran: 1, cached: 0 };
    });
    const res = await send(app, post(''));
    const all = await lines(res);
    const outputs = all.filter((l) => l.type === 'output').length;
    expect(outputs).toBeGreaterThan(0);
    expect(outputs).toBeLessThan(256);
    const note = all.find((l) => l.type === 'note');
    expect(String(note?.message)).toMatch(new RegExp(`^${(256 - outputs) * chunk.length} bytes of output were dropped`));
    // Steps and the last line always go.
    expect(all.map((l) => l.type).filter((t) => t !== 'output' && t !== 'note')).toEqual(['step', 'step', 'done']);
  });
});
