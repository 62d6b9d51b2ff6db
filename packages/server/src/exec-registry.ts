import { RoostError, type CommandHandleApi } from '@roost/api';
import type { DaemonRuntime } from './daemon-runtime.js';

/** A command started through the API, kept while its process runs so stdin, signals and resizes can reach it. */
export interface LiveExec {
  id: string;
  sandboxId: string;
  handle: CommandHandleApi;
  /** Started with `interactive: true` (stdin kept open for the stdin route). */
  interactive: boolean;
  /** Stdin writes of concurrent requests, one after the other. */
  stdin: Promise<void>;
}

/**
 * The commands started through the daemon that are still running, by exec
 * id. Entries leave when their process exits. Single-threaded (the event
 * loop): no locking.
 */
export class ExecRegistry {
  readonly #execs = new Map<string, LiveExec>();

  add(sandboxId: string, handle: CommandHandleApi, interactive: boolean): LiveExec {
    // The runtime names each command; its id is the API's execId (events carry the same one).
    const exec: LiveExec = { id: handle.id, sandboxId, handle, interactive, stdin: Promise.resolve() };
    this.#execs.set(exec.id, exec);
    return exec;
  }

  delete(id: string): void {
    this.#execs.delete(id);
  }

  get size(): number {
    return this.#execs.size;
  }

  /** The exec `execId` of the sandbox named by `sandboxRef` (an id or prefix), or NOT_FOUND. */
  async find(runtime: Pick<DaemonRuntime, 'get'>, sandboxRef: string, execId: string): Promise<LiveExec> {
    const exec = this.#execs.get(execId);
    const notFound = () => new RoostError('NOT_FOUND', `no running exec ${execId} in sandbox ${sandboxRef} (it has exited, or was started by another daemon)`);
    if (!exec) throw notFound();
    if (exec.sandboxId !== sandboxRef) {
      // A prefix: resolve it the way every other route does.
      const sandbox = await runtime.get(sandboxRef);
      if (sandbox.id !== exec.sandboxId) throw notFound();
    }
    return exec;
  }

  /** Kills every process still running (the daemon is shutting down). */
  killAll(): void {
    for (const exec of this.#execs.values()) killQuietly(exec.handle);
  }
}

/** Kills a command, ignoring a sandbox that is gone already. */
export function killQuietly(handle: CommandHandleApi): void {
  if (handle.exited) return;
  try {
    handle.kill('SIGKILL');
  } catch {
    // Its sandbox is gone already.
  }
}
