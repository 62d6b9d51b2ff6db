/**
 * What a VM's file server is told (a JSON file beside its sockets) and
 * what it saves for a snapshot. Shared by the server process (main.ts) and
 * the runtime that starts and controls it (process.ts).
 */
import type { SessionSnapshot } from '@roost/p9';

/** One volume as the file server exports it to a VM: channel N is export `vN`. */
export interface FileExport {
  channel: number;
  /** The host directory (absolute, resolved); unused for a remote volume. */
  path: string;
  readOnly: boolean;
  /** The most bytes the volume may hold (named volumes with a quota). */
  quotaBytes?: number;
  /** A remote volume: its credentials file (0600; the token is read from it by the server, never passed on). */
  remote?: string;
}

/** The file server's configuration file. */
export interface FileServerConfig {
  /** The unix socket QEMU serves the VM's `roost.p9` port on. */
  socket: string;
  /** The VM's process: a server still waiting to connect when it is gone ends. */
  vmPid?: number;
  /** Where the server listens for its owner's commands (quiesce, resume). */
  control: string;
  exports: FileExport[];
  /** A saved state (FileServerState) to rebuild the sessions from: a VM restored from a snapshot. */
  restore?: string;
}

/** One channel's saved session: what a restored VM's file server rebuilds. */
export interface SavedChannel {
  channel: number;
  session: SessionSnapshot;
  /** Bytes the guest had sent that the session had not read yet (base64). */
  unread: string;
}

/** The sessions of a VM's volumes at a snapshot (the relay quiesced, nothing in transit). */
export interface FileServerState {
  format: 1;
  channels: SavedChannel[];
}

/** A command to the file server (one JSON line) and its answer. */
export type ControlRequest = { op: 'quiesce'; timeoutMs: number } | { op: 'resume' } | { op: 'ping' };
export type ControlAnswer = { ok: true; state?: FileServerState; pid?: number } | { ok: false; error: string };

/** The files of a VM's file server in its sandbox directory. */
export const FILE_SERVER_FILES = {
  config: 'files.json',
  control: 'files.ctl',
  log: 'files.log',
} as const;

/** The 9P export name of a channel (the guest mounts with `aname=vN`). */
export function exportName(channel: number): string {
  return `v${channel}`;
}
