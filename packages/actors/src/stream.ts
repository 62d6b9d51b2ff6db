import type { ActorMessageRecord } from '@roost/api';

/**
 * A following stream of an actor's handled messages: the history read at
 * the start, then each record as its batch commits, until the signal aborts
 * or the actor is removed (a null record). Records are buffered between
 * reads, bounded: a reader that falls 10,000 records behind loses the
 * oldest (the history keeps them).
 */
export class MessageStream implements AsyncIterable<ActorMessageRecord> {
  static async *of(records: ActorMessageRecord[]): AsyncGenerator<ActorMessageRecord> {
    yield* records;
  }

  readonly #queue: Array<ActorMessageRecord | null>;
  readonly #followers: Map<string, Set<(r: ActorMessageRecord) => void>>;
  readonly #actor: string;
  readonly #signal: AbortSignal | undefined;
  #lastSeq: number;
  #wake: (() => void) | null = null;

  constructor(
    past: ActorMessageRecord[],
    followers: Map<string, Set<(r: ActorMessageRecord) => void>>,
    actor: string,
    signal: AbortSignal | undefined,
    lastSeq: number,
  ) {
    this.#queue = [...past];
    this.#followers = followers;
    this.#actor = actor;
    this.#signal = signal;
    this.#lastSeq = lastSeq;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ActorMessageRecord> {
    const push = (r: ActorMessageRecord | null): void => {
      if (r !== null && r.seq <= this.#lastSeq) return;
      if (this.#queue.length >= 10_000) this.#queue.shift();
      this.#queue.push(r);
      this.#wake?.();
    };
    let set = this.#followers.get(this.#actor);
    if (!set) this.#followers.set(this.#actor, (set = new Set()));
    set.add(push);
    const onAbort = () => this.#wake?.();
    this.#signal?.addEventListener('abort', onAbort);
    try {
      for (;;) {
        while (this.#queue.length > 0) {
          const r = this.#queue.shift()!;
          if (r === null) return;
          this.#lastSeq = Math.max(this.#lastSeq, r.seq);
          yield r;
        }
        if (this.#signal?.aborted) return;
        // A follower keeps its process alive while it waits, as an open stream does.
        const keepAlive = setInterval(() => {}, 60_000);
        try {
          await new Promise<void>((r) => (this.#wake = r));
        } finally {
          clearInterval(keepAlive);
        }
        this.#wake = null;
      }
    } finally {
      set.delete(push);
      if (set.size === 0 && this.#followers.get(this.#actor) === set) this.#followers.delete(this.#actor);
      this.#signal?.removeEventListener('abort', onAbort);
    }
  }
}
