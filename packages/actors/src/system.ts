import { availableParallelism } from 'node:os';
import {
  ACTOR_LIMIT_DEFAULTS,
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
  RoostError,
  type ActorInfo,
  type ActorMessage,
  type ActorMessageRecord,
  type ActorMessagesOptions,
  type ActorModuleInfo,
  type ActorReply,
  type ActorSendResult,
  type ActorsApi,
  type ActorState,
  type ActorVersion,
  type CreateActorOptions,
  CreateActorRequestSchema,
  diskFullError,
  parseInput,
  utf8OrNull,
} from '@roost/api';
import type Database from 'better-sqlite3';
import { deriveActorId, moduleDigest, ACTOR_ID_RE } from './ids.js';
import { hasGrant } from './engine/message-run.js';
import type { HostCallRequest } from './engine/protocol.js';
import { Scheduler, type ActorEvent, type LiveActor } from './engine/scheduler.js';
import { WorkerPool } from './engine/workers.js';
import { StateTree, stateSize } from './state/index.js';
import { SqliteNodes } from './state/index.js';
import { openActorsDb } from './store/db.js';
import { insertActor } from './store/insert.js';
import { historyRecord, statements, versionFromRaw, type HistoryRaw, type ModuleInfoJson, type Statements } from './store/rows.js';
import { prepareModule } from './wasm/prepare.js';
import { MessageStream } from './stream.js';

/** What actors reach outside themselves, when granted: given by the runtime that hosts them. */
export interface ActorHost {
  /** An HTTP request (the ABI's JSON) through the actor's egress grant; the response JSON. PERMISSION_DENIED when the policy refuses. */
  fetch(actor: { id: string; grants: ActorInfo['grants'] }, request: string): Promise<Uint8Array>;
  /** A command in a granted sandbox (the ABI's JSON); the result JSON. PERMISSION_DENIED for a sandbox not granted. */
  sandboxExec(actor: { id: string; grants: ActorInfo['grants'] }, request: string): Promise<Uint8Array>;
}

export interface ActorSystemOptions {
  /** The database file (`<home>/actors.db`). */
  dbPath: string;
  /** Worker threads (default: the CPUs, at most 4). */
  workers?: number;
  host?: ActorHost;
  /** The runtime's event log. */
  onEvent?: (type: ActorEvent | 'actor.module.deployed', data: Record<string, unknown>) => void;
}

const DEFAULT_KEEP_VERSIONS = 64;
const DEFAULT_CALL_TIMEOUT_MS = 60_000;

interface PendingSend {
  live: LiveActor;
  body: Buffer;
  reply: boolean;
  resolve(seq: number): void;
  reject(e: Error): void;
}

/**
 * The actors of one home (`runtime.actors`): the store, the scheduler and
 * the worker threads. Owned by the runtime that owns the home.
 */
export class ActorSystem implements ActorsApi {
  readonly #db: Database.Database;
  readonly #q: Statements;
  readonly #nodes: SqliteNodes;
  readonly #pool: WorkerPool;
  readonly #sched: Scheduler;
  readonly #options: ActorSystemOptions;
  #pending: PendingSend[] = [];
  /** Messages of #pending per actor (the mailbox limit counts them). */
  readonly #pendingFor = new Map<LiveActor, number>();
  #flushQueued = false;
  #closed = false;

