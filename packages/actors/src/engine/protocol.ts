import type { ActorGrants, ResolvedActorLimits } from '@roost/api';

/*
 * What the main thread and a worker thread say to each other. The main
 * thread is the only writer of the database: it picks a batch of one
 * actor's messages, a worker runs them one after another (each its own
 * transaction in effect) and answers with every message's outcome, which
 * the main thread commits in one SQLite transaction.
 */

/** What a worker needs to know of the actor it runs (the main thread's committed view). */
export interface ActorSnapshot {
  id: string;
  module: string;
  grants: ActorGrants;
  limits: ResolvedActorLimits;
  root: Uint8Array;
  stateBytes: number;
  stateEntries: number;
  clock: number;
  nonce: number;
  /** The highest ref number it holds. */
  maxRef: number;
}

export interface BatchMessage {
  seq: number;
  kind: 'message' | 'init' | 'timer';
  /** The sending actor's id, or '' (outside, timer). */
  sender: string;
  time: number;
  body: Uint8Array;
  reply: boolean;
}

export interface RunBatch {
  type: 'run';
  batch: number;
  actor: ActorSnapshot;
  messages: BatchMessage[];
}

export type FailureReason = 'trap' | 'out_of_fuel' | 'timeout' | 'returned' | 'instantiate' | 'crashed';

export interface StateNode {
  hash: Uint8Array;
  body: Uint8Array;
  children: Uint8Array[];
}

export interface ChildCreate {
  id: string;
  module: string;
  init: Uint8Array;
  /** Whether its module exports `init` (then an init message is queued). */
  hasInit: boolean;
}

/** One message's outcome: its effects when it committed, its error when not. */
export interface MessageOutcome {
  seq: number;
  ok: boolean;
  error?: { reason: FailureReason; message: string };
  ticks: number;
  /** The actor's clock after it. */
  clock: number;
  /** Set when the state changed: the new root, the nodes to store, the size. */
  state?: { root: Uint8Array; nodes: StateNode[]; entries: number; bytes: number };
  reply: Uint8Array | null;
  sends: Array<{ target: string; body: Uint8Array }>;
  creates: ChildCreate[];
  timers: Array<{ delayMs: number; body: Uint8Array }>;
  /** References it gained (its sender's, its children's). */
  refs: Array<{ ref: number; target: string }>;
  nonce: number;
  logs: string[];
}

/** The outcome of a message that failed: nothing of it is kept but its error, fuel, clock and logs. */
export function failureOutcome(
  seq: number,
  reason: FailureReason,
  message: string,
  at: { ticks: number; clock: number; nonce: number; logs?: string[] },
): MessageOutcome {
  return {
    seq,
    ok: false,
    error: { reason, message },
    ticks: at.ticks,
    clock: at.clock,
    reply: null,
    sends: [],
    creates: [],
    timers: [],
    refs: [],
    nonce: at.nonce,
    logs: at.logs ?? [],
  };
}

export interface BatchDone {
  type: 'done';
  batch: number;
  outcomes: MessageOutcome[];
}

/** A host call the worker waits for (blocked on Atomics.wait): fetch or sandbox_exec. */
export interface HostCallRequest {
  type: 'host';
  call: number;
  kind: 'fetch' | 'sandbox_exec';
  actor: string;
  request: string;
}

export type FromWorker = BatchDone | HostCallRequest | { type: 'ready' } | { type: 'fatal'; message: string };

/** The worker's data at start (workerData). */
export interface WorkerInit {
  dbPath: string;
  /** [0] host call state (0 waiting, 1 answered), [1] the answer's length or a negative code, [2] the call id pending (negated once the main thread claims it to answer), [3] running (1) or idle (0), [4] the seq running. */
  control: SharedArrayBuffer;
  /** [0] when the running message started (ms, performance.timeOrigin-based). */
  clock: SharedArrayBuffer;
  /** Host call answers. */
  answer: SharedArrayBuffer;
  nodeCacheBytes: number;
}

export const CONTROL_SLOTS = 5;
export const HOST_ANSWER_BYTES = 2 * 1024 * 1024;
