import type { ActorMessageRecord } from '@roost/api';

/** Up to `limit` history records of the actor after `after`, oldest first. */
export type HistoryPage = (after: number, limit: number) => ActorMessageRecord[];

const PAGE = 500;
/** Records a following reader may fall behind by; past it the oldest are dropped (the history keeps them). */
const MAX_BEHIND = 10_000;

/**
 * A following stream of an actor's handled messages: every history record
 * after `after` (read page by page), then each record as its batch commits,
 * until the signal aborts or the actor is removed (a null record).
 */
export class MessageStream implements AsyncIterable<ActorMessageRecord> {
  static async *of(records: ActorMessageRecord[]): AsyncGenerator<ActorMessageRecord> {
    yield* records;
  }

  readonly #page: HistoryPage;
  readonly #followers: Map<string, Set<(r: ActorMessageRecord | null) => void>>;
  readonly #actor: string;
  readonly #signal: AbortSignal | undefined;
  #lastSeq: number;

  constructor(
    page: HistoryPage,
    followers: Map<string, Set<(r: ActorMessageRecord | null) => void>>,
    actor: string,
    signal: AbortSignal | undefined,
    after: number,
  ) {
    this.#page = page;
    this.#followers = followers;
    this.#actor = actor;
    this.#signal = signal;
    this.#lastSeq = after;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ActorMessageRecord> {
    // The backlog first, page by page, before listening (so live records cannot jump ahead of it).
    for (;;) {
      const page = this.#page(this.#lastSeq, PAGE);
      if (page.length === 0) break;
      for (const r of page) {
        if (this.#signal?.aborted) return;
        this.#lastSeq = r.seq;
        yield r;
      }
    }
    const queue: Array<ActorMessageRecord | null> = [];
    let wake: (() => void) | null = null;
    const push = (r: ActorMessageRecord | null): void => {
      if (queue.length >= MAX_BEHIND) queue.shift();
      queue.push(r);
      wake?.();
    };
    let set = this.#followers.get(this.#actor);
    if (!set) this.#followers.set(this.#actor, (set = new Set()));
    set.add(push);
    // What committed between the last page and listening: read in the same turn as the listener was added.
    queue.push(...this.#page(this.#lastSeq, MAX_BEHIND));
    const onAbort = () => wake?.();
    this.#signal?.addEventListener('abort', onAbort);
    try {
      for (;;) {
        while (queue.length > 0) {
          const r = queue.shift()!;
          if (r === null) return;
          if (r.seq <= this.#lastSeq) continue;
          this.#lastSeq = r.seq;
          yield r;
          if (this.#signal?.aborted) return;
        }
        if (this.#signal?.aborted) return;
        // A follower keeps its process alive while it waits, as an open stream does.
        const keepAlive = setInterval(() => {}, 60_000);
        try {
          await new Promise<void>((r) => (wake = r));
        } finally {
          clearInterval(keepAlive);
          wake = null;
        }
      }
    } finally {
      set.delete(push);
      if (set.size === 0 && this.#followers.get(this.#actor) === set) this.#followers.delete(this.#actor);
      this.#signal?.removeEventListener('abort', onAbort);
    }
  }
}
