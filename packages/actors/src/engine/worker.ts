import { parentPort, workerData } from 'node:worker_threads';
import type Database from 'better-sqlite3';
import { capMemory } from '../wasm/index.js';
import { deriveActorId } from '../ids.js';
import { NodeCache, StateTree, type NodeSource } from '../state/index.js';
import { openActorsDbReadOnly } from '../store/db.js';
import { E_FAILED } from '../abi.js';
import { runMessage, type RunWorld } from './message-run.js';
import type { BatchDone, FromWorker, MessageOutcome, RunBatch, StateNode, WorkerInit } from './protocol.js';

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

const compiled = new Map<string, WebAssembly.Module>();
function moduleFor(digest: string, memoryBytes: number): WebAssembly.Module {
  const pages = Math.floor(memoryBytes / 65536);
  const key = `${digest}/${pages}`;
  let mod = compiled.get(key);
  if (!mod) {
    const row = q.module.get(digest) as { prepared: Buffer } | undefined;
    if (!row) throw new Error(`module ${digest} is not deployed`);
    mod = new WebAssembly.Module(capMemory(row.prepared, pages));
    if (compiled.size >= 256) compiled.delete(compiled.keys().next().value!);
    compiled.set(key, mod);
  }
  return mod;
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
    const result = wait > 0 ? Atomics.wait(control, 0, 0, wait) : 'timed-out';
    // The main thread answers only while control[2] names this call.
    Atomics.store(control, 2, 0);
    if (result === 'timed-out' && Atomics.load(control, 0) === 0) return E_FAILED;
    const len = Atomics.load(control, 1);
    if (len < 0) return len;
    return answer.slice(0, len);
  },
};

function runBatch(req: RunBatch): BatchDone {
  const actor = req.actor;
  const outcomes: MessageOutcome[] = [];
  const made = new Map<string, Buffer>();
  const source: NodeSource = { get: (hash) => made.get(hash.toString('hex')) ?? dbSource.get(hash) };
  const tree = new StateTree(source, Buffer.from(actor.root), cache);
  let mod: WebAssembly.Module;
  try {
    mod = moduleFor(actor.module, actor.limits.memoryBytes);
  } catch (e) {
    const message = `the module could not be compiled: ${(e as Error).message}`;
    for (const m of req.messages) {
      outcomes.push({
        seq: m.seq,
        ok: false,
        error: { reason: 'instantiate', message },
        ticks: 0,
        clock: actor.clock,
        reply: null,
        sends: [],
        creates: [],
        timers: [],
        refs: [],
        nonce: actor.nonce,
        logs: [],
      });
    }
    return { type: 'done', batch: req.batch, outcomes };
  }
  for (const m of req.messages) {
    startedAt[0] = now();
    Atomics.store(control, 4, m.seq);
    Atomics.store(control, 3, 1);
    const timeoutAt = startedAt[0] + actor.limits.timeoutMs;
    const outcome = runMessage(mod, actor, m, tree, world, timeoutAt);
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

port.on('message', (req: RunBatch) => {
  if (req.type !== 'run') return;
  post(runBatch(req));
});
post({ type: 'ready' });
