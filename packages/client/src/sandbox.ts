import {
  ForkOptionsSchema,
  type ForkOptions,
  hostForPort,
  isRoostError,
  normalizePortSpec,
  parseInput,
  SetLifetimeRequestSchema,
  SnapshotOptionsSchema,
  type ExpiryAction,
  type SandboxApi,
  type SandboxInfo,
  type SandboxMetrics,
  type SandboxStatus,
  type SnapshotInfo,
} from '@roost/api';
import type { NetworkInfo, NetworkStats, PortBinding, PortProtocol, PortSpec, PortsApi } from '@roost/api';
import { RemoteCommands } from './command.js';
import { RemoteFiles } from './files.js';
import type { Transport } from './http.js';
import type { SessionLink } from './session.js';

/** Headroom over a call's own timeout for the daemon to answer (it enforces the timeout itself). */
const ANSWER_GRACE_MS = 15_000;

/**
 * A sandbox on a daemon. The same interface as core's Sandbox; `info` is the
 * record as last seen (each call that returns one updates it; `refresh()`
 * re-reads it).
 *
 * Concurrency: calls may overlap; each is one request, and the daemon orders them.
 */
export class RemoteSandbox implements SandboxApi {
  readonly id: string;
  /** Run commands: `run` to completion, or `start` for a handle. */
  readonly commands: RemoteCommands;
  /** Files in the guest: read, write, list, stat, watch, archives. */
  readonly files: RemoteFiles;
  /** Its published ports: add, list and remove them while it runs. */
  readonly ports: PortsApi;
  #info: SandboxInfo;
  #transport: Transport;
  #path: string;
  #session: SessionLink | undefined;

  /** @internal Use `client.create()` or `client.get()`. */
  constructor(transport: Transport, info: SandboxInfo, session?: SessionLink) {
    this.id = info.id;
    this.#session = session;
    this.#info = info;
    this.#transport = transport;
    this.#path = `/v1/sandboxes/${encodeURIComponent(info.id)}`;
    this.commands = new RemoteCommands(transport, info.id);
    this.files = new RemoteFiles(transport, this.#path);
    this.ports = {
      add: (spec) => this.#addPort(spec),
      list: () => this.#listPorts(),
      remove: (port) => this.#removePort(port),
    };
  }

  /** The record as last seen. */
  get info(): SandboxInfo {
    return structuredClone(this.#info);
  }

  get status(): SandboxStatus {
    return this.#info.status;
  }

  /** Re-reads the record from the daemon. */
  async refresh(): Promise<SandboxInfo> {
    this.#info = await this.#transport.json<SandboxInfo>('GET', this.#path);
    return this.info;
  }

  /** Stops the sandbox (the VM powers off; killed after `timeoutMs`, default 10 s). */
  async stop(options: { timeoutMs?: number } = {}): Promise<void> {
    const body = options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {};
    this.#info = await this.#transport.json<SandboxInfo>('POST', `${this.#path}/stop`, {
      json: body,
      timeoutMs: (options.timeoutMs ?? 10_000) + ANSWER_GRACE_MS,
    });
  }

  /** Boots a stopped sandbox again, on the disk it had. */
  async start(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    const body = options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {};
    this.#info = await this.#transport.json<SandboxInfo>('POST', `${this.#path}/start`, { json: body, signal: options.signal, timeoutMs: null });
  }

  /** Kills the VM at once. */
  async kill(): Promise<void> {
    this.#info = await this.#transport.json<SandboxInfo>('POST', `${this.#path}/kill`, { json: {} });
  }

  /** Removes the sandbox. A running sandbox needs `force` (it is killed). */
  async remove(options: { force?: boolean } = {}): Promise<void> {
    await this.#transport.json('DELETE', this.#path, { query: options.force ? { force: 'true' } : {} });
  }

  /** Stops the vCPUs: memory stays, commands wait (status `paused`). A paused one stays so; INVALID_STATE unless running or paused. */
  async pause(): Promise<void> {
    this.#info = await this.#transport.json<SandboxInfo>('POST', `${this.#path}/pause`, { json: {} });
  }

  /** Continues a paused sandbox exactly where it was (a running one is left as it is). */
  async resume(): Promise<void> {
    this.#info = await this.#transport.json<SandboxInfo>('POST', `${this.#path}/resume`, { json: {} });
  }

