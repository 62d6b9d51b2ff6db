import type { FilesApi, VolumesApi } from './files.js';
import type { ImagesApi, PullProgress } from './images.js';
import type { SnapshotInfo, SnapshotsApi, TemplatesApi } from './snapshots.js';
import type { PoolsApi } from './pools.js';
import type { DeploymentsApi } from './deployments.js';
import { RoostError } from './errors.js';
import type { NetworkStats, PortBinding, PortProtocol, PortSpec } from './network.js';
import type { DoctorOptions, DoctorReport } from './doctor.js';
import type { ActorsApi } from './actors.js';
import type { CreateSandboxRequest, ExecResult, ExpiryAction, ListSandboxesQuery, RoostEvent, SandboxInfo, SandboxStatus } from './schemas.js';

/*
 * The interface both faces of Roost implement: the embedded runtime
 * (@roost/core) and the remote client (@roost/client). Code written against
 * these types moves between them by changing the one line that opens the
 * runtime or the client.
 *
 * Every method states its concurrency guarantee in one line ("Concurrency:"),
 * as gVisor's 9P File interface does: which calls are serialized with which,
 * and which may overlap freely. "Lifecycle calls" of a sandbox are start,
 * stop, kill, remove, pause, resume, snapshot and fork's snapshot: they run
 * one after the other, in the order they were made.
 */

/** Output callback: receives text as it arrives (a promise it returns applies backpressure). */
export type OutputCallback = (data: string) => void | Promise<void>;

/** Options of `commands.run` and `commands.start` (validated by RunOptionsSchema). */
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
  /** Waits for the process to exit; output not read through the iterables is collected into the result. Concurrency: any number of waits share one result. */
  wait(): Promise<CommandResult>;
  /** Writes to stdin (start with `stdin: true`); resolves when there is room for more. Concurrency: writes are delivered in the order they are made. */
  write(data: string | Uint8Array): Promise<void>;
  /** Closes stdin. Concurrency: ordered after the writes made before it. */
  closeStdin(): void;
  /** Signals the process group (default SIGKILL; INVALID_ARGUMENT for an unknown signal). Concurrency: sent at once, not behind queued writes. */
  kill(signal?: NodeJS.Signals | number): void;
  /** Sets a PTY command's terminal size (INVALID_ARGUMENT outside 1..MAX_TERMINAL_SIZE). Concurrency: sent at once, not behind queued writes. */
  resize(size: { rows: number; cols: number }): void;
}

/** `sandbox.commands`. */
export interface CommandsApi {
  /** Runs a command to completion; a non-zero exit is a result, a timeout a TIMEOUT error. Concurrency: any number of commands run at once, each on its own stream; they wait while the sandbox is paused. */
  run(cmd: string | string[], options?: RunOptions): Promise<CommandResult>;
  /** Starts a command and resolves once it runs. Concurrency: as `run`. */
  start(cmd: string | string[], options?: RunOptions): Promise<CommandHandleApi>;
}

