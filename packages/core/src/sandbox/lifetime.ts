/**
 * The ends of sandboxes' lifetimes (`expiresAt` of their records): one
 * timer, for the soonest, calls `expire(id)` when a sandbox's time has come.
 * The runtime that owns the home keeps it: set at creation, by
 * `setLifetime` and at recovery (an end passed while no runtime was open
 * fires at once). Single-threaded (the event loop); `expire` may take its time.
 */
export class Lifetimes {
  readonly #due = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(private readonly expire: (id: string) => Promise<void>) {}

  /** Sandbox `id` ends at `expiresAt` (ISO 8601), or never (null, undefined). */
  set(id: string, expiresAt: string | null | undefined): void {
    const at = expiresAt ? Date.parse(expiresAt) : NaN;
    if (Number.isFinite(at)) this.#due.set(id, at);
    else this.#due.delete(id);
    this.#arm();
  }

  /** Sandbox `id` is gone. */
  delete(id: string): void {
    if (this.#due.delete(id)) this.#arm();
  }

  /** When sandbox `id` ends (ms since the epoch), if it does. */
  dueAt(id: string): number | undefined {
    return this.#due.get(id);
  }

  /** No timer fires after this. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#due.clear();
  }

  #arm(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#closed || this.#due.size === 0) return;
    const next = Math.min(...this.#due.values());
    // setTimeout's longest wait is 2^31-1 ms (about 24.8 days): a later end re-arms then.
    const wait = Math.min(Math.max(0, next - Date.now()), 2 ** 31 - 1);
    this.#timer = setTimeout(() => this.#fire(), wait);
    // A lifetime alone does not keep a process alive (an embedded runtime's owner may exit; the next open acts).
    this.#timer.unref();
  }

  #fire(): void {
    const now = Date.now();
    for (const [id, at] of [...this.#due]) {
      if (at > now) continue;
      this.#due.delete(id);
      void this.expire(id).catch((e: unknown) =>
        process.stderr.write(`roost: ending sandbox ${id} at the end of its lifetime failed: ${(e as Error).message}\n`),
      );
    }
    this.#arm();
  }
}
