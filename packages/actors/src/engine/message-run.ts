import { createHash } from 'node:crypto';
import { MAX_ACTOR_MESSAGE_BYTES } from '@roost/api';
import { E_BAD_REF, E_DENIED, E_FAILED, E_INVALID, E_LIMIT, E_NOT_FOUND, FUEL_EXPORT, START_EXPORT } from '../abi.js';
import type { StateTree } from '../state/index.js';
import { MEMORY_IMPORT_NAME } from '../wasm/memory-import.js';
import { failureOutcome, type ActorSnapshot, type BatchMessage, type ChildCreate, type FailureReason, type MessageOutcome } from './protocol.js';

/*
 * One message run in a fresh instance: the ABI's imports (docs/actors.md)
 * over a working copy of the state, its effects gathered to be committed by
 * the main thread, or dropped when the handler fails. Runs in a worker.
 */

const MAX_KEY_BYTES = 1024;
const MAX_LOG_LINE = 4096;
const MAX_LOG_LINES = 64;
/** Sends, children and timers one message may make. */
export const MAX_EFFECTS = 256;
const MAX_TIMER_DELAY_MS = 10 * 365 * 24 * 3600 * 1000;

/** What a run reads besides the state: committed rows, and what earlier messages of the batch made. */
export interface RunWorld {
  /** The actor a ref of `actor` points at, or undefined. */
  refTarget(actor: string, ref: number): string | undefined;
  /** The ref `actor` holds to `target`, if any. */
  refOf(actor: string, target: string): number | undefined;
  /** Whether an actor exists (committed, or created earlier in the batch), and its mailbox limit. */
  actorMailbox(id: string): { limit: number; waiting: number } | undefined;
  /** A module's facts, for `create`. */
  moduleFacts(digest: string): { grantsNeeded: string[]; hasInit: boolean } | undefined;
  /** A blocking host call (fetch, sandbox_exec): the answer's bytes, or a negative ABI code. */
  hostCall(kind: 'fetch' | 'sandbox_exec', actor: string, request: string, deadline: number): Uint8Array | number;
  deriveChildId(parent: string, nonce: number): string;
}

/** Thrown by an import to trap the handler with a message (a bad pointer, AssemblyScript's abort). */
class HostTrap extends Error {}

const utf8 = new TextDecoder('utf-8', { fatal: false });

/** Whether `grants` has what a module's import needs. */
export function hasGrant(grants: ActorSnapshot['grants'], need: string): boolean {
  switch (need) {
    case 'random':
      return grants.random === true;
    case 'clock':
      return grants.clock === true;
    case 'fetch':
      return grants.fetch !== undefined && grants.fetch !== 'deny';
    case 'sandbox':
      return (grants.sandboxes?.length ?? 0) > 0;
    default:
      return false;
  }
}

/**
 * Runs `msg` for `actor` (whose clock, nonce and maxRef it advances on
 * success) against `tree`. The tree holds the message's changes afterwards
 * (the caller commits or rolls back by the outcome's `ok`).
 */