/** A sandbox, embedded or remote. */
/** `sandbox.fork` options (ForkRequest, plus a signal): one shape for the embedded runtime and the SDK. */
export interface ForkOptions {
  count?: number;
  labels?: Record<string, string>;
  detached?: boolean;
  volumes?: 'shared' | 'copy';
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface SandboxApi extends AsyncDisposable {
  readonly id: string;
  /** The record as last seen (remote: refresh with `refresh()`). */
  readonly info: SandboxInfo;
  readonly status: SandboxStatus;
  readonly commands: CommandsApi;
  readonly files: FilesApi;
  /** Re-reads the record. Concurrency: not serialized; sees the record as the last finished lifecycle call left it. */
  refresh(): Promise<SandboxInfo>;
  /** Stops the sandbox (the VM is killed after `timeoutMs`, default 10 s). Concurrency: a lifecycle call, serialized with the others. */
  stop(options?: { timeoutMs?: number }): Promise<void>;
  /** Boots a stopped sandbox again, on the disk it had. Concurrency: a lifecycle call, serialized with the others. */
  start(options?: { timeoutMs?: number; signal?: AbortSignal }): Promise<void>;
  /** Kills the VM at once. Concurrency: a lifecycle call, serialized with the others. */
  kill(): Promise<void>;
  /** Removes the sandbox: record, disk and logs (a running one needs `force`). Concurrency: a lifecycle call, serialized with the others; later calls fail NOT_FOUND. */
  remove(options?: { force?: boolean }): Promise<void>;
  /** Stops the vCPUs; memory stays, commands wait (status `paused`). A paused sandbox stays as it is; INVALID_STATE unless running or paused. Concurrency: a lifecycle call, serialized with the others. */
  pause(): Promise<void>;
  /** Continues a paused sandbox exactly where it was (a running one is left as it is). Concurrency: a lifecycle call, serialized with the others. */
  resume(): Promise<void>;
  /** Saves memory, device state and disk as a snapshot (the sandbox runs on, or stays paused). Concurrency: a lifecycle call, serialized with the others; commands and file calls wait while the guest is frozen. */
  snapshot(options?: { name?: string; timeoutMs?: number; signal?: AbortSignal }): Promise<SnapshotInfo>;
  /** Running copies of this sandbox, each with its own id, memory and disk; this one runs on. Concurrency: its snapshot is a lifecycle call; the copies boot in parallel after it. */
  fork(options?: ForkOptions): Promise<SandboxApi[]>;
  /** Its published ports: add and remove them while it runs (INVALID_STATE while stopped; ports given at create are bound at each boot). */
  readonly ports: PortsApi;
  /**
   * Where the host reaches guest port `port`: `host:port` of the published
   * port (the first one, for several), or in bridge mode the sandbox's own
   * address when the port is not published. NOT_FOUND otherwise.
   * Concurrency: synchronous, from the record as last seen.
   */
  getHost(port: number, protocol?: PortProtocol): string;
  /** Traffic through its NIC since it last started, and connections its egress policy denied. Concurrency: not serialized; any number at once. */
  networkStats(): Promise<NetworkStats>;
  /**
   * Sets when the sandbox ends: `lifetimeMs` from now (null: never), doing
   * `onExpiry` then (default: what was set, else remove). With `extendOnly`,
   * a later end already set is kept. Resolves with the record.
   * Concurrency: not serialized with lifecycle calls; the last call wins.
   */
  setLifetime(lifetimeMs: number | null, options?: { extendOnly?: boolean; onExpiry?: ExpiryAction }): Promise<SandboxInfo>;
  /** Its serial console log, or its last `tail` lines. Concurrency: not serialized; reads the log as written so far. */
  logs(options?: { tail?: number; signal?: AbortSignal }): Promise<string>;
}

/** A sandbox's published ports. */
export interface PortsApi {
  /** Publishes a guest port while the sandbox runs; resolves to where the host listens (a free port for host port 0). ALREADY_EXISTS if that host port is published, UNAVAILABLE if another program holds it, INVALID_STATE unless running. Concurrency: not serialized with lifecycle calls; adds and removes may overlap, each binding is recorded as it completes. */
  add(spec: PortSpec): Promise<PortBinding>;
  /** The published ports. Concurrency: any number at once. */
  list(): Promise<PortBinding[]>;
  /** Stops publishing a host port (a number: that TCP port on any address). Open connections through it are closed. Concurrency: as `add`. */
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
  throw new RoostError(
    'NOT_FOUND',
    `port ${port}/${protocol} of sandbox ${info.id} is not published${net?.mode === 'none' || !net ? ' (it has no network)' : `: publish it with sandbox.ports.add('127.0.0.1::${port}${protocol === 'udp' ? '/udp' : ''}') or \`roost port add ${info.id.slice(0, 12)} ${port}\``}`,
  );
}

/** Options of `create`, embedded or remote (validated by CreateOptionsSchema). */
export interface CreateOptions extends CreateSandboxRequest {
  signal?: AbortSignal;
  /** Progress of the image pull, per blob (remote: the image is pulled first when it is missing). */
  onPullProgress?: (p: PullProgress) => void;
}

/** A runtime: `Runtime` (embedded) or `RoostClient` (remote). */
export interface RuntimeApi extends AsyncDisposable {
  readonly images: ImagesApi;
  readonly volumes: VolumesApi;
  readonly snapshots: SnapshotsApi;
  readonly templates: TemplatesApi;
  /** Warm pools: sandboxes kept restored and paused, handed over by `create({ pool })`. */
  readonly pools: PoolsApi;
  /** Deployments: workloads with a replica count, health checks and service ports that the runtime owning the home keeps true. */
  readonly deployments: DeploymentsApi;
  /** Actors: WASM programs with a versioned state tree and a mailbox, Roost's second isolation tier (docs/actors.md). */
  readonly actors: ActorsApi;
  /** Creates and boots a sandbox (or restores one). Concurrency: any number at once; each sandbox is its own. */
  create(options?: CreateOptions): Promise<SandboxApi>;
  /** A sandbox by id or unique id prefix. Concurrency: any number at once. */
  get(id: string): Promise<SandboxApi>;
  /** Records that pass a filter, newest first. Concurrency: any number at once. */
  list(filter?: ListFilter): Promise<SandboxInfo[]>;
  /** Events after `after` (an event id), then live ones, until `signal` aborts. Concurrency: any number of readers, each sees every event. */
  events(options?: { after?: number; signal?: AbortSignal }): AsyncIterable<RoostEvent>;
  /** Checks the home against the VM processes and files found, and with `repair` rebuilds what it safely can (see docs/recovery.md). Concurrency: one at a time per home; lifecycle calls may overlap. */
  doctor(options?: DoctorOptions): Promise<DoctorReport>;
  /** Closes the runtime (embedded: non-detached sandboxes stop) or the connection. Concurrency: calls in flight end with ABORTED. */
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
  if (q.status)
    f.status = q.status
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean) as SandboxStatus[];
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
  if (f.image && !(info.image && (info.image.reference === f.image || info.image.id.startsWith(f.image) || info.image.id.slice(7).startsWith(f.image))))
    return false;
  for (const l of f.labels ?? []) {
    const eq = l.indexOf('=');
    if (eq < 0 ? !(l in info.labels) : info.labels[l.slice(0, eq)] !== l.slice(eq + 1)) return false;
  }
  return true;
}
