import {
  CreatePoolRequestSchema,
  MAX_POOL_SIZE,
  parseInput,
  POOL_LABEL,
  ResizePoolRequestSchema,
  type CreatePoolRequest,
  type PoolError,
  type PoolInfo,
  type PoolsApi,
  type SandboxPoolOrigin,
  type SandboxStatus,
} from '@roost/api';
import { setMaxListeners } from 'node:events';
import type Database from 'better-sqlite3';
import { abortError, RoostError } from '../errors.js';
import type { HandOver } from '../sandbox/handover.js';
import type { SandboxOptions } from '../sandbox/plan.js';
import type { EventLog } from '../state/events.js';
import { PoolStore, type PoolRecord } from './store.js';
import { ReconcileQueue } from '../reconcile-queue.js';

/** What pools use of a sandbox (a `Sandbox`): its state, and the calls that make, park and hand over members. */
export interface PoolMember {
  readonly id: string;
  readonly status: SandboxStatus;
  /** Its VM's pid while one runs. */
  readonly vmPid: number | null;
  /** The pool it is a member of (its `roost.pool` label). */
  readonly _poolName: string | undefined;
  readonly commands: { run(cmd: string, options: { args?: string[]; timeoutMs: number; signal?: AbortSignal }): Promise<{ exitCode: number }> };
  pause(): Promise<void>;
  remove(options: { force: boolean }): Promise<void>;
  _handOver(h: HandOver): Promise<void>;
  _markPool(origin: SandboxPoolOrigin): void;
}

/** What pools use of the runtime that owns the home. */
export interface PoolHost<S extends PoolMember> {
  /** Creates a sandbox through the runtime (its limits and tracking), without the checks of the public create (members carry the reserved label). */
  create(options: SandboxOptions): Promise<S>;
  /** Every sandbox the runtime has. */
  sandboxes(): Iterable<S>;
  /** The snapshot a name or id means (NOT_FOUND when there is none). */
  snapshot(nameOrId: string): { id: string; name: string };
  /** The name of a snapshot id, while it exists. */
  snapshotName(id: string): string | undefined;
  /** Resolves when the template is defined, NOT_FOUND otherwise. */
  template(name: string): Promise<unknown>;
}

/** The options of `create({ pool })` a hand-over honours (checkPoolCreateOptions refused the others). */
export interface TakeOptions {
  labels?: Record<string, string> | undefined;
  env?: Record<string, string> | undefined;
  detached?: boolean | undefined;
  autoRemove?: boolean | undefined;
  lifetimeMs?: number | undefined;
  onExpiry?: HandOver['onExpiry'];
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

/** How long one member's restore may take (a template's first build included). */
const RESTORE_TIMEOUT_MS = 120_000;
/** How long a member's agent may take to answer the new session of a hand-over (default; `timeoutMs` of the create overrides it). */
const HANDOVER_TIMEOUT_MS = 5_000;
/**
 * How long after a hand-over its refill starts: the restore would otherwise
 * compete for the CPU with the new sandbox's first commands (measured here,
 * 2 cores under TCG: the first `run('true')` after a hand-over took 23 ms
 * with the refill at once, 11 ms without). Hand-overs meanwhile share one refill.
 */
const REFILL_DELAY_MS = 200;
/**
 * Restores one reconcile starts at once; a bigger deficit is made up by the
 * next reconcile, at once. Keeps a large pool's first fill under the
 * runtime's `maxConcurrentCreates` (16 by default), and its CPU use in bursts
 * a small host absorbs.
 */
const PARALLEL_RESTORES = 4;
/** How long a new member's warm-up command may take. */
const WARM_UP_TIMEOUT_MS = 30_000;
/** The first retry after a failed refill, doubled with each failure in a row up to RETRY_MAX_MS. */
const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 60_000;

/** What this runtime knows of one pool beyond its row. */
interface PoolState {
  /** Restores in flight. */
  starting: number;
  /** Members being handed over, paused or retired: never handed over (again). */
  readonly claimed: Set<string>;
  /** Its reconciles, one at a time; refills that failed in a row, and the retry after them. */
  readonly queue: ReconcileQueue;
  /** Aborts the restores of this pool (its removal, the runtime closing). */
  readonly abort: AbortController;
  /** The refill a hand-over asked for, due after REFILL_DELAY_MS. */
  later: NodeJS.Timeout | null;
  removed: boolean;
}

/**
 * Warm pools: each keeps `size` sandboxes restored from a template or a
 * snapshot, paused (an idle guest under TCG costs CPU; resuming one takes
 * about 2 ms), and hands one over to `create({ pool })`. Members are
 * detached sandboxes labelled `roost.pool=<name>`: they outlive the runtime,
 * and the next one to open the home adopts them and tops the pool up.
 *
 * This runtime refills in the background once `start()` is called (after
 * recovery): shortly after a hand-over (REFILL_DELAY_MS), when a member dies
 * or is removed, and on `create` and `resize`. Refills of one pool are
 * serialized (a reconcile at a time, at most PARALLEL_RESTORES restores in
 * parallel), never exceed `maxSize` members, and back off after failures
 * (recorded in the pool's `lastError`).
 * Hand-overs are synchronous claims: two creates never get one member.
 */
export class Pools<S extends PoolMember> implements PoolsApi {
  readonly #store: PoolStore;
  readonly #host: PoolHost<S>;
  readonly #states = new Map<string, PoolState>();
  /** Member id -> its pool: whose exit or removal wakes which pool. */
  readonly #known = new Map<string, string>();
  #refilling = false;
  #closed = false;

