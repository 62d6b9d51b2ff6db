import { describe, expect, it } from 'vitest';
import {
  CallFlags,
  Capability,
  DEFAULT_WINDOW,
  ErrorCode,
  Fd,
  HEADER_SIZE,
  HelloFlags,
  MAX_ENTROPY,
  MAX_NONCE,
  MAX_PAYLOAD,
  MAX_RECORD,
  MAX_STREAMS,
  MessageType,
  Tag,
  VERSION,
  WatchEvent,
} from './constants.js';

// These numbers are on the wire and in the C agent (guest/agent/proto.h).
// Changing one breaks every agent already built: add, never change.
describe('protocol constants are frozen', () => {
  it('keeps version, sizes and limits', () => {
    expect({ VERSION, HEADER_SIZE, MAX_PAYLOAD, MAX_STREAMS, MAX_ENTROPY, MAX_NONCE, DEFAULT_WINDOW }).toEqual({
      VERSION: 1,
      HEADER_SIZE: 9,
      MAX_PAYLOAD: 65536,
      MAX_STREAMS: 256,
      MAX_ENTROPY: 512,
      MAX_NONCE: 64,
      DEFAULT_WINDOW: 262144,
    });
  });
  it('keeps message types', () => {
    expect(MessageType).toEqual({
      HELLO: 0x01,
      PING: 0x02,
      PONG: 0x03,
      POWEROFF: 0x04,
      ERROR: 0x05,
      FREEZE: 0x06,
      THAW: 0x07,
      EXEC: 0x10,
      STARTED: 0x11,
      DATA: 0x12,
      EOF: 0x13,
      CREDIT: 0x14,
      SIGNAL: 0x15,
      RESIZE: 0x16,
      EXIT: 0x17,
      CALL: 0x18,
    });
  });
  it('keeps TLV tags', () => {
    expect(Tag).toEqual({
      VERSION: 0x0001,
      FLAGS: 0x0002,
      TIME_NS: 0x0003,
      ENTROPY: 0x0004,
      NONCE: 0x0005,
      AGENT_VERSION: 0x0006,
      MAX_PAYLOAD: 0x0007,
      NET: 0x0008,
      CAPABILITIES: 0x0009,
      CODE: 0x0010,
      MESSAGE: 0x0011,
      ARG: 0x0020,
      ENV: 0x0021,
      CWD: 0x0022,
      USER: 0x0023,
      PTY: 0x0024,
      ROWS: 0x0025,
      COLS: 0x0026,
      TIMEOUT_MS: 0x0027,
      STDIN: 0x0028,
      WINDOW: 0x0029,
      PID: 0x0030,
      STDIN_WINDOW: 0x0031,
      EXIT_CODE: 0x0040,
      EXIT_SIGNAL: 0x0041,
      TIMED_OUT: 0x0042,
      OP: 0x0050,
      MODE: 0x0051,
      CALL_FLAGS: 0x0052,
      DEPTH: 0x0053,
      SIZE: 0x0054,
      PATH: 0x0060,
      NAME: 0x0061,
      ST_MODE: 0x0062,
      UID: 0x0063,
      GID: 0x0064,
      MTIME_NS: 0x0065,
      LINK: 0x0066,
      EVENT: 0x0067,
      ERRNO: 0x0068,
    });
  });
  it('keeps error codes, flags and fds', () => {
    expect(ErrorCode).toEqual({ PROTOCOL: 1, VERSION: 2, BAD_REQUEST: 3, NOT_FOUND: 4, INTERNAL: 5 });
    expect(HelloFlags).toEqual({ POWEROFF_ON_DISCONNECT: 1 });
    expect(Capability).toEqual({ FREEZE: 0x1, CALL: 0x2, NET: 0x4, LAYERS: 0x8, P9_RELAY: 0x10 });
    expect(Fd).toEqual({ STDIN: 0, STDOUT: 1, STDERR: 2 });
  });
  it('keeps call flags, watch events and the record bound', () => {
    expect(CallFlags).toEqual({ RECURSIVE: 0x1, PARENTS: 0x2, NO_REPLACE: 0x4, FOLLOW: 0x8, READ_ONLY: 0x10, LAYER: 0x20, RELAY: 0x40 });
    expect(WatchEvent).toEqual({ READY: 0, CREATE: 1, WRITE: 2, REMOVE: 3, RENAME_FROM: 4, RENAME_TO: 5, CHMOD: 6, OVERFLOW: 7 });
    expect(MAX_RECORD).toBe(65536);
  });
});
