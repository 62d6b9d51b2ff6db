/**
 * Protocol constants, frozen by `constants.test.ts`. Changes are additive:
 * new values may be added, existing ones never change. See docs/PROTOCOL.md.
 */

/** The protocol version agreed at handshake. */
export const VERSION = 1;

/** Bytes in a frame header: length (u32) + stream (u32) + type (u8). */
export const HEADER_SIZE = 9;
/** The header bytes counted by the length field: stream + type. */
export const LENGTH_OVERHEAD = 5;
/** Largest payload a frame may carry. */
export const MAX_PAYLOAD = 65536;
/** Largest value of a frame's length field. */
export const MAX_FRAME_LENGTH = LENGTH_OVERHEAD + MAX_PAYLOAD;

/** The control stream. */
export const CONTROL_STREAM = 0;
/** Concurrent streams one connection may have open. */
export const MAX_STREAMS = 256;
/** Bytes of entropy the host may send in HELLO. */
export const MAX_ENTROPY = 512;
/** Bytes of a nonce or a PING payload. */
export const MAX_NONCE = 64;
/** HELLO's NET value: mac[6] mtu(u16 BE) address[4] prefix(u8) gateway[4] dns[4]. */
export const NET_CONFIG_LEN = 21;
/** Default credit for fd 1 and fd 2 when EXEC names no WINDOW. */
export const DEFAULT_WINDOW = 262144;

/** Frame types. */
export const MessageType = {
  HELLO: 0x01,
  PING: 0x02,
  PONG: 0x03,
  POWEROFF: 0x04,
  ERROR: 0x05,
  /** Host → agent on stream 0: sync and freeze the sandbox's disk before a snapshot; answered with FREEZE {ERRNO, MESSAGE}. */
  FREEZE: 0x06,
  /** Host → agent on stream 0: thaw the disk after a snapshot; answered with THAW {ERRNO, MESSAGE}. */
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
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/** TLV tags. */
export const Tag = {
  VERSION: 0x0001,
  FLAGS: 0x0002,
  TIME_NS: 0x0003,
  ENTROPY: 0x0004,
  NONCE: 0x0005,
  AGENT_VERSION: 0x0006,
  MAX_PAYLOAD: 0x0007,
  NET: 0x0008,
  /** Agent HELLO: the Capability bits it serves (u32). Absent in agents older than roost-agent 0.2.0. */
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
} as const;
export type Tag = (typeof Tag)[keyof typeof Tag];

/** CALL_FLAGS bits (docs/PROTOCOL.md, "Calls"). */
export const CallFlags = {
  /** `remove`: a directory and everything below it; `watch`: subdirectories too. */
  RECURSIVE: 0x1,
  /** `write`, `mkdir`, `extract`, `rename`: create missing parents; `mkdir`: an existing directory is not an error. */
  PARENTS: 0x2,
  /** `write`, `rename`: fail with EEXIST if the target exists. */
  NO_REPLACE: 0x4,
  /** `stat`: follow a final symlink. */
  FOLLOW: 0x8,
  /** `mount`: mount read-only. */
  READ_ONLY: 0x10,
  /** `archive`: the operand is the number of a layer `commit` sealed; the archive keeps extended attributes (root only). */
  LAYER: 0x20,
  /**
   * `mount`: over the 9P relay (capability `P9_RELAY`): the operands are a channel
   * (decimal 0..65535) and the target; the guest mounts the host's export `v<channel>`
   * through the `roost.p9` port (docs/PROTOCOL.md, "The 9P relay port").
   */
  RELAY: 0x40,
} as const;

/** `EVENT` values of `watch` records. */
export const WatchEvent = {
  READY: 0,
  CREATE: 1,
  WRITE: 2,
  REMOVE: 3,
  /** Renamed from: `PATH` is the old name. */
  RENAME_FROM: 4,
  /** Renamed to: `PATH` is the new name. */
  RENAME_TO: 5,
  CHMOD: 6,
  /** The kernel's queue overflowed and events were lost. */
  OVERFLOW: 7,
} as const;
export type WatchEvent = (typeof WatchEvent)[keyof typeof WatchEvent];

/** Largest value of a call record's length field. */
export const MAX_RECORD = 65536;

/** HELLO FLAGS bits. */
export const HelloFlags = {
  /** The agent powers the VM off when this connection goes away. */
  POWEROFF_ON_DISCONNECT: 0x1,
} as const;

/**
 * CAPABILITIES bits of the agent's HELLO: what the agent serves of what was
 * added to protocol version 1 after its first agent. The host sends none of
 * these to an agent that did not announce it (an agent without the TLV
 * announces none). New features get new bits; VERSION stays 1 while every
 * change is additive. See docs/PROTOCOL.md, "Versions and capabilities".
 */
export const Capability = {
  /** FREEZE and THAW (snapshots). */
  FREEZE: 0x1,
  /** CALL: the built-in file operations. */
  CALL: 0x2,
  /** NET in HELLO: the agent configures eth0. */
  NET: 0x4,
  /** CALL `commit` and `archive` with LAYER: an image builder reads each step's changes as a layer. */
  LAYERS: 0x8,
  /** CALL `mount` with RELAY: volumes over the `roost.p9` port, served by the host's own 9P server. */
  P9_RELAY: 0x10,
} as const;
export type CapabilityName = keyof typeof Capability;

/** ERROR codes. */
export const ErrorCode = {
  PROTOCOL: 1,
  VERSION: 2,
  BAD_REQUEST: 3,
  NOT_FOUND: 4,
  INTERNAL: 5,
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** File descriptor numbers carried by DATA, EOF and CREDIT. */
export const Fd = { STDIN: 0, STDOUT: 1, STDERR: 2 } as const;
export type Fd = (typeof Fd)[keyof typeof Fd];
