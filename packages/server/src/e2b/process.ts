import { isRoostError, parseInput, RoostError, type CommandHandleApi, type SandboxApi } from '@roost/api';
import { z } from 'zod';
import { ConnectStream } from './connect.js';

/*
 * envd's `process.Process` service (docs/e2b-wire.md §2.4-2.5) over Roost's
 * commands: Start streams a command's start, output and end; List,
 * SendSignal, SendInput and CloseStdin act on it by pid; Connect attaches
 * another stream to it. As in E2B, a process outlives the stream that
 * started it: its output is read (and dropped) while no stream listens.
 * PTYs (Start with `pty`, Update) are not served yet.
 */

const ProcessConfigSchema = z.looseObject({
  cmd: z.string().min(1),
  args: z.array(z.string()).optional(),
  envs: z.record(z.string(), z.string()).optional(),
  cwd: z.string().min(1).optional(),
});
const StartSchema = z.looseObject({
  process: ProcessConfigSchema,
  pty: z.unknown().optional(),
  tag: z.string().optional(),
  stdin: z.boolean().optional(),
});
const SelectorSchema = z.looseObject({ process: z.looseObject({ pid: z.number().int().nonnegative() }) });
const SignalSchema = SelectorSchema.extend({ signal: z.enum(['SIGNAL_SIGTERM', 'SIGNAL_SIGKILL', 'SIGNAL_UNSPECIFIED']).optional() });
const InputSchema = SelectorSchema.extend({ input: z.looseObject({ stdin: z.string().optional(), pty: z.string().optional() }) });

type ProcessEvent = { start: { pid: number } } | { data: { stdout: string } | { stderr: string } } | { end: Record<string, unknown> } | { keepalive: object };

interface Proc {
  pid: number;
  tag?: string;
  config: z.infer<typeof ProcessConfigSchema>;
  handle: CommandHandleApi;
  /** The streams attached to it (Start's, and Connect's). */
  streams: Set<ConnectStream>;
}

/** What Start needs of the request beyond its message. */
export interface StartContext {
  /** The user from the Authorization header, if one was sent. */
  user: string | undefined;
  /** Connect-Timeout-Ms: the process is killed at this deadline (E2B's envd does so). */
  timeoutMs: number | undefined;
  /** Keepalive-Ping-Interval in ms: a keepalive event after this long without output. */
  keepaliveMs: number | undefined;
  /** True when the sandbox has /bin/bash (else the SDK's `/bin/bash -l -c` runs with /bin/sh). */
  hasBash: boolean;
}

function send(proc: Proc, event: ProcessEvent): void {
  for (const s of proc.streams) s.send({ event });
}

/** The processes started through envd's face, by sandbox and pid. Single-threaded (the event loop). */
export class E2bProcesses {
  readonly #procs = new Map<string, Proc>();

