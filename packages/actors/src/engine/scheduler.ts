import type Database from 'better-sqlite3';
import { RoostError, type ActorMessageRecord } from '@roost/api';
import type { SqliteNodes } from '../state/index.js';
import { insertActor } from '../store/insert.js';
import { actorFromRaw, historyRecord, type ActorRow, type HistoryRaw, type Statements } from '../store/rows.js';
import { failureOutcome, type ActorSnapshot, type BatchDone, type BatchMessage, type FailureReason, type MessageOutcome, type RunBatch } from './protocol.js';
import { BatchAborted, type WorkerPool } from './workers.js';

/*
 * The main thread's side of running actors: which actors have messages
 * due, a batch of one actor's messages to a free worker thread at a time,
 * and the commit of each batch's outcomes in one SQLite transaction (the
 * handled messages leave the mailbox in the same transaction that stores
 * their effects: exactly once, across crashes). Timers are mailbox rows
 * with a due time.
 */

/** Messages of one actor run per batch. */
const BATCH = 64;
/** Actors kept loaded in memory; past it, idle ones are forgotten. */
const MAX_LOADED = 4096;
/** Handled messages kept in an actor's history. */
export const HISTORY_KEPT = 1000;
const REPLY_KEPT = 4096;

/** An actor the main thread has loaded: its committed row and what is in flight. */
export interface LiveActor {
  row: ActorRow;
  /** Messages in its mailbox (committed). */
  waiting: number;
  maxRef: number;
  unpinnedVersions: number;
  running: boolean;
  queued: boolean;
  removed: boolean;
  /** Resolvers waiting for it to be idle (removal). */
  idle: Array<() => void>;
}

export interface Waiter {
  resolve(outcome: MessageOutcome, version: number): void;
  reject(err: Error): void;
}

export type ActorEvent = 'actor.created' | 'actor.trapped' | 'actor.removed';

export interface SchedulerHooks {
  event(type: ActorEvent, data: Record<string, unknown>): void;
  /** Removes an actor inside the caller's transaction (a failed init). */
  removeInTx(live: LiveActor): void;
  /** After the removal committed. */
  removed(live: LiveActor): void;
}

export class Scheduler {
  readonly #db: Database.Database;
  readonly #q: Statements;
  readonly #nodes: SqliteNodes;
  readonly #pool: WorkerPool;
  readonly #hooks: SchedulerHooks;
  readonly actors = new Map<string, LiveActor>();
  readonly waiters = new Map<number, Waiter>();
  readonly followers = new Map<string, Set<(r: ActorMessageRecord | null) => void>>();
  readonly #ready: string[] = [];
  #batchId = 0;
  #timer: NodeJS.Timeout | null = null;
  #timerAt = Infinity;
  #closed = false;
  #inFlight = new Set<Promise<void>>();
  /** Trapped events per actor in the current second (bounded: a flood of failing messages is not a flood of events). */
  #trapEvents = new Map<string, { second: number; count: number }>();

  constructor(db: Database.Database, q: Statements, nodes: SqliteNodes, pool: WorkerPool, hooks: SchedulerHooks) {
    this.#db = db;
    this.#q = q;
    this.#nodes = nodes;
    this.#pool = pool;
    this.#hooks = hooks;
  }

  /** The actor loaded (from the database on first use), or undefined. */
  live(id: string): LiveActor | undefined {
    let live = this.actors.get(id);
    if (!live) {
      const raw = this.#q.actorGet.get(id) as Parameters<typeof actorFromRaw>[0] | undefined;
      if (!raw) return undefined;
      live = {
        row: actorFromRaw(raw),
        waiting: this.#q.mailCount.get(id) as number,
        maxRef: (this.#q.refMax.get(id) as number | null) ?? 0,
        unpinnedVersions: this.#q.versionsUnpinned.get(id) as number,
        running: false,
        queued: false,
        removed: false,
        idle: [],
      };
      this.actors.set(id, live);
      if (this.actors.size > MAX_LOADED) this.#evictIdle();
    }
    return live;
  }

  /** Forgets loaded actors with nothing to do (they load again from their row when needed): an idle actor costs its row only. */
  #evictIdle(): void {
    for (const [id, l] of this.actors) {
      if (this.actors.size <= MAX_LOADED / 2) break;
      if (l.running || l.queued || l.waiting > 0 || l.idle.length > 0 || this.followers.has(id)) continue;
      this.actors.delete(id);
    }
  }

