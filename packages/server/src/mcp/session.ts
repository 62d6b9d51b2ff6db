import { randomUUID } from 'node:crypto';
import { isRoostError, MCP_SESSION_LABEL, RoostError, type McpLimits, type RuntimeApi } from '@roost/api';

/** What the MCP face needs of a runtime: the embedded Runtime, a RoostClient, or the daemon's runtime. */
export type McpRuntime = Pick<RuntimeApi, 'create' | 'get' | 'list' | 'images' | 'deployments' | 'actors'>;

/**
 * One MCP session (a stdio connection, or an HTTP session): the sandboxes it
 * made, which end when it ends unless made with `keep`, and its limit on
 * live ones. Single-threaded (the event loop): a slot is reserved before a
 * create starts, so concurrent calls cannot pass the limit together.
 */
export class McpSession {
  /** The session's id: the value of MCP_SESSION_LABEL on its sandboxes. */
  readonly id: string;
  readonly #owned = new Set<string>();
  #reserved = 0;
  #calls = 0;
  #closed: Promise<void> | null = null;

  constructor(
    readonly runtime: McpRuntime,
    readonly limits: McpLimits,
    id: string = randomUUID(),
  ) {
    this.id = id;
  }

  /** Ids of the live sandboxes it owns. */
  get owned(): string[] {
    return [...this.#owned];
  }

  /** True once `close` was called. */
  get closed(): boolean {
    return this.#closed !== null;
  }

  /** Tool calls in flight: a session is not idle while one runs. */
  get calls(): number {
    return this.#calls;
  }

  /** A tool call starts; call what it returns when it ends. */
  begin(): () => void {
    this.#calls++;
    let done = false;
    return () => {
      if (!done) this.#calls--;
      done = true;
    };
  }

  /** The labels of a sandbox this session makes. */
  labels(extra: Record<string, string> = {}): Record<string, string> {
    return { ...extra, [MCP_SESSION_LABEL]: this.id };
  }

  /**
   * Reserves `n` slots for sandboxes about to be made; RESOURCE_EXHAUSTED
   * past the limit. Returns `adopt(ids)` (the made ones become owned, the
   * rest of the slots are freed) and `release()` (none was made).
   */
  reserve(n: number): { adopt(ids: string[]): void; release(): void } {
    if (this.#closed) throw new RoostError('UNAVAILABLE', 'this MCP session has ended');
    const live = this.#owned.size + this.#reserved;
    if (live + n > this.limits.maxSandboxes) {
      throw new RoostError(
        'RESOURCE_EXHAUSTED',
        `this MCP session may have ${this.limits.maxSandboxes} sandboxes at once and has ${live}: remove one (sandbox_remove), or create it with keep: true`,
        { details: { limit: this.limits.maxSandboxes, live } },
      );
    }
    this.#reserved += n;
    let done = false;
    const finish = () => {
      if (done) return false;
      done = true;
      this.#reserved -= n;
      return true;
    };
    return {
      adopt: (ids) => {
        if (!finish()) return;
        for (const id of ids) this.#owned.add(id);
        // Made while the session was ending: no one would remove them later.
        if (this.#closed) void this.#removeAll(ids);
      },
      release: () => void finish(),
    };
  }

  /** A sandbox it owned was removed (through a tool): it no longer counts. */
  forget(id: string): void {
    this.#owned.delete(id);
  }

  /** Ends the session: every sandbox it owns is removed (those gone already are skipped). Idempotent. */
  close(): Promise<void> {
    this.#closed ??= this.#removeAll(this.owned);
    return this.#closed;
  }

  async #removeAll(ids: string[]): Promise<void> {
    await Promise.all(
      ids.map(async (id) => {
        try {
          await (await this.runtime.get(id)).remove({ force: true });
        } catch (e) {
          if (!isRoostError(e, 'NOT_FOUND')) process.stderr.write(`roost mcp: could not remove sandbox ${id} of session ${this.id}: ${(e as Error).message}\n`);
        }
        this.#owned.delete(id);
      }),
    );
  }
}