  constructor(db: Database.Database, events: EventLog, host: PoolHost<S>) {
    this.#store = new PoolStore(db, events);
    this.#host = host;
  }

  /** Starts refilling (the runtime calls it once recovery is done): members of pools that no longer exist go, every pool is topped up. */
  start(): void {
    this.#refilling = true;
    const names = new Set(this.#store.all().map((p) => p.name));
    for (const s of this.#host.sandboxes()) {
      const pool = s._poolName;
      if (pool !== undefined && !names.has(pool)) names.add(pool);
    }
    for (const name of names) this.#kick(name);
  }

  /** Defines a pool (NOT_FOUND for an unknown template or snapshot, ALREADY_EXISTS for a taken name) and starts filling it. */
  async create(request: CreatePoolRequest): Promise<PoolInfo> {
    this.#checkOpen();
    const req = parseInput(CreatePoolRequestSchema, request, 'pool');
    let snapshotId: string | null = null;
    if (req.template !== undefined) await this.#host.template(req.template);
    else snapshotId = this.#host.snapshot(req.snapshot!).id;
    this.#store.insert({
      name: req.name,
      template: req.template ?? null,
      snapshotId,
      size: req.size,
      maxSize: req.maxSize ?? MAX_POOL_SIZE,
      createdAt: new Date().toISOString(),
    });
    this.#kick(req.name);
    return this.get(req.name);
  }

  async list(): Promise<PoolInfo[]> {
    return this.#store.all().map((r) => this.#info(r));
  }

  async get(name: string): Promise<PoolInfo> {
    return this.#info(this.#record(name));
  }