  /** Queues every actor with messages due now and arms the timer for the next one (at open, and when a timer fires). */
  scanDue(): void {
    const now = Date.now();
    for (const id of this.#q.mailDue.all(now) as string[]) this.markReady(id);
    this.#armTimer(now);
  }

  /** A message for `id` may be due: queue it (once) and run what can run. */
  markReady(id: string): void {
    const live = this.live(id);
    if (!live || live.removed || live.queued || live.running) return;
    live.queued = true;
    this.#ready.push(id);
    this.pump();
  }

  /** A timer row was added due at `at`. */
  timerAdded(at: number): void {
    if (at < this.#timerAt) this.#armTimer(Date.now(), at);
  }

  #armTimer(now: number, at = (this.#q.mailNextDue.get(now) as number | null) ?? Infinity): void {
    if (this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#timerAt = at;
    if (at === Infinity) return;
    this.#timer = setTimeout(() => this.scanDue(), Math.min(Math.max(0, at - now), 2 ** 31 - 1));
    this.#timer.unref();
  }

  /** Runs batches while a thread is free and an actor is ready. */
  pump(): void {
    while (!this.#closed && this.#ready.length > 0 && this.#pool.idle() > 0) {
      const id = this.#ready.shift()!;
      const live = this.actors.get(id);
      if (!live) continue;
      live.queued = false;
      if (live.removed || live.running) continue;
      const batch = this.#batchFor(live, snapshotOf(live), new Set());
      if (!batch) continue;
      live.running = true;
      const p = this.#runBatches(live, batch).finally(() => this.#inFlight.delete(p));
      this.#inFlight.add(p);
    }
  }

  /** The next messages due for `live`, leaving out those already running; null when none. */
  #batchFor(live: LiveActor, actor: ActorSnapshot, running: ReadonlySet<number>): RunBatch | null {
    const rows = this.#q.mailBatch.all(live.row.id, Date.now(), BATCH + running.size) as Array<Omit<BatchMessage, 'reply'> & { reply: number }>;
    const messages = rows
      .filter((r) => !running.has(r.seq))
      .slice(0, BATCH)
      .map((r) => ({ ...r, reply: r.reply === 1 }));
    if (messages.length === 0) return null;
    return { type: 'run', batch: ++this.#batchId, actor, messages };
  }

  /**
   * Runs an actor's batches one after another, pipelined: when a batch's
   * outcomes come back, the next batch starts on the same thread from the
   * state they leave (the thread still holds its nodes) while the main
   * thread commits them. If that commit fails, the next batch's outcomes,
   * built on it, are dropped and its messages run again later.
   */
  async #runBatches(live: LiveActor, first: RunBatch): Promise<void> {
    let current: RunBatch | null = first;
    let running: Promise<{ done: BatchDone; slot: unknown }> = this.#pool.run(first);
    let poisoned = false;
    try {
      while (current) {
        let result: { done: BatchDone; slot: unknown };
        try {
          result = await running;
        } catch (e) {
          // Not an abort: a bug; the batch's messages stay in the mailbox and run again.
          if (!(e instanceof BatchAborted)) return;
          // The messages before the one that failed ran but committed nothing: they run again.
          const msg = current.messages.find((m) => m.seq === e.seq);
          if (msg && !this.#closed && !poisoned && !live.removed) {
            try {
              this.#commit(live, current, [this.#failure(live, msg, e.reason, e.message)]);
            } catch {
              // Not stored (a full disk): the message stays in the mailbox and runs again later.
              poisoned = true;
              setTimeout(() => this.markReady(live.row.id), 1000).unref();
            }
          }
          return;
        }
        // Closing: what ran is still committed (the database closes after), but nothing new starts.
        if (poisoned || live.removed) return;
        const outcomes = result.done.outcomes;
        const failedInit = outcomes.some((o) => !o.ok && current!.messages.find((m) => m.seq === o.seq)?.kind === 'init');
        // Pipelined only while no other actor waits for a thread: else this one queues again behind them.
        const next: RunBatch | null =
          failedInit || this.#closed || this.#ready.length > 0
            ? null
            : this.#batchFor(live, afterBatch(current.actor, outcomes), new Set(current.messages.map((m) => m.seq)));
        if (next) running = this.#pool.run(next, result.slot);
        try {
          this.#commit(live, current, outcomes);
        } catch (e) {
          // A commit that failed (a full disk): nothing of the batch is stored; try again later.
          poisoned = true;
          const err = e instanceof Error ? e : new Error(String(e));
          live.row.lastError = { code: 'INTERNAL', reason: 'crashed', message: `commit failed: ${err.message}`, at: new Date().toISOString() };
          if (next) await running.catch(() => {});
          setTimeout(() => this.markReady(live.row.id), 1000).unref();
          return;
        }
        current = next;
      }
    } finally {
      live.running = false;
      if (live.removed || live.idle.length > 0) {
        for (const f of live.idle.splice(0)) f();
      } else if (live.waiting > 0 && !poisoned) {
        this.markReady(live.row.id);
      }
      this.pump();
    }
  }

  #failure(live: LiveActor, msg: BatchMessage, reason: FailureReason, message: string): MessageOutcome {
    // The thread was ended: how much fuel the message used is not known (0).
    return failureOutcome(msg.seq, reason, message, { ticks: 0, clock: Math.max(live.row.clock, msg.time) + 1, nonce: live.row.nonce });
  }