  /**
   * Sets when the sandbox ends: `lifetimeMs` from now, or never (null); with
   * `extendOnly`, a later end already set is kept. The daemon acts on it.
   */
  async setLifetime(lifetimeMs: number | null, options: { extendOnly?: boolean; onExpiry?: ExpiryAction } = {}): Promise<SandboxInfo> {
    const body = parseInput(SetLifetimeRequestSchema, { lifetimeMs, ...options }, 'lifetime');
    this.#info = await this.#transport.json<SandboxInfo>('POST', `${this.#path}/lifetime`, { json: body });
    return structuredClone(this.#info);
  }

  /**
   * Saves memory, device state and disk as a snapshot (the sandbox runs on,
   * or stays paused); restore it with `client.create({ snapshot })`. A name
   * that is taken is ALREADY_EXISTS.
   */
  async snapshot(options: { name?: string; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<SnapshotInfo> {
    parseInput(SnapshotOptionsSchema, options, 'snapshot options');
    const { signal, ...body } = options;
    return this.#transport.json<SnapshotInfo>('POST', `${this.#path}/snapshot`, {
      json: body,
      signal,
      timeoutMs: null,
      what: `snapshotting sandbox ${this.id}`,
    });
  }

  /** Running copies of this sandbox, each with its own id, memory and disk; this one runs on. */
  async fork(options: ForkOptions = {}): Promise<RemoteSandbox[]> {
    parseInput(ForkOptionsSchema, options, 'fork options');
    const { signal, ...body } = options;
    // Copies that are not detached belong to this client's session.
    const headers = (body.detached ?? this.#info.detached) || !this.#session ? {} : await this.#session.header();
    const r = await this.#transport.json<{ sandboxes: SandboxInfo[] }>('POST', `${this.#path}/fork`, {
      json: body,
      headers,
      signal,
      timeoutMs: null,
      what: `forking sandbox ${this.id}`,
    });
    return r.sandboxes.map((info) => new RemoteSandbox(this.#transport, info, this.#session));
  }

  /** The guest's console log (kernel, agent, output of background commands); `tail` keeps the last lines. */
  logs(options: { tail?: number; signal?: AbortSignal } = {}): Promise<string> {
    return this.#transport.text('GET', `${this.#path}/logs`, { accept: 'text/plain', query: { tail: options.tail }, signal: options.signal });
  }

  /** CPU and memory figures of the VM. */
  metrics(): Promise<SandboxMetrics> {
    return this.#transport.json<SandboxMetrics>('GET', `${this.#path}/metrics`);
  }

  /**
   * Where the host reaches guest port `port` (`127.0.0.1:32768`), from the
   * record as last seen: `ports.add` and `ports.remove` keep it current,
   * `refresh()` reads changes made elsewhere. NOT_FOUND when the port is
   * not published (in bridge mode: the sandbox's own address).
   */
  getHost(port: number, protocol: PortProtocol = 'tcp'): string {
    return hostForPort(this.#info, port, protocol);
  }

  /** Traffic through the sandbox's NIC since it last started, and connections its egress policy denied. */
  async networkStats(): Promise<NetworkStats> {
    const r = await this.#transport.json<{ network: NetworkInfo; stats: NetworkStats }>('GET', `${this.#path}/network`);
    this.#info = { ...this.#info, network: r.network };
    return r.stats;
  }

  async #listPorts(): Promise<PortBinding[]> {
    const r = await this.#transport.json<{ ports: PortBinding[] }>('GET', `${this.#path}/ports`);
    this.#setPorts(r.ports);
    return r.ports;
  }

  async #addPort(spec: PortSpec): Promise<PortBinding> {
    normalizePortSpec(spec); // the same check as core's, before a request is sent
    const binding = await this.#transport.json<PortBinding>('POST', `${this.#path}/ports`, { json: spec, what: `publishing a port of sandbox ${this.id}` });
    const ports = this.#info.network?.ports ?? [];
    this.#setPorts([...ports.filter((p) => !(p.hostPort === binding.hostPort && p.hostIp === binding.hostIp && p.protocol === binding.protocol)), binding]);
    return binding;
  }

  async #removePort(port: number | { hostPort: number; hostIp?: string; protocol?: PortProtocol }): Promise<void> {
    const want = typeof port === 'number' ? { hostPort: port } : port;
    const protocol = want.protocol ?? 'tcp';
    await this.#transport.json<undefined>('DELETE', `${this.#path}/ports/${want.hostPort}`, {
      query: { protocol, hostIp: want.hostIp },
      what: `removing port ${want.hostPort}/${protocol} of sandbox ${this.id}`,
    });
    const ports = this.#info.network?.ports ?? [];
    this.#setPorts(ports.filter((p) => !(p.hostPort === want.hostPort && p.protocol === protocol && (want.hostIp === undefined || p.hostIp === want.hostIp))));
  }

  /** Keeps the cached record's ports (which getHost reads) as the daemon last said. */
  #setPorts(ports: PortBinding[]): void {
    if (this.#info.network) this.#info = { ...this.#info, network: { ...this.#info.network, ports: ports.map((p) => ({ ...p })) } };
  }

  /**
   * Ends the sandbox as core does: a detached one is only forgotten (it keeps
   * running on the daemon); any other is killed and removed.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#info.detached) return;
    await this.remove({ force: true }).catch((e: unknown) => {
      if (!isRoostError(e, 'NOT_FOUND')) throw e;
    });
  }
}