  private constructor(options: ActorSystemOptions) {
    this.#options = options;
    this.#db = openActorsDb(options.dbPath);
    this.#q = statements(this.#db);
    this.#nodes = new SqliteNodes(this.#db);
    this.#pool = new WorkerPool({
      size: options.workers ?? Math.min(4, availableParallelism()),
      dbPath: options.dbPath,
      hostCall: (req) => this.#hostCall(req),
    });
    this.#sched = new Scheduler(this.#db, this.#q, this.#nodes, this.#pool, {
      event: (type, data) => this.#event(type, data),
      removeInTx: (live) => this.#removeRows(live.row.id),
      removed: (live) => this.#forget(live),
    });
  }

  /** Opens the actors' database and starts handling what waits in the mailboxes. */
  static open(options: ActorSystemOptions): ActorSystem {
    const system = new ActorSystem(options);
    system.#sched.scanDue();
    return system;
  }

  async deploy(module: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<ActorModuleInfo> {
    this.#open();
    options.signal?.throwIfAborted();
    if (module.length > MAX_ACTOR_MODULE_BYTES) {
      throw new RoostError('INVALID_ARGUMENT', `the module is ${module.length} bytes, over the limit of ${MAX_ACTOR_MODULE_BYTES}`);
    }
    const prepared = prepareModule(module);
    const digest = moduleDigest(module);
    const info: ModuleInfoJson = {
      imports: prepared.imports.map((i) => `${i.module}.${i.name}`),
      exports: prepared.exports.map((e) => e.name),
      grantsNeeded: prepared.grantsNeeded,
      memory: prepared.memory,
    };
    const added = this.#write(() =>
      this.#q.moduleInsert.run(digest, module.length, Buffer.from(module), Buffer.from(prepared.bytes), JSON.stringify(info), new Date().toISOString()),
    );
    if (added.changes > 0) this.#event('actor.module.deployed', { module: digest, size: module.length });
    return this.#moduleInfo(digest)!;
  }

  async modules(): Promise<ActorModuleInfo[]> {
    this.#open();
    return (this.#q.moduleList.all() as Array<{ digest: string }>).map((r) => this.#moduleInfo(r.digest)!);
  }

  async removeModule(digest: string): Promise<void> {
    this.#open();
    if (!this.#moduleInfo(digest)) throw new RoostError('NOT_FOUND', `no actor module ${digest}`);
    const users = this.#q.moduleUsers.get(digest) as number;
    if (users > 0) throw new RoostError('INVALID_STATE', `module ${digest} is used by ${users} actor${users === 1 ? '' : 's'}: remove them first`);
    this.#write(() => this.#q.moduleDelete.run(digest));
  }

  async create(createOptions: CreateActorOptions & { signal?: AbortSignal }): Promise<ActorInfo> {
    this.#open();
    createOptions.signal?.throwIfAborted();
    // The contract's checks, as the daemon makes them (the init is bytes or text here, checked below).
    const request: Record<string, unknown> = { ...createOptions };
    delete request.signal;
    delete request.init;
    const options = { ...parseInput(CreateActorRequestSchema, request, 'actor options'), init: createOptions.init, signal: createOptions.signal };
    const from = options.from ? this.#resolve(options.from.actor) : undefined;
    const moduleDigestValue = options.module ?? from!.row.module;
    const mod = this.#moduleInfo(moduleDigestValue);
    if (!mod) throw new RoostError('NOT_FOUND', `no actor module ${moduleDigestValue}: deploy it first`, { details: { module: moduleDigestValue } });
    if (options.name !== undefined && this.#q.actorByName.get(options.name)) {
      throw new RoostError('ALREADY_EXISTS', `an actor named ${options.name} exists`, { details: { name: options.name } });
    }
    const grants = options.grants ?? from?.row.grants ?? {};
    const missing = mod.grantsNeeded.filter((g) => !hasGrant(grants, g));
    if (missing.length > 0) {
      throw new RoostError(
        'INVALID_ARGUMENT',
        `module ${mod.digest} imports what needs the grant${missing.length > 1 ? 's' : ''} ${missing.join(', ')}; give it in grants`,
        {
          details: { field: 'grants', missing },
        },
      );
    }
    const limits = { ...ACTOR_LIMIT_DEFAULTS, ...from?.row.limits, ...options.limits };
    limits.memoryBytes = Math.floor(limits.memoryBytes / 65536) * 65536;
    if (mod.memory.initialBytes > limits.memoryBytes) {
      throw new RoostError(
        'INVALID_ARGUMENT',
        `module ${mod.digest} starts with ${mod.memory.initialBytes} bytes of memory, over the limit of ${limits.memoryBytes}`,
        {
          details: { field: 'limits.memoryBytes' },
        },
      );
    }
    const refs = (options.refs ?? (from ? (this.#q.refsOf.all(from.row.id) as Array<{ target: string }>).map((r) => r.target) : [])).map((r) =>
      options.refs ? this.#resolve(r).row.id : r,
    );
    let root: { hash: Buffer; entries: number; bytes: number } | undefined;
    if (from) {
      const v = options.from!.version ?? from.row.version;
      const row = this.#q.versionGet.get(from.row.id, v) as { root: Buffer } | undefined;
      if (!row) throw new RoostError('NOT_FOUND', `actor ${from.row.id} keeps no version ${v} (see its versions)`, { details: { version: v } });
      root = { hash: row.root, ...stateSize(this.#nodes, row.root) };
    }
    const init = options.init === undefined ? new Uint8Array(0) : typeof options.init === 'string' ? Buffer.from(options.init) : options.init;
    if (init.length > MAX_ACTOR_MESSAGE_BYTES) throw new RoostError('INVALID_ARGUMENT', `init is ${init.length} bytes, over ${MAX_ACTOR_MESSAGE_BYTES}`);
    const hasInit = mod.exports.includes('init');

    let id = '';
    let initSeq: number | null = null;
    this.#write(() =>
      this.#db.transaction(() => {
        let nonce = (this.#q.metaGet.get('root_nonce') as number | undefined) ?? 0;
        do id = deriveActorId('', nonce++);
        while (this.#q.actorExists.get(id));
        this.#q.metaSet.run('root_nonce', nonce);
        initSeq = insertActor(
          this.#q,
          this.#nodes,
          {
            id,
            name: options.name ?? null,
            parent: null,
            module: mod.digest,
            grants,
            limits,
            keepVersions: options.keepVersions ?? from?.row.keepVersions ?? DEFAULT_KEEP_VERSIONS,
            ...(root ? { root } : {}),
            refs,
            init: hasInit && !from ? init : null,
          },
          new Date().toISOString(),
        );
      })(),
    );
    const live = this.#sched.live(id)!;
    if (initSeq !== null) {
      const seq = initSeq;
      await new Promise<void>((resolve, reject) => {
        this.#sched.waiters.set(seq, { resolve: () => resolve(), reject });
        this.#sched.markReady(id);
      });
    }
    this.#event('actor.created', { actor: id, name: options.name ?? null, module: mod.digest, ...(from ? { from: from.row.id } : {}) });
    return this.#info(live);
  }

  async get(actor: string): Promise<ActorInfo> {
    this.#open();
    return this.#info(this.#resolve(actor));
  }

  async list(): Promise<ActorInfo[]> {
    this.#open();
    return (this.#q.actorIds.all() as string[]).map((id) => this.#info(this.#sched.live(id)!));
  }

  send(actor: string, message: ActorMessage, options: { signal?: AbortSignal } = {}): Promise<ActorSendResult> {
    return this.#accept(actor, message, false, options.signal).then((seq) => ({ seq }));
  }

  async call(actor: string, message: ActorMessage, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<ActorReply> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    let settle!: { resolve: (r: ActorReply) => void; reject: (e: Error) => void };
    const outcome = new Promise<ActorReply>((resolve, reject) => (settle = { resolve, reject }));
    const seq = await this.#accept(actor, message, true, options.signal, (s) => {
      this.#sched.waiters.set(s, {
        resolve: (o, version) => settle.resolve({ seq: s, version, ticks: o.ticks, reply: o.reply ? Buffer.from(o.reply) : null }),
        reject: (e) => settle.reject(e),
      });
    });
    // Giving up on the wait leaves the message in the mailbox: it is handled all the same.
    const giveUp = (err: RoostError) => {
      this.#sched.waiters.delete(seq);
      settle.reject(err);
    };
    const onAbort = () => giveUp(new RoostError('ABORTED', `the call to actor ${actor} was aborted (message ${seq} is still in its mailbox)`));
    if (options.signal?.aborted) onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(
      () =>
        giveUp(
          new RoostError('TIMEOUT', `actor ${actor} did not handle message ${seq} within ${timeoutMs} ms (it stays in its mailbox)`, { details: { seq } }),
        ),
      timeoutMs,
    );
    try {
      return await outcome;
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  async state(actor: string, options: { version?: number } = {}): Promise<ActorState> {
    this.#open();
    const live = this.#resolve(actor);
    const id = live.row.id;
    let version = live.row.version;
    let root = live.row.root;
    if (options.version !== undefined && options.version !== version) {
      const row = this.#q.versionGet.get(id, options.version) as { root: Buffer } | undefined;
      if (!row) throw new RoostError('NOT_FOUND', `actor ${id} keeps no version ${options.version}`, { details: { version: options.version } });
      version = options.version;
      root = row.root;
    }
    const tree = new StateTree(this.#nodes, root);
    const entries = tree.entries().map(([k, v]) => {
      const key = utf8OrNull(k);
      const value = utf8OrNull(v);
      return {
        ...(key === null ? { key: k.toString('base64'), keyEncoding: 'base64' as const } : { key }),
        ...(value === null ? { value: v.toString('base64'), valueEncoding: 'base64' as const } : { value }),
      };
    });
    return { actor: id, version, root: root.toString('hex'), size: tree.size, entries };
  }

  async versions(actor: string): Promise<ActorVersion[]> {
    this.#open();
    const live = this.#resolve(actor);
    return (this.#q.versionList.all(live.row.id) as Parameters<typeof versionFromRaw>[0][]).map(versionFromRaw);
  }

  async snapshot(actor: string): Promise<ActorVersion> {
    this.#open();
    const live = this.#resolve(actor);
    const { id, version } = live.row;
    const row = this.#q.versionGet.get(id, version) as Parameters<typeof versionFromRaw>[0];
    if (row.pinned === 0) {
      this.#write(() => this.#q.versionPin.run(id, version));
      live.unpinnedVersions -= 1;
    }
    return versionFromRaw({ ...row, pinned: 1 });
  }

  messages(actor: string, options: ActorMessagesOptions = {}): AsyncIterable<ActorMessageRecord> {
    this.#open();
    const live = this.#resolve(actor);
    const id = live.row.id;
    const limit = options.limit ?? 100;
    const page = (after: number, n: number) => (this.#q.historyAfter.all(id, after, n) as HistoryRaw[]).map(historyRecord);
    if (!options.follow) {
      const rows = (options.after !== undefined ? this.#q.historyAfter.all(id, options.after, limit) : this.#q.historyLast.all(id, limit)) as HistoryRaw[];
      return MessageStream.of(rows.map(historyRecord));
    }
    // Following: everything after `after`, or only what comes from now.
    const newest = (this.#q.historyLast.all(id, 1) as HistoryRaw[])[0]?.seq ?? 0;
    return new MessageStream(page, this.#sched.followers, id, options.signal, options.after ?? newest);
  }

  async remove(actor: string): Promise<void> {
    this.#open();
    const live = this.#resolve(actor);
    live.removed = true;
    await this.#sched.whenIdle(live);
    this.#write(() => this.#db.transaction(() => this.#removeRows(live.row.id))());
    this.#forget(live);
  }

  /** Stops the threads (messages in flight run again at the next open) and closes the database. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#flush();
    await this.#sched.close();
    await this.#pool.close();
    for (const [seq, w] of this.#sched.waiters) {
      this.#sched.waiters.delete(seq);
      w.reject(new RoostError('ABORTED', 'the actor runtime closed (the message stays in the mailbox)'));
    }
    this.#db.close();
  }

  // ---- internals ----

  /** A write to the database; a full disk is RESOURCE_EXHAUSTED naming it (nothing of the write is kept). */
  #write<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw diskFullError(e, this.#options.dbPath) ?? e;
    }
  }

  #open(): void {
    if (this.#closed) throw new RoostError('UNAVAILABLE', 'the actor runtime is closed');
  }

  /** An actor by id, unique id prefix or name. */
  #resolve(ref: string): LiveActor {
    if (ACTOR_ID_RE.test(ref)) {
      const live = this.#sched.live(ref);
      if (live && !live.removed) return live;
    }
    const byName = this.#q.actorByName.get(ref) as { id: string } | undefined;
    if (byName) return this.#sched.live(byName.id)!;
    if (/^[0-9a-f]{1,11}$/.test(ref)) {
      const ids = this.#q.actorByPrefix.all(ref) as string[];
      if (ids.length === 1) return this.#sched.live(ids[0]!)!;
      if (ids.length > 1) throw new RoostError('INVALID_ARGUMENT', `actor id prefix ${ref} is ambiguous`);
    }
    throw new RoostError('NOT_FOUND', `no actor ${ref}`, { details: { actor: ref } });
  }

  /** Validates and queues a message; the group commit resolves its seq. */
  #accept(actor: string, message: ActorMessage, reply: boolean, signal?: AbortSignal, onSeq?: (seq: number) => void): Promise<number> {
    this.#open();
    signal?.throwIfAborted();
    const live = this.#resolve(actor);
    const body = typeof message === 'string' ? Buffer.from(message) : Buffer.from(message.buffer, message.byteOffset, message.byteLength);
    if (body.length > MAX_ACTOR_MESSAGE_BYTES) {
      return Promise.reject(new RoostError('INVALID_ARGUMENT', `the message is ${body.length} bytes, over ${MAX_ACTOR_MESSAGE_BYTES}`));
    }
    const queued = this.#pendingFor.get(live) ?? 0;
    if (live.waiting + queued >= live.row.limits.mailbox) {
      return Promise.reject(
        new RoostError('RESOURCE_EXHAUSTED', `actor ${live.row.id}'s mailbox is full (${live.row.limits.mailbox} messages wait): try again later`, {
          details: { actor: live.row.id, mailbox: live.row.limits.mailbox },
        }),
      );
    }
    this.#pendingFor.set(live, queued + 1);
    return new Promise<number>((resolve, reject) => {
      this.#pending.push({
        live,
        body: Buffer.from(body),
        reply,
        resolve: (seq) => {
          onSeq?.(seq);
          resolve(seq);
        },
        reject,
      });
      if (!this.#flushQueued) {
        this.#flushQueued = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  /** One transaction for every message accepted since the last: a send costs a share of one commit. */
  #flush(): void {
    this.#flushQueued = false;
    const batch = this.#pending;
    this.#pending = [];
    this.#pendingFor.clear();
    if (batch.length === 0) return;
    const seqs: number[] = [];
    try {
      this.#db.transaction(() => {
        for (const p of batch) {
          if (p.live.removed) {
            seqs.push(-1);
            continue;
          }
          const time = p.live.row.clock + 1;
          seqs.push(Number(this.#q.mailInsert.run(p.live.row.id, 'message', '', time, 0, p.reply ? 1 : 0, p.body).lastInsertRowid));
        }
      })();
    } catch (e) {
      const err =
        diskFullError(e, this.#options.dbPath) ?? new RoostError('UNAVAILABLE', `the message could not be stored: ${(e as Error).message}`, { cause: e });
      for (const p of batch) p.reject(err);
      return;
    }
    batch.forEach((p, i) => {
      const seq = seqs[i]!;
      if (seq < 0) return p.reject(new RoostError('NOT_FOUND', `actor ${p.live.row.id} was removed`));
      p.live.waiting += 1;
      p.resolve(seq);
    });
    for (const p of batch) this.#sched.markReady(p.live.row.id);
  }

  #removeRows(id: string): void {
    for (const root of this.#q.versionRoots.all(id) as Buffer[]) this.#nodes.release(root);
    this.#q.versionsDelete.run(id);
    this.#q.refsDelete.run(id);
    for (const seq of this.#q.mailSeqsOf.all(id) as number[]) {
      const w = this.#sched.waiters.get(seq);
      if (w) {
        this.#sched.waiters.delete(seq);
        queueMicrotask(() => w.reject(new RoostError('NOT_FOUND', `actor ${id} was removed before it handled message ${seq}`)));
      }
    }
    this.#q.mailDeleteOf.run(id);
    this.#q.historyDeleteOf.run(id);
    this.#q.actorDelete.run(id);
  }

  #forget(live: LiveActor): void {
    live.removed = true;
    this.#sched.actors.delete(live.row.id);
    const follow = this.#sched.followers.get(live.row.id);
    this.#sched.followers.delete(live.row.id);
    if (follow) for (const f of follow) f(null);
    this.#event('actor.removed', { actor: live.row.id });
  }

  #info(live: LiveActor): ActorInfo {
    const r = live.row;
    return {
      id: r.id,
      name: r.name,
      module: r.module,
      parent: r.parent,
      createdAt: r.createdAt,
      version: r.version,
      root: r.root.toString('hex'),
      state: { entries: r.stateEntries, bytes: r.stateBytes },
      clock: r.clock,
      handled: r.handled,
      failed: r.failed,
      ticks: r.ticks,
      mailbox: live.waiting,
      refs: (this.#q.refsOf.all(r.id) as Array<{ ref: number; target: string }>).map((x) => ({ ref: x.ref, actor: x.target })),
      grants: r.grants,
      limits: r.limits,
      keepVersions: r.keepVersions,
      lastError: r.lastError,
    };
  }

  #moduleInfo(digest: string): ActorModuleInfo | undefined {
    const row = this.#q.moduleGet.get(digest) as { digest: string; size: number; info_json: string; created_at: string } | undefined;
    if (!row) return undefined;
    const info = JSON.parse(row.info_json) as ModuleInfoJson;
    return {
      digest: row.digest,
      size: row.size,
      imports: info.imports,
      exports: info.exports,
      grantsNeeded: info.grantsNeeded,
      memory: { initialBytes: info.memory.initialPages * 65536, maximumBytes: info.memory.maximumPages === null ? null : info.memory.maximumPages * 65536 },
      createdAt: row.created_at,
      actors: this.#q.moduleUsers.get(digest) as number,
    };
  }

  async #hostCall(req: HostCallRequest): Promise<Uint8Array | number> {
    const host = this.#options.host;
    const live = this.#sched.actors.get(req.actor);
    if (!host || !live) return -5;
    const actor = { id: live.row.id, grants: live.row.grants };
    try {
      return req.kind === 'fetch' ? await host.fetch(actor, req.request) : await host.sandboxExec(actor, req.request);
    } catch (e) {
      return e instanceof RoostError && e.code === 'PERMISSION_DENIED' ? -6 : -5;
    }
  }

  #event(type: ActorEvent | 'actor.module.deployed', data: Record<string, unknown>): void {
    try {
      this.#options.onEvent?.(type, data);
    } catch {
      // The event log's trouble is not the actor's.
    }
  }
}
