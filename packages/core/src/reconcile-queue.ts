/**
 * The passes of one reconcile loop (a warm pool's, a deployment's),
 * serialized: one pass runs at a time, and kicks while it runs queue at
 * most one more (which sees everything the kicks were about). A pass that
 * rejects goes to `failed`. Failures in a row are counted for a back-off
 * that doubles up to a ceiling, and a retry is one timer at a time.
 */
export class ReconcileQueue {
  #chain: Promise<void> = Promise.resolve();
  #queued = false;
  #retry: NodeJS.Timeout | null = null;
  /** Failures in a row (reset by `succeeded`). */
  failures = 0;

  constructor(
    private readonly pass: () => Promise<void>,
    private readonly failed: (e: unknown) => void = () => {},
    private readonly backoff: { baseMs: number; maxMs: number } = { baseMs: 1_000, maxMs: 60_000 },
  ) {}

  /** A pass waits behind the one running. */
  get queued(): boolean {
    return this.#queued;
  }

  /** A retry is scheduled. */
  get retrying(): boolean {
    return this.#retry !== null;
  }

  /** Queues a pass behind the one running (at most one waits). */
  kick(): void {
    if (this.#queued) return;
    this.#queued = true;
    this.#chain = this.#chain
      .then(() => {
        this.#queued = false;
        return this.pass();
      })
      .catch((e: unknown) => this.failed(e));
  }

  /** Settles once the pass running and the one queued are done. */
  settled(): Promise<void> {
    return this.#chain;
  }

  /** Counts a failure; returns how long to wait before the next attempt. */
  backOff(): number {
    this.failures++;
    return Math.min(this.backoff.maxMs, this.backoff.baseMs * 2 ** (this.failures - 1));
  }

  /** Ends a run of failures. */
  succeeded(): void {
    this.failures = 0;
  }

  /** Kicks a pass after `ms` (one timer at a time: a retry already scheduled stays). */
  retryIn(ms: number): void {
    if (this.#retry) return;
    this.#retry = setTimeout(() => {
      this.#retry = null;
      this.kick();
    }, ms);
    this.#retry.unref();
  }

  /** Drops the scheduled retry, if any. */
  cancelRetry(): void {
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
  }
}