  /** Sets the pool's size (INVALID_ARGUMENT above its maxSize); extra members go and missing ones are restored in the background, at once even after failures. */
  async resize(name: string, size: number): Promise<PoolInfo> {
    this.#checkOpen();
    const req = parseInput(ResizePoolRequestSchema, { size }, 'pool size');
    const rec = this.#record(name);
    if (req.size > rec.maxSize) {
      throw new RoostError('INVALID_ARGUMENT', `size: ${req.size} is above the maxSize of pool ${name} (${rec.maxSize})`, { details: { field: 'size' } });
    }
    if (!this.#store.setSize(name, req.size)) throw notFound(name);
    const st = this.#states.get(name);
    st?.queue.cancelRetry();
    this.#kick(name);
    return this.get(name);
  }

  /** Removes the pool: its row first (nothing refills it after), then its restores are aborted and its members removed. */
  async remove(name: string): Promise<void> {
    this.#checkOpen();
    this.#record(name);
    const st = this.#state(name);
    st.removed = true;
    st.abort.abort(new RoostError('ABORTED', `pool ${name} is being removed`));
    st.queue.cancelRetry();
    if (st.later) clearTimeout(st.later);
    this.#store.delete(name);
    await st.queue.settled();
    // Members being handed over are left to their hand-over (which removes one that fails).
    await this.#removeMembers(name, () => true);
    if (this.#states.get(name) === st) this.#states.delete(name);
  }

  /**
   * @internal `create({ pool })`: a ready member handed over, else (the pool
   * is empty, or every member failed its hand-over and was removed) a
   * restore from the pool's source. Either way `info.pool` says which, and
   * the pool is refilled in the background.
   */
  async _take(name: string, options: TakeOptions): Promise<S> {
    const rec = this.#record(name);
    const st = this.#state(name);
    const h: HandOver = {
      pool: name,
      labels: options.labels ?? {},
      env: options.env ?? {},
      detached: options.detached ?? false,
      autoRemove: options.autoRemove ?? false,
      lifetimeMs: options.lifetimeMs,
      onExpiry: options.onExpiry,
      timeoutMs: options.timeoutMs ?? HANDOVER_TIMEOUT_MS,
    };
    for (let member = this.#ready(name, st)[0]; member; member = this.#ready(name, st)[0]) {
      if (options.signal?.aborted) throw abortError(options.signal, 'the hand-over');
      // Claimed before the first await: no other create can pick it.
      st.claimed.add(member.id);
      this.#known.delete(member.id);
      try {
        await member._handOver(h);
        this.#store.counted(name, true);
        return member;
      } catch {
        // A member that cannot be handed over (its VM died, its agent does not answer) is replaced.
        await member.remove({ force: true }).catch(() => {});
      } finally {
        st.claimed.delete(member.id);
        this.#kickLater(name, st);
      }
    }
    const { labels, env, detached, autoRemove, lifetimeMs, onExpiry, timeoutMs, signal } = options;
    const sb = await this.#host.create({
      ...source(rec),
      ...(labels ? { labels } : {}),
      ...(env ? { env } : {}),
      ...(detached !== undefined ? { detached } : {}),
      ...(autoRemove !== undefined ? { autoRemove } : {}),
      ...(lifetimeMs !== undefined ? { lifetimeMs } : {}),
      ...(onExpiry !== undefined ? { onExpiry } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(signal ? { signal } : {}),
    });
    sb._markPool({ name, warm: false });
    this.#store.counted(name, false);
    this.#kickLater(name, st);
    return sb;
  }

  /** @internal A sandbox's VM is gone, or the sandbox removed: if it was a member, its pool is refilled. */
  _gone(id: string): void {
    const pool = this.#known.get(id);
    if (pool === undefined) return;
    this.#known.delete(id);
    this.#kick(pool);
  }

  /**
   * Stops refilling: timers cleared, restores in flight aborted and waited
   * for, and members they left failed removed. Ready members stay (they are
   * detached): the next runtime to open the home adopts them.
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const st of this.#states.values()) {
      st.queue.cancelRetry();
      if (st.later) clearTimeout(st.later);
      st.later = null;
      st.abort.abort(new RoostError('UNAVAILABLE', 'the runtime is closing'));
    }
    await Promise.allSettled([...this.#states.values()].map((st) => st.queue.settled()));
    await this.#removeMembers(null, (s) => s.status === 'failed' || s.status === 'stopped');
  }

  // ---- internals -------------------------------------------------------------

  #checkOpen(): void {
    if (this.#closed) throw new RoostError('UNAVAILABLE', 'the runtime is closed');
  }

  #record(name: string): PoolRecord {
    const rec = this.#store.get(name);
    if (!rec) throw notFound(name);
    return rec;
  }

  #state(name: string): PoolState {
    let st = this.#states.get(name);
    if (!st) {
      const abort = new AbortController();
      // Every restore of the pool listens to it: as many as maxSize at once.
      setMaxListeners(0, abort.signal);
      const state: PoolState = {
        starting: 0,
        claimed: new Set(),
        // A retry's pass checks what a kick would (refills off, the runtime closing).
        queue: new ReconcileQueue(
          () => (this.#refilling && !this.#closed ? this.#reconcile(name, state) : Promise.resolve()),
          () => {},
          { baseMs: RETRY_BASE_MS, maxMs: RETRY_MAX_MS },
        ),
        abort,
        later: null,
        removed: false,
      };
      st = state;
      this.#states.set(name, st);
    }
    return st;
  }

  /** The members of a pool (any status, claimed ones included). */
  #members(name: string): S[] {
    return [...this.#host.sandboxes()].filter((s) => s._poolName === name);
  }

  /** Members ready to be handed over: paused, with a VM, not claimed. */
  #ready(name: string, st: PoolState | undefined): S[] {
    return this.#members(name).filter((s) => s.status === 'paused' && s.vmPid !== null && !st?.claimed.has(s.id));
  }

