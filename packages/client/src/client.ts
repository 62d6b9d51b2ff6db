import {
  checkPoolCreateOptions,
  CreateOptionsSchema,
  DoctorRequestSchema,
  errorFromBody,
  isErrorObject,
  isRoostError,
  parseInput,
  RoostError,
  SESSION_HEADER,
  sleep,
  type CreateOptions,
  type DoctorOptions,
  type DoctorReport,
  type EventType,
  type ListFilter,
  type RoostEvent,
  type RuntimeApi,
  type RuntimeMetrics,
  type SandboxInfo,
} from '@roost/api';
import { RemoteActors } from './actors.js';
import { defaultEndpoint, parseHost, resolveHome, tokenSource, Transport, type Endpoint } from './http.js';
import { RemoteImages } from './images.js';
import { RemoteSandbox } from './sandbox.js';
import { SessionLink } from './session.js';
import { RemoteSnapshots, RemoteTemplates } from './snapshots.js';
import { RemotePools } from './pools.js';
import { RemoteDeployments } from './deployments.js';
import { RemoteVolumes } from './volumes.js';
import { SseParser } from './wire.js';

/** Options of `new RoostClient()`. */
export interface RoostClientOptions {
  /**
   * The daemon: `unix:///path/to/roost.sock`, `http://127.0.0.1:7423`, or a
   * socket path. Default: $ROOST_HOST, else the unix socket of the home.
   */
  host?: string;
  /**
   * The API token. Default: $ROOST_TOKEN, else (for a unix socket) the
   * home's token file, which the daemon writes 0600 on its first start.
   */
  token?: string;
  /** Roost home (default $ROOST_HOME or ~/.roost): where the default socket and token file are. */
  home?: string;
  /**
   * How long a call waits for the daemon's answer, in ms (default 60 s).
   * Calls that do long work on purpose (create, start, image pulls, command
   * output, events) are bounded by their own timeouts and signals instead.
   */
  timeoutMs?: number;
}

/** The daemon's `GET /v1/health`. */
export interface Health {
  status: 'ok';
  version: string;
  home: string;
  pid: number;
  uptimeSeconds: number;
  /** The daemon's TCP listener (`http://host:port`), or null when it listens on its unix socket only. */
  url: string | null;
}

/** Options of `client.events()`. */
export interface EventsOptions {
  /** Replay the events after this id first (default: only new events). */
  after?: number;
  /** Only these types. */
  types?: EventType[];
  /** Only events of this sandbox. */
  sandboxId?: string;
  /** Ends the iteration. */
  signal?: AbortSignal;
}

/** First and longest wait before reconnecting a dropped event stream. */
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 10_000;

/**
 * The Roost SDK for a daemon (`roost serve`): the same `RuntimeApi` as
 * core's `Runtime`, over HTTP or a unix socket.
 *
 * ```ts
 * await using client = new RoostClient();
 * await using sandbox = await client.create({ image: 'alpine' });
 * const { exitCode, stdout } = await sandbox.commands.run('uname -a');
 * ```
 *
 * Errors are `RoostError`s with the daemon's code; a daemon that is not
 * there is UNAVAILABLE.
 *
 * Concurrency: any number of calls may run at once (connections are kept alive and pooled).
 */
export class RoostClient implements RuntimeApi {
  /** The daemon's address. */
  readonly endpoint: Endpoint;
  /** The Roost home the defaults came from. */
  readonly home: string;
  /** Image commands: pull, list, inspect, remove. */
  readonly images: RemoteImages;
  /** Named volumes: create, list, inspect, remove. */
  readonly volumes: RemoteVolumes;
  /** Snapshots: list, inspect, remove (take them with `sandbox.snapshot()`, restore with `create({ snapshot })`). */
  readonly snapshots: RemoteSnapshots;
  /** Templates (warm pools): create, list, inspect, warm, remove; use them with `create({ template })`. */
  readonly templates: RemoteTemplates;
  /** Warm pools: create, list, inspect, resize, remove; take a sandbox from one with `create({ pool })`. */
  readonly pools: RemotePools;
  /** Deployments: apply, list, inspect, scale, roll back, remove; the daemon keeps their replicas running. */
  readonly deployments: RemoteDeployments;
  /** Actors: WASM modules, actors with durable state, their messages, calls, state versions and message streams (docs/actors.md). */
  readonly actors: RemoteActors;
  #transport: Transport;
  #session: SessionLink;

