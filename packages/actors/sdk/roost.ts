// The Roost actor SDK for AssemblyScript: the imports of the actor ABI
// (docs/actors.md, version 1) and friendly helpers over them.
//
// An actor module exports `memory` (AssemblyScript does by default), a
// `handle(len: i32): i32` and optionally an `init(len: i32): i32`:
//
//   import { messageText, replyText } from '../../../packages/actors/sdk/roost';
//
//   export function handle(len: i32): i32 {
//     replyText('you said: ' + messageText());
//     return 0; // commit; anything else aborts the message's transaction
//   }
//
// Build with `asc actor.ts --outFile actor.wasm --runtime stub -O3` (see
// scripts/build-examples.mjs). The stub runtime never frees memory: each
// message runs in a fresh instance, so there is nothing to collect.
//
// Only the imports a module actually calls end up in it (AssemblyScript
// drops unused declarations), so an actor that never calls `fetch()` needs
// no `fetch` grant. Besides the `roost` imports, AssemblyScript may import
// `env.abort` (failed assertions, bounds checks, `throw`), which the ABI
// allows. Avoid `Math.random` (imports `env.seed`; use `randomBytes`) and
// `trace` (imports `env.trace`; use `log`): the engine refuses them.
//
// Strings are UTF-8 on the wire.

// ---------------------------------------------------------------------------
// Error codes: the negative i32s the imports return.

/** No such key (`state_get`) or module (`create`). */
export const E_NOT_FOUND: i32 = -1;
/** The reference passed to `send` is not one this actor holds. */
export const E_BAD_REF: i32 = -2;
/** A size or count limit was hit (key, value, state, message, sends, children). */
export const E_LIMIT: i32 = -3;
/** The module given to `create` does not fit the child's grants. */
export const E_INVALID: i32 = -4;
/** `fetch` or `sandbox_exec` failed. */
export const E_FAILED: i32 = -5;
/** `fetch` or `sandbox_exec` was refused by the actor's policy. */
export const E_DENIED: i32 = -6;

/** The name of an error code (`E_LIMIT`), or the number as text for an unknown one. */
export function errorName(code: i32): string {
  switch (code) {
    case E_NOT_FOUND:
      return 'E_NOT_FOUND';
    case E_BAD_REF:
      return 'E_BAD_REF';
    case E_LIMIT:
      return 'E_LIMIT';
    case E_INVALID:
      return 'E_INVALID';
    case E_FAILED:
      return 'E_FAILED';
    case E_DENIED:
      return 'E_DENIED';
  }
  return code.toString();
}

// ---------------------------------------------------------------------------
// The raw imports, one for one with the ABI table. Pointers are offsets in
// this module's memory; lengths are byte counts. Use these when you need the
// error code instead of the helpers' abort, or want to manage buffers yourself.

export namespace abi {
  /** Copies up to `len` bytes of the message from `offset` to `ptr`; returns the count copied. */
  @external('roost', 'msg_read')
  export declare function msg_read(ptr: usize, offset: i32, len: i32): i32;

  /** The value of a key: returns its length (copying at most `vcap` bytes to `vptr`), or E_NOT_FOUND. */
  @external('roost', 'state_get')
  export declare function state_get(kptr: usize, klen: i32, vptr: usize, vcap: i32): i32;

  /** Sets a key: 0 or E_LIMIT. */
  @external('roost', 'state_set')
  export declare function state_set(kptr: usize, klen: i32, vptr: usize, vlen: i32): i32;

  /** Deletes a key: 1 if it was there, 0 if not. */
  @external('roost', 'state_delete')
  export declare function state_delete(kptr: usize, klen: i32): i32;

  /** Sets the reply to a `call` (the last one wins): 0 or E_LIMIT. */
  @external('roost', 'reply')
  export declare function reply(ptr: usize, len: i32): i32;

  /** A reference to the sender of this message, or 0 (from outside, or a timer). */
  @external('roost', 'sender')
  export declare function sender(): i32;

  /** Sends a message to the actor `ref` refers to: 0, E_BAD_REF or E_LIMIT. */
  @external('roost', 'send')
  export declare function send(ref: i32, ptr: usize, len: i32): i32;

  /** Creates a child from a module digest (text): its reference (> 0), or E_NOT_FOUND, E_INVALID, E_LIMIT. */
  @external('roost', 'create')
  export declare function create(dptr: usize, dlen: i32, iptr: usize, ilen: i32): i32;

  /** A durable timer: the message comes back to this actor after `delay_ms`, from sender 0. 0 or E_LIMIT. */
  @external('roost', 'timer')
  export declare function timer(delay_ms: i64, ptr: usize, len: i32): i32;

  /** The message's logical (Lamport) time. */
  @external('roost', 'time')
  export declare function time(): i64;

