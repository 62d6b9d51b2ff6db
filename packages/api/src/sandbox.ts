import type { FilesApi, VolumesApi } from './files.js';
import type { SnapshotInfo, SnapshotsApi, TemplatesApi } from './snapshots.js';
import { RoostError } from './errors.js';
import type { NetworkStats, PortBinding, PortProtocol, PortSpec } from './network.js';
import type { CreateSandboxRequest, ExecResult, ListSandboxesQuery, RoostEvent, SandboxInfo, SandboxStatus } from './schemas.js';

/*
 * The interface both faces of Roost implement: the embedded runtime
 * (@roost/core) and the remote client (@roost/client). Code written against
 * these types moves between them by changing the one line that opens the
 * runtime or the client.
 */

/** Output callback: receives text as it arrives (a promise it returns applies backpressure). */
export type OutputCallback = (data: string) => void | Promise<void>;

/** Options of `commands.run` and `commands.start`. */
export interface RunOptions {
  /** Arguments: with them, `cmd` is the program itself and no shell is involved. */
  args?: string[];
  /** Environment, added to the sandbox's. */
  env?: Record<string, string>;
  /** Working directory (default: the image's WorkingDir, else `/`). */
  cwd?: string;
  /** A user name, a uid, `uid:gid` or `name:group` (default: the image's User, else root). */
  user?: string | number;
  /** Standard input: all of it is written, then stdin is closed. Without it, stdin is /dev/null (unless `start` is asked for `stdin: true`). */
  stdin?: string | Uint8Array | AsyncIterable<Uint8Array | string> | boolean;
  /** Run on a pseudo-terminal (stdout and stderr merge). */
  pty?: boolean | { rows?: number; cols?: number };
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  /** Kill the command after this long (the result is a TIMEOUT error). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** How a command ended. */
export interface CommandResult extends ExecResult {
  /** The exit status; 128 + n when signal n ended the process (as shells report it). */
  exitCode: number;
  /** The signal that ended the process, if one did. */
  signal: NodeJS.Signals | null;
}

/** A running command. */
export interface CommandHandleApi extends AsyncDisposable {
  /** The command's id in its runtime (the REST API's execId). */
  readonly id: string;
  /** The process id inside the guest. */
  readonly pid: number;
  readonly stdout: AsyncIterable<Uint8Array>;
  readonly stderr: AsyncIterable<Uint8Array>;
  readonly exited: boolean;
  wait(): Promise<CommandResult>;
  write(data: string | Uint8Array): Promise<void>;
  closeStdin(): void;
  kill(signal?: NodeJS.Signals | number): void;
  resize(size: { rows: number; cols: number }): void;
}

/** `sandbox.commands`. */
export interface CommandsApi {
  run(cmd: string | string[], options?: RunOptions): Promise<CommandResult>;
  start(cmd: string | string[], options?: RunOptions): Promise<CommandHandleApi>;
}

/** A sandbox, embedded or remote. */
export interface SandboxApi extends AsyncDisposable {
  readonly id: string;
  /** The record as last seen (remote: refresh with `refresh()`). */
  readonly info: SandboxInfo;
  readonly status: SandboxStatus;
  readonly commands: CommandsApi;
  readonly files: FilesApi;
  /** Re-reads the record. */
  refresh(): Promise<SandboxInfo>;
  stop(options?: { timeoutMs?: number }): Promise<void>;
  /** Boots a stopped sandbox again, on the disk it had. */
  start(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<void>;
  kill(): Promise<void>;
  remove(options?: { force?: boolean }): Promise<void>;
  /** Stops the vCPUs; memory stays, commands wait (status `paused`). A paused sandbox stays as it is; INVALID_STATE unless running or paused. */
  pause(): Promise<void>;
  /** Continues a paused sandbox exactly where it was (a running one is left as it is). */
  resume(): Promise<void>;
  /** Saves memory, device state and disk as a snapshot (the sandbox runs on, or stays paused). */
  snapshot(options?: { name?: string; timeoutMs?: number; signal?: AbortSignal }): Promise<SnapshotInfo>;
  /** Running copies of this sandbox, each with its own id, memory and disk; this one runs on. */
  fork(options?: { count?: number; labels?: Record<string, string>; detached?: boolean; timeoutMs?: number; signal?: AbortSignal }): Promise<SandboxApi[]>;
  /** Its published ports: add and remove them while it runs (or while stopped: they apply at the next start). */
  readonly ports: PortsApi;
  /**
   * Where the host reaches guest port `port`: `host:port` of the published
   * port (the first one, for several), or in bridge mode the sandbox's own
   * address when the port is not published. NOT_FOUND otherwise.
   */
  getHost(port: number, protocol?: PortProtocol): string;
  /** Traffic through its NIC since it last started, and connections its egress policy denied. */
  networkStats(): Promise<NetworkStats>;
}

/** A sandbox's published ports. */
export interface PortsApi {
  /** Publishes a guest port; resolves to where the host listens (a free port for host port 0). ALREADY_EXISTS if that host port is published, UNAVAILABLE if another program holds it. */
  add(spec: PortSpec): Promise<PortBinding>;
  list(): Promise<PortBinding[]>;
  /** Stops publishing a host port (a number: that TCP port on any address). Open connections through it are closed. */
  remove(port: number | { hostPort: number; hostIp?: string; protocol?: PortProtocol }): Promise<void>;
}

/** `host:port` for a published port (brackets for IPv6), the address a client connects to (0.0.0.0 means this host: 127.0.0.1). */
export function hostForBinding(b: PortBinding): string {
  const ip = b.hostIp === '0.0.0.0' ? '127.0.0.1' : b.hostIp;
  return `${ip.includes(':') ? `[${ip}]` : ip}:${b.hostPort}`;
}

/** The answer of getHost, from a sandbox's record (both faces use it). */
export function hostForPort(info: SandboxInfo, port: number, protocol: PortProtocol = 'tcp'): string {
  const net = info.network;
  const binding = net?.ports.find((p) => p.guestPort === port && p.protocol === protocol);
  if (binding) return hostForBinding(binding);
  if (net?.mode === 'bridge' && net.address) return `${net.address}:${port}`;
  throw new RoostError('NOT_FOUND', `port ${port}/${protocol} of sandbox ${info.id} is not published${net?.mode === 'none' || !net ? ' (it has no network)' : `: publish it with sandbox.ports.add('127.0.0.1::${port}${protocol === 'udp' ? '/udp' : ''}') or \`roost port add ${info.id.slice(0, 12)} ${port}\``}`);
}

/** Options of `create`, embedded or remote. */
export interface CreateOptions extends CreateSandboxRequest {
  signal?: AbortSignal;
}

/** A runtime: `Runtime` (embedded) or `RoostClient` (remote). */
export interface RuntimeApi extends AsyncDisposable {
  readonly volumes: VolumesApi;
  readonly snapshots: SnapshotsApi;
  readonly templates: TemplatesApi;
  create(options?: CreateOptions): Promise<SandboxApi>;
  get(id: string): Promise<SandboxApi>;
  list(filter?: ListFilter): Promise<SandboxInfo[]>;
  /** Events after `after` (an event id), then live ones, until `signal` aborts. */
  events(options?: { after?: number; signal?: AbortSignal }): AsyncIterable<RoostEvent>;
  close(): Promise<void>;
}

/** Filters of `list`. Labels match `key` (present) or `key=value`. */
export interface ListFilter {
  status?: SandboxStatus | SandboxStatus[];
  image?: string;
  labels?: string[];
}

/** Turns query parameters into a ListFilter (the daemon and the CLI share it). */
export function listFilterFromQuery(q: ListSandboxesQuery): ListFilter {
  const f: ListFilter = {};
  if (q.status) f.status = q.status.split(',').map((s) => s.trim()).filter(Boolean) as SandboxStatus[];
  if (q.image) f.image = q.image;
  if (q.label !== undefined) f.labels = Array.isArray(q.label) ? q.label : [q.label];
  return f;
}

/** True when a record passes a filter (used by both faces, so they agree). */
export function matchesFilter(info: SandboxInfo, f: ListFilter): boolean {
  if (f.status) {
    const wanted = Array.isArray(f.status) ? f.status : [f.status];
    if (!wanted.includes(info.status)) return false;
  }
  if (f.image && !(info.image && (info.image.reference === f.image || info.image.id.startsWith(f.image) || info.image.id.slice(7).startsWith(f.image)))) return false;
  for (const l of f.labels ?? []) {
    const eq = l.indexOf('=');
    if (eq < 0 ? !(l in info.labels) : info.labels[l.slice(0, eq)] !== l.slice(eq + 1)) return false;
  }
  return true;
}
