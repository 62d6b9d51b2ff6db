import { isRoostError, MAX_TERMINAL_SIZE, parseInput, RoostError, type CommandHandleApi, type SandboxApi } from '@roost/api';
import { z } from 'zod';
import { ConnectStream } from './connect.js';

/*
 * envd's `process.Process` service (docs/e2b-wire.md §2.4-2.5) over Roost's
 * commands: Start streams a command's start, output and end (output as
 * `pty` data for a command on a terminal); List, SendSignal, SendInput,
 * CloseStdin and Update (a terminal's size) act on it by pid; Connect
 * attaches another stream to it. As in E2B, a process outlives the stream
 * that started it: its output is read (and dropped) while no stream listens.
 */

const ProcessConfigSchema = z.looseObject({
  cmd: z.string().min(1),
  args: z.array(z.string()).optional(),
  envs: z.record(z.string(), z.string()).optional(),
  cwd: z.string().min(1).optional(),
});
const terminalSide = z.number().int().min(1).max(MAX_TERMINAL_SIZE);
const PtySchema = z.looseObject({ size: z.looseObject({ cols: terminalSide, rows: terminalSide }) });
const StartSchema = z.looseObject({
  process: ProcessConfigSchema,
  pty: PtySchema.optional(),
  tag: z.string().optional(),
  stdin: z.boolean().optional(),
});
const SelectorSchema = z.looseObject({ process: z.looseObject({ pid: z.number().int().nonnegative() }) });
const SignalSchema = SelectorSchema.extend({ signal: z.enum(['SIGNAL_SIGTERM', 'SIGNAL_SIGKILL', 'SIGNAL_UNSPECIFIED']).optional() });
const InputSchema = SelectorSchema.extend({ input: z.looseObject({ stdin: z.string().optional(), pty: z.string().optional() }) });
const UpdateSchema = SelectorSchema.extend({ pty: PtySchema.optional() });

type ProcessEvent =
  { start: { pid: number } } | { data: { stdout: string } | { stderr: string } | { pty: string } } | { end: Record<string, unknown> } | { keepalive: object };

interface Proc {
  pid: number;
  tag?: string;
  config: z.infer<typeof ProcessConfigSchema>;
  handle: CommandHandleApi;
  /** It runs on a terminal: its output is `pty` data, its input `pty` input. */
  pty: boolean;
  /** The streams attached to it (Start's, and Connect's). */
  streams: Set<ConnectStream>;
}

/** What Start needs of the request beyond its message. */
export interface StartContext {
  /** The user it runs as: the Authorization header's, else the template's default (undefined: root). */
  user: string | undefined;
  /** Where it starts when the request names no cwd: the user's home, if it exists. */
  home: string | undefined;
  /** Connect-Timeout-Ms: the process is killed at this deadline (E2B's envd does so). */
  timeoutMs: number | undefined;
  /** Keepalive-Ping-Interval in ms: a keepalive event after this long without output. */
  keepaliveMs: number | undefined;
  /** True when the sandbox has /bin/bash (else the SDK's `/bin/bash -l -c` runs with /bin/sh). */
  hasBash: boolean;
}

function send(proc: Proc, event: ProcessEvent): void {
  for (const s of proc.streams) {
    if (s.open) s.send({ event });
    else proc.streams.delete(s); // its client left
  }
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
    let argv = [req.process.cmd, ...(req.process.args ?? [])];
    // E2B's SDK runs every command as `/bin/bash -l -c CMD`: an image without bash runs it with /bin/sh.
    if (req.process.cmd === '/bin/bash' && !ctx.hasBash) argv = ['/bin/sh', ...(req.process.args ?? [])];
    const cwd = req.process.cwd ?? ctx.home;
    const pty = req.pty !== undefined;
    const handle = await sandbox.commands.start(argv, {
      ...(req.process.envs ? { env: req.process.envs } : {}),
      ...(cwd ? { cwd } : {}),
      ...(ctx.user ? { user: ctx.user } : {}),
      ...(req.pty ? { pty: { rows: req.pty.size.rows, cols: req.pty.size.cols } } : {}),
      // `stdin: false` is /dev/null; absent or true, a pipe for SendInput (a terminal always takes input).
      ...(req.stdin === false && !pty ? {} : { stdin: true }),
      ...(ctx.timeoutMs ? { timeoutMs: ctx.timeoutMs } : {}),
    });
    const stream = new ConnectStream();
    const proc: Proc = { pid: handle.pid, config: req.process, handle, pty, streams: new Set([stream]), ...(req.tag ? { tag: req.tag } : {}) };
    const key = this.#key(sandbox.id, proc.pid);
    this.#procs.set(key, proc);
    stream.send({ event: { start: { pid: proc.pid } } });
    const keepalive = ctx.keepaliveMs ? setInterval(() => send(proc, { keepalive: {} }), ctx.keepaliveMs) : undefined;
    keepalive?.unref();
    const pump = async (from: AsyncIterable<Uint8Array>, name: 'stdout' | 'stderr') => {
      // A terminal's output (stdout and stderr merged) is `pty` data.
      const kind = pty ? 'pty' : name;
      for await (const chunk of from) {
        send(proc, { data: { [kind]: Buffer.from(chunk).toString('base64') } as { pty: string } });
        // Flow control: the process waits while every stream listening is backed up (none listening: output is dropped, as in E2B).
        const streams = [...proc.streams].filter((s) => s.open);
        if (streams.length > 0 && streams.every((s) => s.backedUp)) await Promise.race(streams.map((s) => s.drained()));
      }
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

  /** `SendInput`: bytes to the process's stdin, or to its terminal. */
  async input(sandbox: SandboxApi, message: unknown): Promise<object> {
    const req = parseInput(InputSchema, message, 'request');
    const proc = this.#get(sandbox, req.process.pid);
    const data = proc.pty ? req.input.pty : req.input.stdin;
    if (data === undefined)
      throw new RoostError('INVALID_ARGUMENT', `input: process ${proc.pid} ${proc.pty ? 'runs on a terminal: send pty input' : 'has no terminal: send stdin'}`);
    await proc.handle.write(Buffer.from(data, 'base64'));
    return {};
  }

  /** `Update`: a terminal's new size. */
  update(sandbox: SandboxApi, message: unknown): object {
    const req = parseInput(UpdateSchema, message, 'request');
    const proc = this.#get(sandbox, req.process.pid);
    if (req.pty) {
      if (!proc.pty) throw new RoostError('INVALID_ARGUMENT', `process ${proc.pid} has no terminal to resize`);
      proc.handle.resize({ rows: req.pty.size.rows, cols: req.pty.size.cols });
    }
    return {};
  }

  /** `CloseStdin`: EOF on the process's stdin. */
  closeStdin(sandbox: SandboxApi, message: unknown): object {
    const req = parseInput(SelectorSchema, message, 'request');
    this.#get(sandbox, req.process.pid).handle.closeStdin();
    return {};
  }
}
