import { ExecRequestSchema, ResizeRequestSchema, RoostError, SignalRequestSchema, type ExecEvent, type RunOptions } from '@roost/api';
import { killQuietly } from './exec-registry.js';
import { boolParam, errorBody, parseJsonBody, queryParams, toRoostError, wantsJson } from './http.js';
import type { RouteContext, RoostHono } from './route-context.js';

const line = (e: ExecEvent) => JSON.stringify(e) + '\n';

/** Reads one output stream to its end, passing chunks on; stops early when `sink` returns false. */
async function pump(source: AsyncIterable<Uint8Array>, sink: (chunk: Uint8Array) => Promise<boolean> | boolean): Promise<void> {
  for await (const chunk of source) {
    if (!(await sink(chunk))) return;
  }
}

/** Registers `POST /v1/sandboxes/{id}/exec` and the `.../execs/{execId}/*` routes. */
export function execRoutes(app: RoostHono, ctx: RouteContext): void {
  const { runtime, execs } = ctx;

  app.post('/v1/sandboxes/:id/exec', async (c) => {
    queryParams(c, []);
    const req = await parseJsonBody(c, ExecRequestSchema);
    const json = wantsJson(c);
    if (json && req.interactive) {
      // The execId the stdin route needs comes in the stream's first line: without it the command would wait for input forever.
      throw new RoostError(
        'INVALID_ARGUMENT',
        'interactive: needs the NDJSON stream (Accept: application/x-ndjson), whose `started` line carries the execId for POST .../execs/{execId}/stdin',
        { details: { field: 'interactive' } },
      );
    }
    const sandbox = await runtime.get(c.req.param('id'));
    const stdinData = req.stdin === undefined ? undefined : Buffer.from(req.stdin, req.stdinEncoding === 'base64' ? 'base64' : 'utf8');
    const options: RunOptions = {};
    if (req.args) options.args = req.args;
    if (req.env) options.env = req.env;
    if (req.cwd) options.cwd = req.cwd;
    if (req.user !== undefined) options.user = req.user;
    if (req.pty !== undefined) options.pty = req.pty;
    if (req.timeoutMs !== undefined) options.timeoutMs = req.timeoutMs;
    options.stdin = req.interactive ? true : stdinData;
    const handle = await sandbox.commands.start(req.cmd, options);
    const exec = execs.add(sandbox.id, handle, req.interactive === true);
    if (req.interactive && stdinData) exec.stdin = handle.write(stdinData).catch(() => {});

    const base64 = req.encoding === 'base64';
    // Both output streams are being iterated before wait() is called (the
    // pumps start synchronously): wait() would otherwise collect them itself.
    let sinkOut: (chunk: Uint8Array) => Promise<boolean> | boolean;
    let sinkErr: (chunk: Uint8Array) => Promise<boolean> | boolean;
    let flush: () => Promise<void> = async () => {};
    let stream: ReturnType<RouteContext['openStream']> | undefined;
    const collected: { stdout: Buffer[]; stderr: Buffer[] } = { stdout: [], stderr: [] };

    if (json) {
      sinkOut = (chunk) => (collected.stdout.push(Buffer.from(chunk)), true);
      sinkErr = (chunk) => (collected.stderr.push(Buffer.from(chunk)), true);
    } else {
      const s = ctx.openStream(c, 'application/x-ndjson');
      stream = s;
      const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
      const emit = (type: 'stdout' | 'stderr') => async (chunk: Uint8Array) => {
        const data = base64 ? Buffer.from(chunk).toString('base64') : decoders[type].decode(chunk, { stream: true });
        return data === '' ? !s.closed : s.write(line({ type, data }));
      };
      sinkOut = emit('stdout');
      sinkErr = emit('stderr');
      flush = async () => {
        if (base64) return;
        for (const type of ['stdout', 'stderr'] as const) {
          const rest = decoders[type].decode();
          if (rest) await s.write(line({ type, data: rest }));
        }
      };
      s.push(line({ type: 'started', execId: exec.id, pid: handle.pid }));
    }

    // The client going away (or the daemon closing) kills the process: nobody is left to read it.
    const gone = stream ? stream.signal : ctx.clientGone(c);
    const onGone = () => killQuietly(handle);
    gone.addEventListener('abort', onGone, { once: true });
    ctx.shutdown.addEventListener('abort', onGone, { once: true });

    const pumps = Promise.all([pump(handle.stdout, sinkOut), pump(handle.stderr, sinkErr)]);
    const result = handle.wait();
    const finished = result.then(
      () => {},
      () => {},
    );
    void finished.then(() => {
      execs.delete(exec.id);
      gone.removeEventListener('abort', onGone);
      ctx.shutdown.removeEventListener('abort', onGone);
    });

    const outcome = (async () => {
      await pumps;
      await flush();
      return result;
    })();

    if (json) {
      try {
        const r = await outcome;
        return c.json({ exitCode: r.exitCode, signal: r.signal, stdout: text(collected.stdout, base64), stderr: text(collected.stderr, base64) });
      } catch (e) {
        const err = toRoostError(e);
        if (err.code === 'TIMEOUT') {
          throw new RoostError('TIMEOUT', err.message, {
            cause: err,
            details: { ...err.details, stdout: text(collected.stdout, base64), stderr: text(collected.stderr, base64) },
          });
        }
        throw err;
      }
    }

    const s = stream!;
    void outcome
      .then(
        (r) => s.write(line({ type: 'exit', exitCode: r.exitCode, signal: r.signal })),
        (e: unknown) => {
          const err = ctx.shutdown.aborted
            ? new RoostError('UNAVAILABLE', 'the daemon is shutting down; the command was killed', { cause: e })
            : toRoostError(e);
          return s.write(line({ type: 'error', error: errorBody(err).error }));
        },
      )
      .finally(() => s.close());
    return s.response();
  });

  app.post('/v1/sandboxes/:id/execs/:execId/stdin', async (c) => {
    const close = boolParam(queryParams(c, ['close']), 'close');
    const exec = await execs.find(runtime, c.req.param('id'), c.req.param('execId'));
    if (!exec.interactive) throw new RoostError('INVALID_STATE', `exec ${exec.id} was not started with interactive: true; its stdin is closed`);
    const body = c.req.raw.body;
    // One request's bytes go in whole before the next request's.
    const previous = exec.stdin;
    let done!: () => void;
    exec.stdin = new Promise<void>((r) => (done = r));
    try {
      await previous;
      if (body) {
        for await (const chunk of body) {
          if (exec.handle.exited) throw new RoostError('INVALID_STATE', `exec ${exec.id} has exited; its stdin is closed`);
          await exec.handle.write(chunk);
        }
      }
      if (close) exec.handle.closeStdin();
    } finally {
      done();
    }
    return c.body(null, 204);
  });

  app.post('/v1/sandboxes/:id/execs/:execId/signal', async (c) => {
    const req = await parseJsonBody(c, SignalRequestSchema);
    const exec = await execs.find(runtime, c.req.param('id'), c.req.param('execId'));
    exec.handle.kill(req.signal as NodeJS.Signals | number);
    return c.body(null, 204);
  });

  app.post('/v1/sandboxes/:id/execs/:execId/resize', async (c) => {
    const req = await parseJsonBody(c, ResizeRequestSchema);
    const exec = await execs.find(runtime, c.req.param('id'), c.req.param('execId'));
    exec.handle.resize(req);
    return c.body(null, 204);
  });
}

function text(chunks: Buffer[], base64: boolean): string {
  return Buffer.concat(chunks).toString(base64 ? 'base64' : 'utf8');
}