  #key(sandboxId: string, pid: number): string {
    return `${sandboxId}:${pid}`;
  }

  #get(sandbox: SandboxApi, pid: number): Proc {
    const proc = this.#procs.get(this.#key(sandbox.id, pid));
    if (!proc) throw new RoostError('NOT_FOUND', `process with pid ${pid} not found`);
    return proc;
  }

  /** `Start`: runs the command and streams its events. */
  async start(sandbox: SandboxApi, message: unknown, ctx: StartContext): Promise<Response> {
    const req = parseInput(StartSchema, message, 'request');
    if (req.pty !== undefined) throw new RoostError('INVALID_ARGUMENT', "PTYs are not served by Roost's E2B face yet");
    let argv = [req.process.cmd, ...(req.process.args ?? [])];
    // E2B's SDK runs every command as `/bin/bash -l -c CMD`: an image without bash runs it with /bin/sh.
    if (req.process.cmd === '/bin/bash' && !ctx.hasBash) argv = ['/bin/sh', ...(req.process.args ?? [])];
    const handle = await sandbox.commands.start(argv, {
      ...(req.process.envs ? { env: req.process.envs } : {}),
      ...(req.process.cwd ? { cwd: req.process.cwd } : {}),
      ...(ctx.user ? { user: ctx.user } : {}),
      // `stdin: false` is /dev/null; absent or true, a pipe for SendInput.
      ...(req.stdin === false ? {} : { stdin: true }),
      ...(ctx.timeoutMs ? { timeoutMs: ctx.timeoutMs } : {}),
    });
    const stream = new ConnectStream();
    const proc: Proc = { pid: handle.pid, config: req.process, handle, streams: new Set([stream]), ...(req.tag ? { tag: req.tag } : {}) };
    const key = this.#key(sandbox.id, proc.pid);
    this.#procs.set(key, proc);
    stream.send({ event: { start: { pid: proc.pid } } });
    const keepalive = ctx.keepaliveMs ? setInterval(() => send(proc, { keepalive: {} }), ctx.keepaliveMs) : undefined;
    keepalive?.unref();
    const pump = async (from: AsyncIterable<Uint8Array>, name: 'stdout' | 'stderr') => {
      for await (const chunk of from)
        send(proc, { data: name === 'stdout' ? { stdout: Buffer.from(chunk).toString('base64') } : { stderr: Buffer.from(chunk).toString('base64') } });
    };
    void (async () => {
      let failure: unknown;
      let end: Record<string, unknown> | undefined;
      try {
        await Promise.all([pump(handle.stdout, 'stdout'), pump(handle.stderr, 'stderr')]);
        const r = await handle.wait();
        const status = r.signal ? `signal: ${r.signal === 'SIGKILL' ? 'killed' : r.signal}` : `exit status ${r.exitCode}`;
        end = r.signal
          ? { exitCode: -1, exited: false, status, error: status }
          : { ...(r.exitCode ? { exitCode: r.exitCode, error: status } : {}), exited: true, status };
      } catch (e) {
        failure = isRoostError(e, 'TIMEOUT') ? new RoostError('TIMEOUT', 'the command ran past its deadline (Connect-Timeout-Ms) and was killed') : e;
      } finally {
        clearInterval(keepalive);
        this.#procs.delete(key);
      }
      if (end) send(proc, { end });
      for (const s of proc.streams) s.end(failure);
    })();
    return stream.response;
  }

  /** `Connect`: another stream of a running process's events, from now on. */
  connect(sandbox: SandboxApi, message: unknown): Response {
    const req = parseInput(SelectorSchema, message, 'request');
    const proc = this.#get(sandbox, req.process.pid);
    const stream = new ConnectStream();
    stream.send({ event: { start: { pid: proc.pid } } });
    proc.streams.add(stream);
    return stream.response;
  }

  /** `List`: the processes of a sandbox started through envd's face. */
  list(sandbox: SandboxApi): { processes: unknown[] } {
    const processes = [...this.#procs.entries()]
      .filter(([k]) => k.startsWith(`${sandbox.id}:`))
      .map(([, p]) => ({ pid: p.pid, config: p.config, ...(p.tag ? { tag: p.tag } : {}) }));
    return { processes };
  }

  /** `SendSignal`: SIGKILL or SIGTERM to the process. */
  signal(sandbox: SandboxApi, message: unknown): object {
    const req = parseInput(SignalSchema, message, 'request');
    this.#get(sandbox, req.process.pid).handle.kill(req.signal === 'SIGNAL_SIGTERM' ? 'SIGTERM' : 'SIGKILL');
    return {};
  }

  /** `SendInput`: bytes to the process's stdin. */
  async input(sandbox: SandboxApi, message: unknown): Promise<object> {
    const req = parseInput(InputSchema, message, 'request');
    if (req.input.stdin === undefined) throw new RoostError('INVALID_ARGUMENT', 'input: only stdin is served (PTYs are not, yet)');
    await this.#get(sandbox, req.process.pid).handle.write(Buffer.from(req.input.stdin, 'base64'));
    return {};
  }

  /** `CloseStdin`: EOF on the process's stdin. */
  closeStdin(sandbox: SandboxApi, message: unknown): object {
    const req = parseInput(SelectorSchema, message, 'request');
    this.#get(sandbox, req.process.pid).handle.closeStdin();
    return {};
  }
}
