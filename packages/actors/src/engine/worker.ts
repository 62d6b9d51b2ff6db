import { parentPort, workerData } from 'node:worker_threads';
import type Database from 'better-sqlite3';
import { importMemory } from '../wasm/memory-import.js';
import { deriveActorId } from '../ids.js';
import { NodeCache, StateTree, type NodeSource } from '../state/index.js';
import { openActorsDbReadOnly } from '../store/db.js';
import { E_FAILED } from '../abi.js';
import { runMessage, type RunWorld } from './message-run.js';
import { failureOutcome, type BatchDone, type FromWorker, type MessageOutcome, type RunBatch, type StateNode, type WorkerInit } from './protocol.js';

/*
 * A worker thread: runs batches of one actor's messages. It reads committed
 * rows through its own read-only connection and keeps compiled modules and
 * decoded state nodes between batches; it writes nothing (the main thread
 * commits what it answers).
 */

const init = workerData as WorkerInit;
const control = new Int32Array(init.control);
const startedAt = new Float64Array(init.clock);
const answer = new Uint8Array(init.answer);
const port = parentPort!;
const post = (m: FromWorker): void => port.postMessage(m);
/** Milliseconds on a clock the main thread shares (each thread's performance.now() has its own origin). */
const now = (): number => performance.timeOrigin + performance.now();

let db: Database.Database;
try {
  db = openActorsDbReadOnly(init.dbPath);
} catch (e) {
  post({ type: 'fatal', message: `cannot open ${init.dbPath}: ${(e as Error).message}` });
  throw e;
}

const q = {
  node: db.prepare('SELECT body FROM state_nodes WHERE hash = ?').pluck(),
  module: db.prepare('SELECT prepared, info_json FROM modules WHERE digest = ?'),
  refTarget: db.prepare('SELECT target FROM actor_refs WHERE actor = ? AND ref = ?').pluck(),
  refOf: db.prepare('SELECT ref FROM actor_refs WHERE actor = ? AND target = ?').pluck(),
  actorLimits: db.prepare('SELECT limits_json FROM actors WHERE id = ?').pluck(),
  waiting: db.prepare('SELECT count(*) FROM (SELECT 1 FROM mailbox WHERE actor = ? LIMIT ?)').pluck(),
};

const cache = new NodeCache(init.nodeCacheBytes);
/** Nodes made by earlier messages of this worker not yet known committed: the main thread commits them before the actor's next batch, but another worker may run it, so they are only a shortcut. */
const dbSource: NodeSource = {
  get: (hash) => (q.node.get(hash) as Buffer | undefined) ?? undefined,
};

/** A compiled module at one memory limit, and memories of its initial size ready for reuse. */
interface Compiled {
  module: WebAssembly.Module;
  initialPages: number;
  maximumPages: number;
  free: WebAssembly.Memory[];
}
/** Memories up to this size are reused (zeroing them is cheaper than a new one); bigger ones are made fresh. */
const POOLED_MEMORY_BYTES = 1024 * 1024;
const POOL_PER_MODULE = 4;

const compiled = new Map<string, Compiled>();
function moduleFor(digest: string, memoryBytes: number): Compiled {
  const pages = Math.floor(memoryBytes / 65536);
  const key = `${digest}/${pages}`;
  let c = compiled.get(key);
  if (!c) {
    const row = q.module.get(digest) as { prepared: Buffer } | undefined;
    if (!row) throw new Error(`module ${digest} is not deployed`);
    const imported = importMemory(row.prepared, pages);
    c = { module: new WebAssembly.Module(imported.bytes), initialPages: imported.initialPages, maximumPages: imported.maximumPages, free: [] };
    if (compiled.size >= 256) compiled.delete(compiled.keys().next().value!);
    compiled.set(key, c);
  }
  return c;
}

/** A memory for one message: a pooled one zeroed (as a fresh one is), or a new one. */
function takeMemory(c: Compiled): WebAssembly.Memory {
  const m = c.free.pop();
  if (m) {
    new Uint8Array(m.buffer).fill(0);
    return m;
  }
  return new WebAssembly.Memory({ initial: c.initialPages, maximum: c.maximumPages });
}

/** Back to the pool if it is still its initial size (a memory cannot shrink). */
function giveMemory(c: Compiled, m: WebAssembly.Memory): void {
  if (c.free.length < POOL_PER_MODULE && m.buffer.byteLength === c.initialPages * 65536 && m.buffer.byteLength <= POOLED_MEMORY_BYTES) c.free.push(m);
}