export function runMessage(
  module: WebAssembly.Module,
  memoryIn: WebAssembly.Memory,
  actor: ActorSnapshot,
  msg: BatchMessage,
  tree: StateTree,
  world: RunWorld,
  deadline: number,
): MessageOutcome {
  const clock = Math.max(actor.clock, msg.time) + 1;
  let nonce = actor.nonce;
  let maxRef = actor.maxRef;
  const newRefs: Array<{ ref: number; target: string }> = [];
  const refTarget = (ref: number): string | undefined => newRefs.find((r) => r.ref === ref)?.target ?? world.refTarget(actor.id, ref);
  const refOf = (target: string): number => {
    const known = newRefs.find((r) => r.target === target)?.ref ?? world.refOf(actor.id, target);
    if (known !== undefined) return known;
    maxRef += 1;
    newRefs.push({ ref: maxRef, target });
    return maxRef;
  };
  const senderRef = msg.sender === '' ? 0 : refOf(msg.sender);

  const sends: MessageOutcome['sends'] = [];
  const creates: ChildCreate[] = [];
  const timers: MessageOutcome['timers'] = [];
  const logs: string[] = [];
  const pendingSends = new Map<string, number>();
  let reply: Uint8Array | null = null;
  let result: Uint8Array = new Uint8Array(0);
  let stateBytes = actor.stateBytes;
  let randomCounter = 0;
  let seed: Buffer | undefined;

  const memory: WebAssembly.Memory = memoryIn;
  const view = (ptr: number, len: number): Uint8Array => {
    const buf = memory.buffer;
    if (ptr < 0 || len < 0 || ptr + len > buf.byteLength) throw new HostTrap(`out-of-bounds memory access (${ptr}, ${len})`);
    return new Uint8Array(buf, ptr, len);
  };
  const copyIn = (ptr: number, len: number): Buffer => Buffer.from(view(ptr, len));
  const effects = () => sends.length + creates.length + timers.length;

  const roost: Record<string, ((...args: never[]) => unknown) | WebAssembly.Memory> = {
    [MEMORY_IMPORT_NAME]: memoryIn,
    msg_read: (ptr: number, offset: number, len: number): number => {
      if (offset < 0 || len < 0) return E_INVALID;
      const part = msg.body.subarray(Math.min(offset, msg.body.length), Math.min(offset + len, msg.body.length));
      view(ptr, part.length).set(part);
      return part.length;
    },
    state_get: (kptr: number, klen: number, vptr: number, vcap: number): number => {
      if (klen < 1 || klen > MAX_KEY_BYTES) return E_INVALID;
      const value = tree.get(copyIn(kptr, klen));
      if (value === undefined) return E_NOT_FOUND;
      if (vcap > 0) view(vptr, Math.min(vcap, value.length)).set(value.subarray(0, Math.min(vcap, value.length)));
      return value.length;
    },
    state_set: (kptr: number, klen: number, vptr: number, vlen: number): number => {
      if (klen < 1 || klen > MAX_KEY_BYTES || vlen > MAX_ACTOR_MESSAGE_BYTES) return E_LIMIT;
      const key = copyIn(kptr, klen);
      const old = tree.get(key);
      const after = stateBytes - (old ? key.length + old.length : 0) + key.length + vlen;
      if (after > actor.limits.stateBytes && after > stateBytes) return E_LIMIT;
      tree.set(key, copyIn(vptr, vlen));
      stateBytes = after;
      return 0;
    },
    state_delete: (kptr: number, klen: number): number => {
      if (klen < 1 || klen > MAX_KEY_BYTES) return 0;
      const key = copyIn(kptr, klen);
      const old = tree.get(key);
      if (old === undefined) return 0;
      tree.delete(key);
      stateBytes -= key.length + old.length;
      return 1;
    },
    reply: (ptr: number, len: number): number => {
      if (len > MAX_ACTOR_MESSAGE_BYTES) return E_LIMIT;
      reply = copyIn(ptr, len);
      return 0;
    },
    sender: (): number => senderRef,
    send: (ref: number, ptr: number, len: number): number => {
      if (len > MAX_ACTOR_MESSAGE_BYTES || effects() >= MAX_EFFECTS) return E_LIMIT;
      const target = ref > 0 ? refTarget(ref) : undefined;
      if (target === undefined) return E_BAD_REF;
      const box = world.actorMailbox(target) ?? (creates.some((c) => c.id === target) ? { limit: actor.limits.mailbox, waiting: 0 } : undefined);
      if (!box) return E_BAD_REF;
      const queued = pendingSends.get(target) ?? 0;
      if (box.waiting + queued >= box.limit) return E_LIMIT;
      pendingSends.set(target, queued + 1);
      sends.push({ target, body: copyIn(ptr, len) });
      return 0;
    },
    create: (dptr: number, dlen: number, iptr: number, ilen: number): number => {
      if (dlen > 128 || ilen > MAX_ACTOR_MESSAGE_BYTES) return E_INVALID;
      if (effects() >= MAX_EFFECTS) return E_LIMIT;
      const digest = utf8.decode(view(dptr, dlen));
      const facts = world.moduleFacts(digest);
      if (!facts) return E_NOT_FOUND;
      if (!facts.grantsNeeded.every((g) => hasGrant(actor.grants, g))) return E_INVALID;
      let id = world.deriveChildId(actor.id, nonce++);
      // A taken id (a 48-bit collision): the next nonce, deterministically.
      for (let tries = 0; world.actorMailbox(id) !== undefined || creates.some((c) => c.id === id); tries++) {
        if (tries > 8) return E_LIMIT;
        id = world.deriveChildId(actor.id, nonce++);
      }
      creates.push({ id, module: digest, init: copyIn(iptr, ilen), hasInit: facts.hasInit });
      return refOf(id);
    },
    timer: (delay: bigint, ptr: number, len: number): number => {
      if (len > MAX_ACTOR_MESSAGE_BYTES || effects() >= MAX_EFFECTS) return E_LIMIT;
      const delayMs = delay < 0n ? 0 : delay > BigInt(MAX_TIMER_DELAY_MS) ? MAX_TIMER_DELAY_MS : Number(delay);
      timers.push({ delayMs, body: copyIn(ptr, len) });
      return 0;
    },
    time: (): bigint => BigInt(clock),
    log: (ptr: number, len: number): void => {
      if (logs.length >= MAX_LOG_LINES) return;
      logs.push(utf8.decode(view(ptr, Math.min(len, MAX_LOG_LINE))));
    },
    result_read: (ptr: number, offset: number, len: number): number => {
      if (offset < 0 || len < 0) return E_INVALID;
      const part = result.subarray(Math.min(offset, result.length), Math.min(offset + len, result.length));
      view(ptr, part.length).set(part);
      return part.length;
    },
    random: (ptr: number, len: number): number => {
      const out = view(ptr, len);
      for (let off = 0; off < len; off += 32) {
        seed ??= createHash('sha256').update(`${actor.id}\0${msg.seq}`).digest();
        const block = createHash('sha256').update(seed).update(String(randomCounter++)).digest();
        out.set(block.subarray(0, Math.min(32, len - off)), off);
      }
      return 0;
    },
    clock: (): bigint => BigInt(Date.now()),
    fetch: (ptr: number, len: number): number => hostCall('fetch', ptr, len),
    sandbox_exec: (ptr: number, len: number): number => hostCall('sandbox_exec', ptr, len),
  };
  const hostCall = (kind: 'fetch' | 'sandbox_exec', ptr: number, len: number): number => {
    if (len > MAX_ACTOR_MESSAGE_BYTES) return E_LIMIT;
    const need = kind === 'fetch' ? 'fetch' : 'sandbox';
    if (!hasGrant(actor.grants, need)) return E_DENIED;
    const answer = world.hostCall(kind, actor.id, utf8.decode(view(ptr, len)), deadline);
    if (typeof answer === 'number') return answer < 0 ? answer : E_FAILED;
    result = answer;
    return answer.length;
  };
  const env = {
    abort: (msgPtr: number, filePtr: number, line: number, col: number): never => {
      throw new HostTrap(`abort: ${readAsString(msgPtr)} at ${readAsString(filePtr)}:${line}:${col}`);
    },
  };
  /** An AssemblyScript string (UTF-16, its byte length in the 4 bytes before it), bounded. */
  const readAsString = (ptr: number): string => {
    try {
      if (ptr < 4) return '?';
      const len = new DataView(memory.buffer).getUint32(ptr - 4, true);
      return Buffer.from(view(ptr, Math.min(len, 2048))).toString('utf16le');
    } catch {
      return '?';
    }
  };

  const fuelLimit = BigInt(actor.limits.fuel);
  const fail = (reason: FailureReason, message: string, ticks: number): MessageOutcome => {
    actor.clock = clock;
    return failed(reason, message, ticks);
  };
  const failed = (reason: FailureReason, message: string, ticks: number): MessageOutcome =>
    failureOutcome(msg.seq, reason, message, { ticks, clock, nonce: actor.nonce, logs });

  let instance: WebAssembly.Instance;
  try {
    instance = new WebAssembly.Instance(module, { roost, env } as unknown as WebAssembly.Imports);
  } catch (e) {
    return fail('instantiate', `the module could not be instantiated: ${errorText(e)}`, 0);
  }
  const fuelGlobal = instance.exports[FUEL_EXPORT] as WebAssembly.Global | undefined;
  if (!fuelGlobal) return fail('instantiate', 'the module is not metered (no fuel counter)', 0);
  const ticksUsed = (): number => {
    const left = fuelGlobal.value as bigint;
    return Number(left < 0n ? fuelLimit : fuelLimit - left);
  };
  fuelGlobal.value = fuelLimit;
  const handler = instance.exports[msg.kind === 'init' ? 'init' : 'handle'] as ((len: number) => number) | undefined;
  if (typeof handler !== 'function') return fail('instantiate', `the module exports no ${msg.kind === 'init' ? 'init' : 'handle'} function`, 0);
  // The module's start function (the loader exports it instead of letting instantiation run it unmetered) runs first, on the same fuel.
  const start = instance.exports[START_EXPORT] as (() => void) | undefined;
  let code: number;
  try {
    if (typeof start === 'function') start();
    code = handler(msg.body.length);
  } catch (e) {
    const ticks = ticksUsed();
    if ((fuelGlobal.value as bigint) < 0n) return fail('out_of_fuel', `out of fuel: the message used its ${actor.limits.fuel} units`, ticks);
    if (e instanceof HostTrap) return fail('trap', e.message, ticks);
    if (e instanceof RangeError && /call stack/i.test(e.message)) return fail('trap', 'stack overflow', ticks);
    const full = memory.buffer.byteLength >= Math.floor(actor.limits.memoryBytes / 65536) * 65536;
    return fail('trap', `${errorText(e)}${full ? ` (its memory is at its limit of ${actor.limits.memoryBytes} bytes)` : ''}`, ticks);
  }
  const ticks = ticksUsed();
  // Straight-line code after the last check may take the fuel just below zero: out of fuel too.
  if ((fuelGlobal.value as bigint) < 0n) return fail('out_of_fuel', `out of fuel: the message used its ${actor.limits.fuel} units`, ticks);
  if (code !== 0) return fail('returned', `the handler returned ${code}`, ticks);

  actor.clock = clock;
  actor.nonce = nonce;
  actor.maxRef = maxRef;
  actor.stateBytes = stateBytes;
  return {
    seq: msg.seq,
    ok: true,
    ticks,
    clock,
    reply: msg.reply ? reply : null,
    sends,
    creates,
    timers,
    refs: newRefs,
    nonce,
    logs,
  };
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