  /** Stores a batch's outcomes in one transaction, then tells the waiters, followers and recipients. */
  #commit(live: LiveActor, batch: RunBatch, outcomes: MessageOutcome[]): void {
    const id = live.row.id;
    const now = new Date();
    const at = now.toISOString();
    const byseq = new Map(batch.messages.map((m) => [m.seq, m]));
    const after: Array<() => void> = [];
    const row = { ...live.row };
    let maxRef = live.maxRef;
    let unpinned = live.unpinnedVersions;
    let removedByInit = false;
    const touched = new Map<string, number>();
    const timersAt: number[] = [];
    const records: ActorMessageRecord[] = [];
    let handledCount = 0;

    this.#db.transaction(() => {
      for (const o of outcomes) {
        const msg = byseq.get(o.seq)!;
        handledCount += 1;
        row.handled += 1;
        row.ticks += o.ticks;
        row.clock = o.clock;
        let version: number | null = null;
        if (o.ok) {
          row.nonce = o.nonce;
          if (o.state) {
            const root = Buffer.from(o.state.root);
            const nodes = o.state.nodes.map(bufferNode);
            row.version += 1;
            row.root = root;
            row.stateEntries = o.state.entries;
            row.stateBytes = o.state.bytes;
            this.#q.versionInsert.run(id, row.version, root, o.seq, at);
            unpinned += 1;
            // The oldest unpinned version goes when there are more than kept: its release and the new
            // root's retain in one pass (what the two share is not counted down and up again).
            const old = unpinned > row.keepVersions ? (this.#q.versionOldest.get(id) as { version: number; root: Buffer } | undefined) : undefined;
            if (old && old.version !== row.version) {
              this.#q.versionDelete.run(id, old.version);
              unpinned -= 1;
              this.#nodes.advance(old.root, root, nodes);
            } else {
              this.#nodes.retain(root, nodes);
            }
          }
          version = row.version;
          for (const r of o.refs) {
            this.#q.refInsert.run(id, r.ref, r.target);
            maxRef = Math.max(maxRef, r.ref);
          }
          for (const c of o.creates) this.#insertChild(row, c, at);
          for (const s of o.sends) {
            this.#q.mailInsert.run(s.target, 'message', id, o.clock, 0, 0, Buffer.from(s.body));
            touched.set(s.target, (touched.get(s.target) ?? 0) + 1);
          }
          for (const c of o.creates) {
            if (c.hasInit) touched.set(c.id, (touched.get(c.id) ?? 0) + 1);
            after.push(() => this.#hooks.event('actor.created', { actor: c.id, parent: id, module: c.module }));
          }
          for (const t of o.timers) {
            const due = now.getTime() + t.delayMs;
            this.#q.mailInsert.run(id, 'timer', '', o.clock, due, 0, Buffer.from(t.body));
            timersAt.push(due);
          }
        } else {
          row.failed += 1;
          row.lastError = { code: 'ACTOR', reason: o.error!.reason, message: o.error!.message, at };
        }
        this.#q.mailDelete.run(o.seq);
        const reply = o.reply ? Buffer.from(o.reply) : null;
        const raw: HistoryRaw = {
          seq: o.seq,
          actor: id,
          kind: msg.kind,
          sender: msg.sender,
          size: msg.body.length,
          ok: o.ok ? 1 : 0,
          error_json: o.ok ? null : JSON.stringify(row.lastError),
          version,
          ticks: o.ticks,
          reply_size: reply ? reply.length : null,
          reply: reply ? reply.subarray(0, REPLY_KEPT) : null,
          logs_json: JSON.stringify(o.logs),
          at,
        };
        this.#q.historyInsert.run(...Object.values(raw));
        records.push(historyRecord(raw));
        const waiter = this.waiters.get(o.seq);
        if (waiter) {
          this.waiters.delete(o.seq);
          const v = row.version;
          after.push(() => (o.ok ? waiter.resolve(o, v) : waiter.reject(actorError(id, o))));
        }
        if (!o.ok) {
          after.push(() => this.#trapped(id, o));
          if (msg.kind === 'init') {
            // A failed init leaves nothing: the actor goes with it.
            removedByInit = true;
            break;
          }
        }
      }
      if (removedByInit) {
        this.#hooks.removeInTx(live);
        return;
      }
      this.#q.actorUpdate.run({
        id,
        version: row.version,
        root: row.root,
        state_entries: row.stateEntries,
        state_bytes: row.stateBytes,
        clock: row.clock,
        nonce: row.nonce,
        handled: row.handled,
        failed: row.failed,
        ticks: row.ticks,
        last_error_json: row.lastError ? JSON.stringify(row.lastError) : null,
      });
      if (row.handled % 100 < handledCount) this.#q.historyPrune.run(id, id, HISTORY_KEPT - 1);
    })();

    if (removedByInit) {
      live.removed = true;
      this.#hooks.removed(live);
    } else {
      live.row = row;
      live.maxRef = maxRef;
      live.unpinnedVersions = unpinned;
      live.waiting -= handledCount;
    }
    for (const f of after) f();
    const follow = this.followers.get(id);
    if (follow) for (const rec of records) for (const f of follow) f(rec);
    for (const [t, n] of touched) {
      // An actor not loaded yet counts its mailbox when it is.
      const target = this.actors.get(t);
      if (target) target.waiting += n;
      this.markReady(t);
    }
    for (const due of timersAt) {
      live.waiting += 1;
      this.timerAdded(due);
    }
  }

  #insertChild(parent: ActorRow, c: MessageOutcome['creates'][number], at: string): void {
    // A child has its parent's grants and limits, a reference to its parent (its ref 1), and starts empty.
    insertActor(
      this.#q,
      this.#nodes,
      {
        id: c.id,
        name: null,
        parent: parent.id,
        module: c.module,
        grants: parent.grants,
        limits: parent.limits,
        keepVersions: parent.keepVersions,
        refs: [parent.id],
        init: c.hasInit ? c.init : null,
      },
      at,
    );
  }

  #trapped(id: string, o: MessageOutcome): void {
    const second = Math.floor(Date.now() / 1000);
    const seen = this.#trapEvents.get(id);
    if (seen && seen.second === second && seen.count >= 10) return;
    if (seen && seen.second === second) seen.count += 1;
    else this.#trapEvents.set(id, { second, count: 1 });
    this.#hooks.event('actor.trapped', { actor: id, seq: o.seq, reason: o.error!.reason, message: o.error!.message });
  }

  /** Resolves when the actor has no batch running. */
  whenIdle(live: LiveActor): Promise<void> {
    if (!live.running) return Promise.resolve();
    return new Promise<void>((r) => live.idle.push(r));
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    await Promise.allSettled([...this.#inFlight]);
  }
}

/** What a worker needs of an actor, from its committed row. */
function snapshotOf(live: LiveActor): ActorSnapshot {
  const r = live.row;
  return {
    id: r.id,
    module: r.module,
    grants: r.grants,
    limits: r.limits,
    root: r.root,
    stateBytes: r.stateBytes,
    stateEntries: r.stateEntries,
    clock: r.clock,
    nonce: r.nonce,
    maxRef: live.maxRef,
  };
}

/** The actor as a batch's outcomes leave it (before they are committed). */
function afterBatch(before: ActorSnapshot, outcomes: MessageOutcome[]): ActorSnapshot {
  const s = { ...before };
  for (const o of outcomes) {
    s.clock = o.clock;
    if (!o.ok) continue;
    s.nonce = o.nonce;
    if (o.state) {
      s.root = o.state.root;
      s.stateBytes = o.state.bytes;
      s.stateEntries = o.state.entries;
    }
    for (const r of o.refs) s.maxRef = Math.max(s.maxRef, r.ref);
  }
  return s;
}

function bufferNode(n: { hash: Uint8Array; body: Uint8Array; children: Uint8Array[] }) {
  return { hash: Buffer.from(n.hash), body: Buffer.from(n.body), children: n.children.map((c) => Buffer.from(c)) };
}

/** The ACTOR error of a failed message. */
export function actorError(actor: string, o: MessageOutcome): RoostError {
  return new RoostError('ACTOR', `actor ${actor}: message ${o.seq} failed (${o.error!.reason}): ${o.error!.message}`, {
    details: { actor, seq: o.seq, reason: o.error!.reason, ticks: o.ticks },
  });
}