  /** A log line (UTF-8). */
  @external('roost', 'log')
  export declare function log(ptr: usize, len: i32): void;

  /** Copies bytes of the last `fetch` or `sandbox_exec` result; returns the count copied. */
  @external('roost', 'result_read')
  export declare function result_read(ptr: usize, offset: i32, len: i32): i32;

  /** Grant `random`: fills `len` bytes, deterministically (a replay gets the same bytes). 0. */
  @external('roost', 'random')
  export declare function random(ptr: usize, len: i32): i32;

  /** Grant `clock`: wall-clock milliseconds since the epoch (not deterministic). */
  @external('roost', 'clock')
  export declare function clock(): i64;

  /** Grant `fetch`: an HTTP request (JSON); the response's length, or E_FAILED / E_DENIED. */
  @external('roost', 'fetch')
  export declare function fetch(ptr: usize, len: i32): i32;

  /** Grant `sandbox`: a command in a granted sandbox (JSON); the result's length, or E_FAILED / E_DENIED. */
  @external('roost', 'sandbox_exec')
  export declare function sandbox_exec(ptr: usize, len: i32): i32;
}

// ---------------------------------------------------------------------------
// Bytes and strings.

/** The address of a byte array's first byte. */
@inline
function ptrOf(bytes: Uint8Array): usize {
  return bytes.dataStart;
}

