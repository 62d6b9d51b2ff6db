import { randomBytes } from 'node:crypto';
import { isRoostError, RoostError, SESSION_HEADER, SESSION_ID_PATTERN, type SandboxApi, type Session } from '@roost/api';
import type { DaemonRuntime } from './daemon-runtime.js';

/*
 * Client sessions: the daemon's end of "a sandbox that is not detached ends
 * with the client that made it" (see @roost/api's sessions.ts for the
 * protocol). A session lives while at least one of its streams is open,
 * then `graceMs` longer (a client that reconnects resumes it), then ends:
 * each sandbox it owns is ended as the embedded runtime ends its own on
 * close (killed and kept stopped; removed when made with `autoRemove`).
 * Detached sandboxes never belong to a session.
 */

/** Timing of the sessions of one daemon. */
export interface SessionTiming {
  /** How long a session without a connection waits for its client to resume it (ms). */
  graceMs: number;
  /** Interval of the keepalive lines on a session stream (ms). */
  keepaliveMs: number;
}

/** One client's session. Single-threaded (the event loop): no locking. */
export class ClientSession {
  readonly id: string;
  /** Sandboxes (ids) this session ends. */
  readonly #sandboxes = new Set<string>();
  #streams = 0;
  #timer: NodeJS.Timeout | undefined;
  #ended: Promise<void> | null = null;

  /** @internal Made by SessionRegistry. */
  constructor(
    id: string,
    private readonly registry: SessionRegistry,
  ) {
    this.id = id;
  }

  /** True once the session has ended (its sandboxes are being, or have been, ended). */
  get ended(): boolean {
    return this.#ended !== null;
  }

  /** Ids of the sandboxes it owns. */
  get sandboxes(): string[] {
    return [...this.#sandboxes];
  }

  /** The line its stream sends first and then as its keepalive. */
  line(): Session {
    const { graceMs, keepaliveMs } = this.registry.timing;
    return { id: this.id, graceMs, keepaliveMs };
  }

  /** A stream of the session opened: the session lives at least as long as it. Returns what to call when it ends. */
  connect(): () => void {
    if (this.#ended) throw this.registry.endedError(this.id);
    this.#streams++;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.#streams > 0 || this.#ended || this.registry.closing) return;
      const grace = this.registry.timing.graceMs;
      this.#timer = setTimeout(() => {
        if (!this.registry.closing) void this.end();
      }, grace);
      this.#timer.unref();
    };
  }

  /**
   * Takes a sandbox made for this session. A session that ended while it was
   * made ends it at once and answers NOT_FOUND (its client is gone).
   */
  async adopt(sandbox: SandboxApi): Promise<void> {
    if (this.#ended) {
      await this.registry.endSandbox(sandbox.id);
      throw new RoostError('NOT_FOUND', `session ${this.id} ended while sandbox ${sandbox.id} was created: the sandbox was ended with it`);
    }
    this.#sandboxes.add(sandbox.id);
  }

  /** Ends the session now: its sandboxes are ended (resolves when they are). Idempotent. */
  end(): Promise<void> {
    this.#ended ??= (async () => {
      clearTimeout(this.#timer);
      this.registry._forget(this.id);
      await Promise.allSettled([...this.#sandboxes].map((id) => this.registry.endSandbox(id)));
    })();
    return this.#ended;
  }
}

/**
 * The sessions of one daemon, by id. Ending a session's sandboxes goes
 * through the runtime's `get` and the SandboxApi (`kill`, `remove`), as a
 * client would.
 */
export class SessionRegistry {
  readonly timing: SessionTiming;
  readonly #runtime: Pick<DaemonRuntime, 'get'>;
  readonly #sessions = new Map<string, ClientSession>();
  #closing = false;

  constructor(runtime: Pick<DaemonRuntime, 'get'>, timing: SessionTiming) {
    this.#runtime = runtime;
    this.timing = timing;
  }

  /** Sessions that have not ended. */
  get size(): number {
    return this.#sessions.size;
  }

  /** True once the daemon is shutting down: sessions no longer end on their own (the runtime's close ends the sandboxes). */
  get closing(): boolean {
    return this.#closing;
  }

  /** A new session. */
  open(): ClientSession {
    const session = new ClientSession(randomBytes(16).toString('hex'), this);
    this.#sessions.set(session.id, session);
    return session;
  }

  /** The session `id` names, or NOT_FOUND when it has ended or never was (a malformed id is INVALID_ARGUMENT). */
  get(id: string): ClientSession {
    if (!SESSION_ID_PATTERN.test(id)) {
      throw new RoostError('INVALID_ARGUMENT', `${SESSION_HEADER}: expected a session id (32 hex digits, from POST /v1/sessions), got "${id.slice(0, 64)}"`, {
        details: { field: SESSION_HEADER },
      });
    }
    const session = this.#sessions.get(id);
    if (!session) throw this.endedError(id);
    return session;
  }

  /**
   * The session a request that makes sandboxes which are not detached names
   * in its `Roost-Session` header; without one, INVALID_ARGUMENT saying how
   * to open one (or to ask for a detached sandbox).
   */
  required(header: string | undefined, what: string): ClientSession {
    if (header === undefined || header.trim() === '') {
      throw new RoostError(
        'INVALID_ARGUMENT',
        `${what}: a sandbox that is not detached ends with its client's session: send the ${SESSION_HEADER} header with the id of an open session ` +
          `(POST /v1/sessions; @roost/client and the roost CLI do this), or ask for "detached": true and remove the sandbox yourself`,
        { details: { field: SESSION_HEADER } },
      );
    }
    return this.get(header.trim());
  }

  /** The session that owns sandbox `id`, if one does. */
  owner(sandboxId: string): ClientSession | undefined {
    for (const s of this.#sessions.values()) if (s.sandboxes.includes(sandboxId)) return s;
    return undefined;
  }

  /** The error for a session that is not there. */
  endedError(id: string): RoostError {
    return new RoostError('NOT_FOUND', `no session ${id}: it ended (its sandboxes were ended) or was never opened; open a new one with POST /v1/sessions`, {
      details: { field: SESSION_HEADER, session: id },
    });
  }

  /** Ends one sandbox of an ended session: removed when it was made with autoRemove, else killed if it runs. A sandbox already gone is fine. */
  async endSandbox(id: string): Promise<void> {
    try {
      const sandbox = await this.#runtime.get(id);
      const info = sandbox.info;
      if (info.detached) return;
      if (info.autoRemove) await sandbox.remove({ force: true });
      else if (info.status === 'running' || info.status === 'paused' || info.status === 'creating') await sandbox.kill();
    } catch (e) {
      if (isRoostError(e, 'NOT_FOUND')) return;
      process.stderr.write(`roost serve: ending sandbox ${id} of a closed session: ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  /** The daemon is shutting down: no session ends on its own from now on. */
  close(): void {
    this.#closing = true;
  }

  /** @internal A session ended. */
  _forget(id: string): void {
    this.#sessions.delete(id);
  }
}
