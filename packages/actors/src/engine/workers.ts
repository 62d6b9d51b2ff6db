import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CONTROL_SLOTS, HOST_ANSWER_BYTES, type BatchDone, type FromWorker, type HostCallRequest, type RunBatch, type WorkerInit } from './protocol.js';

/*
 * The worker threads actors run on, one batch at a time each. A message
 * past its wall time gets its thread terminated (a WASM loop cannot be
 * interrupted any other way) and a new thread started; so does a thread
 * that dies. Host calls (fetch, sandbox_exec) are answered through shared
 * memory while the worker blocks in Atomics.wait.
 */

/** Why a batch ended without an answer: the message `seq` ran out of wall time, or the thread died while running it. */
export class BatchAborted extends Error {
  constructor(
    readonly reason: 'timeout' | 'crashed',
    readonly seq: number | null,
    message: string,
  ) {
    super(message);
  }
}

export type HostCallHandler = (req: HostCallRequest) => Promise<Uint8Array | number>;

function workerScript(): URL {
  const here = new URL('./worker.js', import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  // Running from the sources (unit tests): the built file.
  return new URL(here.href.replace('/src/engine/worker.js', '/dist/engine/worker.js'));
}

interface Slot {
  worker: Worker;
  control: Int32Array;
  clock: Float64Array;
  answer: Uint8Array;
  busy: { batch: RunBatch; resolve: (d: { done: BatchDone; slot: unknown }) => void; reject: (e: Error) => void } | null;
  killed: boolean;
  /** It said it was ready. */
  started: boolean;
}

export class WorkerPool {
  readonly #slots: Slot[] = [];
  readonly #dbPath: string;
  readonly #hostCall: HostCallHandler;
  readonly #nodeCacheBytes: number;
  readonly #size: number;
  #watchdog: NodeJS.Timeout | null = null;
  #closed = false;
  /** Threads in a row that died before they were ready; at 3 the pool stops starting them (why: `broken`). */
  #startFailures = 0;
  #broken: string | null = null;

  constructor(options: { size: number; dbPath: string; hostCall: HostCallHandler; nodeCacheBytes?: number }) {
    this.#dbPath = options.dbPath;
    this.#hostCall = options.hostCall;
    this.#nodeCacheBytes = options.nodeCacheBytes ?? 32 * 1024 * 1024;
    this.#size = Math.max(1, options.size);
  }

  /** Threads started so far (they start on demand, up to the size). */
  get started(): number {
    return this.#slots.length;
  }

  /** Why no thread can start (their database cannot be opened, ...), or null. */
  get broken(): string | null {
    return this.#broken;
  }

  /** Batches that could start now. */
  idle(): number {
    if (this.#broken) return 0;
    return this.#slots.filter((s) => !s.busy && !s.killed).length + (this.#size - this.#slots.length);
  }

  /**
   * Runs a batch on a free thread (the caller checks `idle()` first), or on
   * `prefer` (a slot an earlier answer named) when it is free: the thread
   * that ran an actor's last batch holds the nodes that batch made.
   */
  run(batch: RunBatch, prefer?: unknown): Promise<{ done: BatchDone; slot: unknown }> {
    const preferred = this.#slots.find((s) => s === prefer && !s.busy && !s.killed);
    let slot = preferred ?? this.#slots.find((s) => !s.busy && !s.killed);
    if (!slot && this.#slots.length < this.#size && !this.#closed) {
      slot = this.#spawn();
      this.#slots.push(slot);
    }
    if (!slot) return Promise.reject(new BatchAborted('crashed', null, this.#broken ?? 'no idle actor thread'));
    const chosen = slot;
    return new Promise<{ done: BatchDone; slot: unknown }>((resolve, reject) => {
      chosen.busy = { batch, resolve, reject };
      // A thread with work keeps the process alive (an idle one does not): a script that sends and closes waits for it.
      chosen.worker.ref();
      chosen.worker.postMessage(batch);
      this.#armWatchdog();
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#watchdog) clearInterval(this.#watchdog);
    await Promise.all(this.#slots.map((s) => s.worker.terminate()));
    for (const s of this.#slots) s.busy?.reject(new BatchAborted('crashed', null, 'the actor runtime closed'));
  }

  #spawn(): Slot {
    const control = new SharedArrayBuffer(CONTROL_SLOTS * 4);
    const clock = new SharedArrayBuffer(8);
    const answer = new SharedArrayBuffer(HOST_ANSWER_BYTES);
    const data: WorkerInit = { dbPath: this.#dbPath, control, clock, answer, nodeCacheBytes: this.#nodeCacheBytes };
    // resourceLimits bound the JS heap; WASM memory is bounded by each module's capped maximum.
    const worker = new Worker(workerScript(), { workerData: data, resourceLimits: { maxOldGenerationSizeMb: 512 } });
    const slot: Slot = {
      worker,
      control: new Int32Array(control),
      clock: new Float64Array(clock),
      answer: new Uint8Array(answer),
      busy: null,
      killed: false,
      started: false,
    };
    worker.on('message', (m: FromWorker) => {
      if (m.type === 'ready') {
        slot.started = true;
        this.#startFailures = 0;
      } else if (m.type === 'done') {
        const busy = slot.busy;
        slot.busy = null;
        slot.worker.unref();
        busy?.resolve({ done: m, slot });
      } else if (m.type === 'host') void this.#answerHostCall(slot, m);
      else if (m.type === 'fatal') this.#replace(slot, 'crashed', m.message);
    });
    worker.on('error', (e) => this.#replace(slot, 'crashed', `the actor thread failed: ${e.message}`));
    worker.on('exit', (code) => {
      if (!slot.killed && !this.#closed) this.#replace(slot, 'crashed', `the actor thread exited (${code})`);
    });
    worker.unref();
    return slot;
  }

  async #answerHostCall(slot: Slot, req: HostCallRequest): Promise<void> {
    let result: Uint8Array | number;
    try {
      result = await this.#hostCall(req);
    } catch {
      result = -5;
    }
    // The worker may have given up (its wall time) and moved on: answer only the call it still waits
    // for, claimed first (call -> -call) so that it cannot give up while the answer is written.
    if (slot.killed || Atomics.compareExchange(slot.control, 2, req.call, -req.call) !== req.call) return;
    if (typeof result === 'number') Atomics.store(slot.control, 1, result);
    else if (result.length > slot.answer.length) Atomics.store(slot.control, 1, -3);
    else {
      slot.answer.set(result);
      Atomics.store(slot.control, 1, result.length);
    }
    Atomics.store(slot.control, 0, 1);
    Atomics.notify(slot.control, 0);
  }

  /** Ends a thread (its batch rejects with why) and starts another in its place. */
  #replace(slot: Slot, reason: 'timeout' | 'crashed', message: string): void {
    if (slot.killed) return;
    slot.killed = true;
    const running = Atomics.load(slot.control, 3) === 1 ? Atomics.load(slot.control, 4) : null;
    void slot.worker.terminate();
    const busy = slot.busy;
    slot.busy = null;
    if (!slot.started && ++this.#startFailures >= 3) {
      this.#broken = message;
      process.emitWarning(`roost actors: no actor thread can start (${message}); messages wait in their mailboxes`);
    }
    if (this.#closed || this.#broken) this.#slots.splice(this.#slots.indexOf(slot), 1);
    else this.#slots[this.#slots.indexOf(slot)] = this.#spawn();
    busy?.reject(new BatchAborted(reason, running, message));
  }

  #armWatchdog(): void {
    if (this.#watchdog) return;
    this.#watchdog = setInterval(() => {
      let any = false;
      for (const slot of this.#slots) {
        if (!slot.busy || slot.killed) continue;
        any = true;
        if (Atomics.load(slot.control, 3) !== 1) continue;
        const ranMs = performance.timeOrigin + performance.now() - slot.clock[0]!;
        const limit = slot.busy.batch.actor.limits.timeoutMs;
        if (ranMs > limit) this.#replace(slot, 'timeout', `the message ran past its wall time (${limit} ms)`);
      }
      if (!any && this.#watchdog) {
        clearInterval(this.#watchdog);
        this.#watchdog = null;
      }
    }, 25);
    this.#watchdog.unref();
  }
}