/** A string as UTF-8 bytes (no terminating zero). */
export function utf8(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

/** UTF-8 bytes as a string. */
export function text(bytes: Uint8Array): string {
  return String.UTF8.decodeUnsafe(bytes.dataStart, bytes.length);
}

/** Reads a whole buffer through `msg_read` (from_result false) or `result_read` (true), growing as needed. */
function readAll(fromResult: bool): Uint8Array {
  let buf = new Uint8Array(256);
  let total = 0;
  while (true) {
    const room = buf.length - total;
    const n = fromResult ? abi.result_read(ptrOf(buf) + total, total, room) : abi.msg_read(ptrOf(buf) + total, total, room);
    total += n;
    if (n < room) break;
    const bigger = new Uint8Array(buf.length * 2);
    bigger.set(buf);
    buf = bigger;
  }
  return buf.subarray(0, total);
}

// ---------------------------------------------------------------------------
// The message.

/**
 * The message's bytes. Pass `handle`'s `len` to read it in one call;
 * without it the message is read in growing chunks.
 */
export function message(len: i32 = -1): Uint8Array {
  if (len < 0) return readAll(false);
  const buf = new Uint8Array(len);
  const n = abi.msg_read(ptrOf(buf), 0, len);
  return n == len ? buf : buf.subarray(0, n);
}

/** The message as UTF-8 text. */
export function messageText(len: i32 = -1): string {
  return text(message(len));
}

/** The reference of this message's sender, or 0 (from outside the actor system, or a timer). */
export function sender(): i32 {
  return abi.sender();
}

/** The message's logical time (a Lamport clock). */
export function logicalTime(): i64 {
  return abi.time();
}

// ---------------------------------------------------------------------------
// State: a key-value tree of bytes, committed with the message.

/** The value of `key`, or null if it is not set. */
export function stateGet(key: string): Uint8Array | null {
  const k = utf8(key);
  let buf = new Uint8Array(256);
  const n = abi.state_get(ptrOf(k), k.length, ptrOf(buf), buf.length);
  if (n < 0) return null;
  if (n <= buf.length) return buf.subarray(0, n);
  buf = new Uint8Array(n);
  abi.state_get(ptrOf(k), k.length, ptrOf(buf), n);
  return buf;
}

/** The value of `key` as UTF-8 text, or null if it is not set. */
export function stateGetText(key: string): string | null {
  const value = stateGet(key);
  return value === null ? null : text(value);
}

/** Sets `key` to `value`. Aborts on E_LIMIT (see `abi.state_set` to handle it). */
export function stateSet(key: string, value: Uint8Array): void {
  const k = utf8(key);
  check(abi.state_set(ptrOf(k), k.length, ptrOf(value), value.length), 'state_set');
}

/** Sets `key` to `value` as UTF-8 text. */
export function stateSetText(key: string, value: string): void {
  stateSet(key, utf8(value));
}

/** Deletes `key`: true if it was there. */
export function stateDelete(key: string): bool {
  const k = utf8(key);
  return abi.state_delete(ptrOf(k), k.length) == 1;
}

// ---------------------------------------------------------------------------
// Replies, messages, children, timers.

/** Sets the reply to a `call` (the last one wins). Aborts on E_LIMIT. */
export function reply(bytes: Uint8Array): void {
  check(abi.reply(ptrOf(bytes), bytes.length), 'reply');
}

/** Sets the reply as UTF-8 text. */
export function replyText(s: string): void {
  reply(utf8(s));
}

/** Sends `bytes` to the actor `ref` refers to. Aborts on E_BAD_REF or E_LIMIT (see `abi.send`). */
export function send(ref: i32, bytes: Uint8Array): void {
  check(abi.send(ref, ptrOf(bytes), bytes.length), 'send');
}

/** Sends UTF-8 text to the actor `ref` refers to. */
export function sendText(ref: i32, s: string): void {
  send(ref, utf8(s));
}

/**
 * Creates a child actor from the module `digest` (`sha256:<64 hex>`) with
 * `init` bytes; returns its reference. The child has this actor's grants and
 * limits, and a reference to it (the child's ref 1). Aborts on E_NOT_FOUND,
 * E_INVALID or E_LIMIT (see `abi.create` to handle them).
 */
export function createChild(digest: string, init: Uint8Array): i32 {
  const d = utf8(digest);
  return check(abi.create(ptrOf(d), d.length, ptrOf(init), init.length), 'create');
}

/** A durable timer: `bytes` come back to this actor after `delayMs` (from sender 0). Aborts on E_LIMIT. */
export function setTimer(delayMs: i64, bytes: Uint8Array): void {
  check(abi.timer(delayMs, ptrOf(bytes), bytes.length), 'timer');
}

/** A log line. */
export function log(s: string): void {
  const b = utf8(s);
  abi.log(ptrOf(b), b.length);
}

// ---------------------------------------------------------------------------
// Granted imports.

/** The bytes of the last `fetch` / `sandbox_exec` result, `len` being what that call returned. */
export function resultBytes(len: i32): Uint8Array {
  if (len < 0) return readAll(true);
  const buf = new Uint8Array(len);
  const n = abi.result_read(ptrOf(buf), 0, len);
  return n == len ? buf : buf.subarray(0, n);
}

/** Grant `random`: `n` bytes, deterministic per actor and message. */
export function randomBytes(n: i32): Uint8Array {
  const buf = new Uint8Array(n);
  abi.random(ptrOf(buf), n);
  return buf;
}

/** Grant `clock`: wall-clock milliseconds since the epoch (not deterministic). */
export function clockMs(): i64 {
  return abi.clock();
}

/**
 * Grant `fetch`: an HTTP request through the actor's egress policy.
 * `requestJson` is `{"url": ..., "method": ..., "headers": {...}, "body": ...}`;
 * returns the response JSON `{"status": ..., "headers": {...}, "body": ...}`.
 * Aborts on E_FAILED or E_DENIED (see `abi.fetch` to handle them).
 */
export function fetch(requestJson: string): string {
  const req = utf8(requestJson);
  const len = check(abi.fetch(ptrOf(req), req.length), 'fetch');
  return text(resultBytes(len));
}

/**
 * Grant `sandbox`: runs a command in a granted microVM sandbox.
 * `requestJson` is `{"sandbox": NAME, "cmd": [...], "stdin": ...}`; returns
 * the result JSON `{"exitCode": ..., "stdout": ..., "stderr": ...}`.
 * Aborts on E_FAILED or E_DENIED (see `abi.sandbox_exec` to handle them).
 */
export function sandboxExec(requestJson: string): string {
  const req = utf8(requestJson);
  const len = check(abi.sandbox_exec(ptrOf(req), req.length), 'sandbox_exec');
  return text(resultBytes(len));
}

// ---------------------------------------------------------------------------
// Helpers.

/** `code` if it is not negative; else aborts the message with `what` and the code's name. */
export function check(code: i32, what: string): i32 {
  if (code < 0) throw new Error(what + ' failed: ' + errorName(code));
  return code;
}

/** `s` as a JSON string literal, quotes included (for building `fetch` / `sandbox_exec` requests). */
export function jsonString(s: string): string {
  let out = '"';
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let esc: string | null = null;
    if (c == 0x22) esc = '\\"';
    else if (c == 0x5c) esc = '\\\\';
    else if (c == 0x0a) esc = '\\n';
    else if (c == 0x0d) esc = '\\r';
    else if (c == 0x09) esc = '\\t';
    else if (c < 0x20) esc = '\\u00' + (c < 0x10 ? '0' : '') + c.toString(16);
    if (esc !== null) {
      out += s.substring(from, i) + esc;
      from = i + 1;
    }
  }
  return out + s.substring(from) + '"';
}

/** A decimal integer (optionally signed), or `fallback` if `s` is null, empty or not one. */
export function parseDecimal(s: string | null, fallback: i64 = 0): i64 {
  if (s === null) return fallback;
  const t = s;
  if (t.length == 0) return fallback;
  let i = 0;
  let negative = false;
  if (t.charCodeAt(0) == 0x2d) {
    negative = true;
    i = 1;
    if (t.length == 1) return fallback;
  }
  let n: i64 = 0;
  for (; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return fallback;
    n = n * 10 + (c - 0x30);
  }
  return negative ? -n : n;
}