  #info(rec: PoolRecord): PoolInfo {
    const st = this.#states.get(rec.name);
    const ready = this.#ready(rec.name, st);
    const snapshot = rec.snapshotId === null ? undefined : (this.#host.snapshotName(rec.snapshotId) ?? rec.snapshotId);
    return {
      name: rec.name,
      ...(rec.template !== null ? { template: rec.template } : {}),
      ...(snapshot !== undefined ? { snapshot } : {}),
      size: rec.size,
      maxSize: rec.maxSize,
      ready: ready.length,
      starting: st?.starting ?? 0,
      handedOver: rec.handedOver,
      fallbacks: rec.fallbacks,
      createdAt: rec.createdAt,
      members: ready.map((s) => s.id),
      lastError: rec.lastError,
    };
  }

  /** A reconcile after REFILL_DELAY_MS (one for every hand-over meanwhile). */
  #kickLater(name: string, st: PoolState): void {
    if (st.later || !this.#refilling || this.#closed) return;
    st.later = setTimeout(() => {
      st.later = null;
      this.#kick(name);
    }, REFILL_DELAY_MS);
    st.later.unref();
  }

  /** Queues a reconcile of the pool behind the one running (at most one waits). Nothing while refills are off or the runtime closes. */
  #kick(name: string): void {
    if (!this.#refilling || this.#closed) return;
    const st = this.#state(name);
    if (!st.removed) st.queue.kick();
  }