let hostCallId = 0;
const world: RunWorld = {
  refTarget: (actor, ref) => q.refTarget.get(actor, ref) as string | undefined,
  refOf: (actor, target) => q.refOf.get(actor, target) as number | undefined,
  actorMailbox: (id) => {
    const limits = q.actorLimits.get(id) as string | undefined;
    if (limits === undefined) return undefined;
    const limit = (JSON.parse(limits) as { mailbox: number }).mailbox;
    return { limit, waiting: q.waiting.get(id, limit) as number };
  },
  moduleFacts: (digest) => {
    const row = q.module.get(digest) as { info_json: string } | undefined;
    if (!row) return undefined;
    const info = JSON.parse(row.info_json) as { grantsNeeded: string[]; exports: string[] };
    return { grantsNeeded: info.grantsNeeded, hasInit: info.exports.includes('init') };
  },
  deriveChildId: deriveActorId,
  hostCall: (kind, actor, request, deadline) => {
    const call = ++hostCallId;
    Atomics.store(control, 0, 0);
    Atomics.store(control, 2, call);
    post({ type: 'host', call, kind, actor, request });
    const wait = deadline - now();
    if (wait > 0) Atomics.wait(control, 0, 0, wait);
    // The main thread claims a call (control[2]: call -> -call) before it writes the answer: a call
    // given up on is unclaimed here, so a late answer can never land in a later call.
    const claim = Atomics.exchange(control, 2, 0);
    if (claim === call) return E_FAILED;
    // Claimed: the answer is being written, or is there.
    Atomics.wait(control, 0, 0, 5_000);
    if (Atomics.load(control, 0) !== 1) return E_FAILED;
    const len = Atomics.load(control, 1);
    if (len < 0) return len;
    return answer.slice(0, len);
  },
};

/**
 * The nodes the last batch made: the main thread may start an actor's next
 * batch here before it has committed them (it pipelines), so they are read
 * from here until the next batch is done.
 */
let previous: { actor: string; made: Map<string, Buffer> } | null = null;

function runBatch(req: RunBatch): BatchDone {
  const actor = req.actor;
  const outcomes: MessageOutcome[] = [];
  const made = new Map<string, Buffer>();
  const before = previous?.actor === actor.id ? previous.made : null;
  previous = { actor: actor.id, made };
  const source: NodeSource = {
    get: (hash) => {
      const key = hash.toString('hex');
      return made.get(key) ?? before?.get(key) ?? dbSource.get(hash);
    },
  };
  const tree = new StateTree(source, Buffer.from(actor.root), cache);
  let mod: Compiled;
  try {
    mod = moduleFor(actor.module, actor.limits.memoryBytes);
  } catch (e) {
    const message = `the module could not be compiled: ${(e as Error).message}`;
    for (const m of req.messages) outcomes.push(failureOutcome(m.seq, 'instantiate', message, { ticks: 0, clock: actor.clock, nonce: actor.nonce }));
    return { type: 'done', batch: req.batch, outcomes };
  }
  for (const m of req.messages) {
    startedAt[0] = now();
    Atomics.store(control, 4, m.seq);
    Atomics.store(control, 3, 1);
    const timeoutAt = startedAt[0] + actor.limits.timeoutMs;
    const memory = takeMemory(mod);
    const outcome = runMessage(mod.module, memory, actor, m, tree, world, timeoutAt);
    giveMemory(mod, memory);
    Atomics.store(control, 3, 0);
    if (outcome.ok) {
      const committed = tree.commit();
      if (!committed.root.equals(Buffer.from(actor.root))) {
        const nodes: StateNode[] = committed.nodes;
        for (const n of committed.nodes) made.set(Buffer.from(n.hash).toString('hex'), Buffer.from(n.body));
        const size = tree.size;
        outcome.state = { root: committed.root, nodes, entries: size.entries, bytes: size.bytes };
        actor.root = committed.root;
        actor.stateBytes = size.bytes;
        actor.stateEntries = size.entries;
      }
    } else {
      tree.rollback();
    }
    outcomes.push(outcome);
  }
  return { type: 'done', batch: req.batch, outcomes };
}

/**
 * Each byte array on its own exact-size buffer: a Buffer is often a view of
 * Node's shared 8 KiB pool, and posting it would copy the whole pool.
 */
const own = (b: Uint8Array): Uint8Array => (b.byteLength === b.buffer.byteLength ? b : b.slice());

function compact(done: BatchDone): BatchDone {
  for (const o of done.outcomes) {
    if (o.state) {
      o.state.root = own(o.state.root);
      o.state.nodes = o.state.nodes.map((n) => ({ hash: own(n.hash), body: own(n.body), children: n.children.map(own) }));
    }
    if (o.reply) o.reply = own(o.reply);
    for (const x of o.sends) x.body = own(x.body);
    for (const x of o.creates) x.init = own(x.init);
    for (const x of o.timers) x.body = own(x.body);
  }
  return done;
}

port.on('message', (req: RunBatch) => {
  if (req.type !== 'run') return;
  post(compact(runBatch(req)));
});
post({ type: 'ready' });