  constructor(options: RoostClientOptions = {}) {
    this.home = resolveHome(options.home);
    const host = options.host ?? (process.env.ROOST_HOST || undefined);
    this.endpoint = host ? parseHost(host) : defaultEndpoint(this.home);
    const token = tokenSource({
      ...(options.token !== undefined ? { token: options.token } : {}),
      home: this.home,
      local: this.endpoint.socketPath !== undefined,
    });
    this.#transport = new Transport(this.endpoint, token, options.timeoutMs ?? 60_000);
    this.images = new RemoteImages(this.#transport);
    this.volumes = new RemoteVolumes(this.#transport);
    this.snapshots = new RemoteSnapshots(this.#transport);
    this.templates = new RemoteTemplates(this.#transport);
    this.pools = new RemotePools(this.#transport);
    this.deployments = new RemoteDeployments(this.#transport);
    this.actors = new RemoteActors(this.#transport);
    this.#session = new SessionLink(this.#transport);
  }

  /**
   * Creates and boots a sandbox on the daemon (pulling its image if needed),
   * or restores one from a `snapshot` or `template`. With `onPullProgress`,
   * a missing image is pulled first through `images.pull` (the daemon pulls
   * silently inside create).
   */
  async create(options: CreateOptions = {}): Promise<RemoteSandbox> {
    parseInput(CreateOptionsSchema, options, 'sandbox options');
    checkPoolCreateOptions(options as Record<string, unknown>);
    const { signal, onPullProgress, ...body } = options;
    if (body.image !== undefined && body.pull !== 'never' && onPullProgress) {
      const stored =
        body.pull === 'always'
          ? false
          : await this.images.inspect(body.image).then(
              () => true,
              (e: unknown) => {
                if (isRoostError(e, 'NOT_FOUND')) return false;
                throw e;
              },
            );
      if (!stored) {
        await this.images.pull(body.image, { onProgress: onPullProgress, ...(signal ? { signal } : {}) });
        body.pull = 'missing';
      }
    }
    // A sandbox that is not detached belongs to this client's session: it ends when the client does.
    const send = async () => {
      const headers = body.detached ? {} : await this.#session.header();
      return this.#transport.json<SandboxInfo>('POST', '/v1/sandboxes', { json: body, headers, signal, timeoutMs: null, what: 'creating a sandbox' });
    };
    const info = await send().catch((e: unknown) => {
      // A session the daemon no longer knows (it restarted): nothing was created; once more in a new session.
      if (!isRoostError(e, 'NOT_FOUND') || e.details.field !== SESSION_HEADER) throw e;
      this.#session.forget(String(e.details.session));
      return send();
    });
    return new RemoteSandbox(this.#transport, info, this.#session);
  }

  /** Finds a sandbox by id (or unique id prefix). */
  async get(id: string): Promise<RemoteSandbox> {
    const info = await this.#transport.json<SandboxInfo>('GET', `/v1/sandboxes/${encodeURIComponent(id)}`);
    return new RemoteSandbox(this.#transport, info, this.#session);
  }

  /**
   * Checks the daemon's home against its VM processes and directories and,
   * with `repair`, rebuilds what can be rebuilt safely (see docs/recovery.md).
   */
  async doctor(options: DoctorOptions = {}): Promise<DoctorReport> {
    const body = parseInput(DoctorRequestSchema, options, 'doctor options');
    return this.#transport.json<DoctorReport>('POST', '/v1/doctor', { json: body, timeoutMs: null, what: 'the doctor' });
  }

  /** Lists sandboxes, newest first. */
  async list(filter: ListFilter = {}): Promise<SandboxInfo[]> {
    const query: Record<string, string | string[] | undefined> = {};
    if (filter.status !== undefined) query.status = Array.isArray(filter.status) ? filter.status.join(',') : filter.status;
    if (filter.image !== undefined) query.image = filter.image;
    if (filter.labels?.length) query.label = filter.labels;
    const r = await this.#transport.json<{ sandboxes: SandboxInfo[] }>('GET', '/v1/sandboxes', { query });
    return r.sandboxes;
  }

  /**
   * Events after `after`, then live ones, until `signal` aborts (the
   * iteration then ends quietly) or the client closes. A dropped connection
   * is re-opened with Last-Event-ID, waiting longer after each failure (up
   * to 10 s), so no event is lost or seen twice. Errors that retrying
   * cannot fix (a refused token, a bad filter) end it with their RoostError.
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<RoostEvent> {
    const signal = options.signal;
    let last: number | undefined = options.after;
    let delay = RECONNECT_MIN_MS;
    let serverRetry: number | undefined;
    const stopped = () => signal?.aborted === true || this.#transport.closedSignal.aborted;
    while (!stopped()) {
      try {
        const query: Record<string, string | undefined> = {};
        if (options.types?.length) query.type = options.types.join(',');
        if (options.sandboxId) query.sandbox = options.sandboxId;
        if (last !== undefined) query.after = String(last);
        const headers: Record<string, string> = { 'cache-control': 'no-cache' };
        if (last !== undefined) headers['last-event-id'] = String(last);
        const { res, abort } = await this.#transport.stream('GET', '/v1/events', {
          query,
          headers,
          accept: 'text/event-stream',
          signal,
          what: 'the event stream',
        });
        try {
          const parser = new SseParser();
          for await (const chunk of res) {
            const got = parser.push(chunk as Buffer);
            serverRetry = parser.retry ?? serverRetry;
            for (const ev of got) {
              if (ev.event === 'error') throw streamError(ev.data);
              if (ev.event !== 'message' && !ev.event.includes('.')) continue; // other stream-level events
              let event: RoostEvent;
              try {
                event = JSON.parse(ev.data) as RoostEvent;
              } catch {
                continue;
              }
              const id = typeof event.id === 'number' ? event.id : Number(ev.id);
              if (Number.isFinite(id)) {
                if (last !== undefined && id <= last) continue; // replayed twice across a reconnect
                last = id;
              }
              delay = serverRetry ?? RECONNECT_MIN_MS;
              yield event;
            }
            // An `id:` without data (a daemon may send its newest id on connect) moves the resume point too.
            const seenId = Number(parser.lastEventId);
            if (parser.lastEventId && Number.isSafeInteger(seenId) && (last === undefined || seenId > last)) last = seenId;
          }
        } finally {
          abort(new RoostError('ABORTED', 'the event stream was closed'));
        }
      } catch (e) {
        if (stopped()) return;
        if (isRoostError(e) && e.code !== 'UNAVAILABLE' && e.code !== 'INTERNAL' && e.code !== 'TIMEOUT') throw e;
      }
      if (stopped()) return;
      // Woken early (quietly) when the caller aborts or the client closes.
      await sleep(delay, signal ? AbortSignal.any([signal, this.#transport.closedSignal]) : this.#transport.closedSignal).catch(() => {});
      delay = Math.min(RECONNECT_MAX_MS, Math.max(serverRetry ?? RECONNECT_MIN_MS, delay * 2));
    }
  }

  /** The daemon's health: version, home, pid, uptime. */
  health(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Health> {
    return this.#transport.json<Health>('GET', '/v1/health', {
      signal: options.signal,
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    });
  }

  /** Counters and gauges of the daemon's runtime. */
  metrics(): Promise<RuntimeMetrics> {
    return this.#transport.json<RuntimeMetrics>('GET', '/v1/metrics');
  }

  /** The same figures in Prometheus' text format (`GET /metrics`). */
  prometheusMetrics(): Promise<string> {
    return this.#transport.text('GET', '/metrics', { accept: 'text/plain' });
  }

  /** A sandbox's console log; `tail` keeps the last lines. */
  logs(id: string, options: { tail?: number; signal?: AbortSignal } = {}): Promise<string> {
    return this.#transport.text('GET', `/v1/sandboxes/${encodeURIComponent(id)}/logs`, {
      accept: 'text/plain',
      query: { tail: options.tail },
      signal: options.signal,
    });
  }

  /**
   * Closes the client: the sandboxes it made that are not detached end (as
   * an embedded runtime's do when it closes: killed, or removed when made
   * with `autoRemove`), then calls and streams in flight end with ABORTED.
   * Detached sandboxes stay on the daemon. A client that is never closed
   * ends its sandboxes the same way when its process exits, however it exits,
   * after the daemon's grace period (5 s by default).
   */
  async close(): Promise<void> {
    await this.#session.close();
    this.#transport.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The daemon's `event: error` (it closes the stream after it): UNAVAILABLE ones are retried. */
function streamError(data: string): RoostError {
  try {
    const e = (JSON.parse(data) as { error?: unknown }).error;
    if (isErrorObject(e)) return errorFromBody(e, { code: 'UNAVAILABLE', message: e.message });
  } catch {
    // not an error body
  }
  return new RoostError('UNAVAILABLE', `the event stream failed: ${data.slice(0, 200)}`);
}