  /**
   * Makes the pool's members match its row: dead members removed, running
   * ones paused, extra ones removed, missing ones restored (unless backing
   * off). Members of a pool that no longer exists are removed. Serialized
   * per pool by #kick.
   */
  async #reconcile(name: string, st: PoolState): Promise<void> {
    const rec = this.#store.get(name);
    if (!rec || st.removed) {
      if (st.removed) return;
      // Members of a pool that no longer exists (removed by a runtime that died half-way, or a doctor's rebuild).
      await this.#removeMembers(name, () => true);
      if (this.#states.get(name) === st && !st.queue.queued) this.#states.delete(name);
      return;
    }
    const members = this.#members(name);
    for (const s of members) this.#known.set(s.id, name);
    await this.#removeMembers(name, (s) => s.status === 'failed' || s.status === 'stopped');
    // A member left running (its runtime died between its restore and its pause) is paused.
    for (const s of members.filter((m) => m.status === 'running' && !st.claimed.has(m.id))) await this.#park(s, st).catch(() => {});
    const target = Math.min(rec.size, rec.maxSize);
    const ready = this.#ready(name, st);
    if (ready.length > target) {
      // The oldest go first (members() is in the runtime's order: oldest first).
      const extra = ready.slice(0, ready.length - target);
      for (const s of extra) st.claimed.add(s.id);
      await Promise.allSettled(extra.map((s) => s.remove({ force: true }).finally(() => st.claimed.delete(s.id))));
      return;
    }
    const holding = this.#members(name).filter((s) => s.status === 'running' || s.status === 'paused' || s.status === 'stopping').length;
    const wanted = Math.min(target - ready.length, rec.maxSize - holding, PARALLEL_RESTORES);
    if (wanted <= 0 || st.queue.retrying || this.#closed) return;
    const results = await Promise.allSettled(Array.from({ length: wanted }, () => this.#restore(rec, st)));
    if (st.removed || this.#closed) return;
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // What a failed restore left (a VM that failed to resume is kept failed, with its logs) goes.
      await this.#removeMembers(name, (s) => s.status === 'failed' || s.status === 'stopped');
      this.#failed(name, st, failed.reason);
      return;
    }
    if (st.queue.failures > 0) {
      st.queue.succeeded();
      this.#store.setError(name, null);
    }
    // Hand-overs (or a resize) while this ran may want more.
    if (this.#ready(name, st).length < Math.min(this.#store.get(name)?.size ?? 0, rec.maxSize)) this.#kick(name);
  }

  /** Restores one member and pauses it. */
  async #restore(rec: PoolRecord, st: PoolState): Promise<void> {
    st.starting++;
    try {
      const sb = await this.#host.create({
        ...source(rec),
        detached: true,
        labels: { [POOL_LABEL]: rec.name },
        timeoutMs: RESTORE_TIMEOUT_MS,
        signal: st.abort.signal,
      });
      this.#known.set(sb.id, rec.name);
      await this.#warmUp(sb, st.abort.signal);
      await this.#park(sb, st);
    } finally {
      st.starting--;
    }
  }

  /**
   * Runs `true` in a new member before it is parked, through /bin/sh and
   * as argv: the first command after a restore pays for what the snapshot
   * does not carry (under TCG, translating the guest's exec path again:
   * about 100 ms here; a path not warmed costs about 20 ms more on the first
   * command after the hand-over), so a handed-over sandbox's first command
   * does not. A member whose warm-up fails is removed.
   */
  async #warmUp(s: S, signal: AbortSignal): Promise<void> {
    try {
      // Both ways a command runs: through /bin/sh, and as argv.
      for (const args of [undefined, []]) {
        const r = await s.commands.run('true', { ...(args ? { args } : {}), timeoutMs: WARM_UP_TIMEOUT_MS, signal });
        if (r.exitCode !== 0) throw new RoostError('AGENT', `the warm-up command of a pool member exited with ${r.exitCode}`);
      }
    } catch (e) {
      await s.remove({ force: true }).catch(() => {});
      throw e;
    }
  }

  /** Pauses a member (claimed meanwhile, so no hand-over races the pause); one that cannot be paused is removed. */
  async #park(s: S, st: PoolState): Promise<void> {
    st.claimed.add(s.id);
    try {
      await s.pause();
    } catch (e) {
      await s.remove({ force: true }).catch(() => {});
      throw e;
    } finally {
      st.claimed.delete(s.id);
    }
  }

  /** A refill failed: recorded in the pool's `lastError`, and retried after a back-off that doubles with each failure in a row. */
  #failed(name: string, st: PoolState, reason: unknown): void {
    const delay = st.queue.backOff();
    const error: PoolError = {
      code: reason instanceof RoostError ? reason.code : 'INTERNAL',
      message: reason instanceof Error ? (reason.message.split('\n')[0] ?? reason.message) : String(reason),
      at: new Date().toISOString(),
      failures: st.queue.failures,
      retryAt: new Date(Date.now() + delay).toISOString(),
    };
    this.#store.setError(name, error);
    st.queue.retryIn(delay);
  }

  /** Removes the members of pool `name` (null: of any pool) that `which` picks and no hand-over holds. */
  async #removeMembers(name: string | null, which: (s: S) => boolean): Promise<void> {
    const doomed = [...this.#host.sandboxes()].filter((s) => {
      const pool = s._poolName;
      if (pool === undefined || (name !== null && pool !== name)) return false;
      return !this.#states.get(pool)?.claimed.has(s.id) && which(s);
    });
    await Promise.allSettled(doomed.map((s) => s.remove({ force: true })));
  }
}

/** The create options that restore a pool's source. */
function source(rec: PoolRecord): { template: string } | { snapshot: string } {
  return rec.template !== null ? { template: rec.template } : { snapshot: rec.snapshotId! };
}

function notFound(name: string): RoostError {
  return new RoostError('NOT_FOUND', `no pool ${name} (see \`roost pool ls\`)`, { details: { pool: name } });
}
