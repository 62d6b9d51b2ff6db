import { timingSafeEqual } from 'node:crypto';
import { createServer, request as httpRequest, STATUS_CODES, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { isRoostError, RoostError, type PortBinding, type SandboxApi, type SandboxInfo } from '@roost/api';
import { e2bFaceOf } from './index.js';

/*
 * The sandbox hosts behind E2B's `sandbox.getHost(port)`: on the daemon's
 * TCP listener, a request whose Host is `<port>-<sandbox id>.<domain>` is
 * not the app's: it goes to that port in that sandbox, as E2B's edge
 * sends it there. Plain HTTP is proxied request by request (streamed both
 * ways); an Upgrade (WebSocket or any other) is tunnelled byte for byte
 * once its head is written. The guest port is reached through a published
 * port (`sandbox.ports.add('127.0.0.1::<port>')`), made on the first
 * request and kept while the sandbox lives. Port 49983 is envd, which is
 * the daemon's own E2B face: those requests go to the app with the
 * sandbox's id as E2b-Sandbox-Id.
 *
 * Like E2B's default (`allowPublicTraffic: true`) these hosts take no
 * token: whoever reaches the daemon's TCP listener and knows a sandbox's id
 * reaches its ports. A sandbox made with `allowPublicTraffic: false` wants
 * the header `e2b-traffic-access-token` (the create response's
 * `trafficAccessToken`); without it, 403.
 */

/** The guest port of E2B's envd: served by the daemon itself, not proxied. */
export const ENVD_PORT = 49983;
/** The header a sandbox made with `allowPublicTraffic: false` wants on its hosts. */
export const TRAFFIC_TOKEN_HEADER = 'e2b-traffic-access-token';

/** What the router needs of the E2B face (E2bControl). */
export interface RouterSandboxes {
  /** A running or paused E2B sandbox by id; NOT_FOUND for any other (unknown, gone, or not made through E2B's API). */
  sandbox(id: string): Promise<SandboxApi>;
  /** The traffic token its hosts want, or null when they are public. */
  trafficAccessToken(info: SandboxInfo): string | null;
}

/** Options of `E2bRouter`. */
export interface E2bRouterOptions {
  /** The domain of the hosts (`localhost:7423`): see `parseE2bDomain`. */
  domain: string;
  sandboxes: RouterSandboxes;
  /** The daemon's app: serves every request the router does not take, and envd's (port 49983). */
  app: RequestListener;
}

/** A sandbox port named by a Host header. */
export interface SandboxHost {
  port: number;
  sandboxId: string;
}

/** E2B's own domains: the SDK sends envd to `sandbox.<domain>` for these (docs/e2b-wire.md §4), and they are E2B's. */
const E2B_DOMAINS = ['e2b.app', 'e2b.dev', 'e2b.pro', 'e2b-staging.dev'];
const DOMAIN = /^((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?::(\d{1,5}))?$/;

/**
 * Checks and normalizes (lower case) an E2B domain: a host name,
 * optionally with `:port` (`roost.test:7423`). INVALID_ARGUMENT for
 * anything else, and for E2B's own domains.
 */
export function parseE2bDomain(text: string): string {
  const domain = text.trim().toLowerCase();
  const m = DOMAIN.exec(domain);
  const port = m?.[2] === undefined ? 1 : Number(m[2]);
  if (!m || port < 1 || port > 65535) {
    throw new RoostError('INVALID_ARGUMENT', `E2B domain: a host name, optionally with :port (localhost:7423, roost.test:7423), not '${text}'`);
  }
  const name = m[1]!;
  if (E2B_DOMAINS.some((d) => name === d || name.endsWith(`.${d}`))) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `E2B domain: ${name} is E2B's own (its SDK would send envd traffic to E2B): choose another, such as roost.test:7423`,
    );
  }
  return domain;
}

function splitPort(host: string): { name: string; port: number | null } {
  const m = /^(.*?)(?::(\d{1,5}))?$/.exec(host)!;
  return { name: m[1]!, port: m[2] === undefined ? null : Number(m[2]) };
}

/**
 * The sandbox port a Host header names under `domain` (as parseE2bDomain
 * returns it): `<port>-<12 hex id>.<domain>`, case-insensitive. With a port
 * in the domain the Host's must equal it (a Host without one is port 80);
 * a domain without a port matches any. Null for any other Host.
 */
export function matchSandboxHost(host: string | undefined, domain: string): SandboxHost | null {
  if (!host) return null;
  const want = splitPort(domain);
  const have = splitPort(host.toLowerCase());
  if (want.port !== null && (have.port ?? 80) !== want.port) return null;
  const suffix = `.${want.name}`;
  if (!have.name.endsWith(suffix)) return null;
  const m = /^([1-9]\d{0,4})-([0-9a-f]{12})$/.exec(have.name.slice(0, -suffix.length));
  if (!m || Number(m[1]) > 65535) return null;
  return { port: Number(m[1]), sandboxId: m[2]! };
}

/** Hop-by-hop headers (RFC 9110 §7.6.1), and others a proxy must not pass on as they came. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** `rawHeaders` without the headers named in `drop` (lower case). */
function without(rawHeaders: string[], drop: Set<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) if (!drop.has(rawHeaders[i]!.toLowerCase())) out.push(rawHeaders[i]!, rawHeaders[i + 1]!);
  return out;
}

/** `rawHeaders` without hop-by-hop headers (those the Connection header names too), nor those in `drop`. */
function endToEnd(rawHeaders: string[], drop: Set<string>): string[] {
  const all = new Set([...HOP_BY_HOP, ...drop]);
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === 'connection') for (const t of rawHeaders[i + 1]!.split(',')) all.add(t.trim().toLowerCase());
  }
  return without(rawHeaders, all);
}

/** X-Forwarded-For (appended to), -Host and -Proto of a request the router passes on. */
function forwarded(req: IncomingMessage): string[] {
  const prior = req.headers['x-forwarded-for'];
  const client = req.socket.remoteAddress ?? '';
  return ['X-Forwarded-For', prior ? `${prior}, ${client}` : client, 'X-Forwarded-Host', req.headers.host ?? '', 'X-Forwarded-Proto', 'http'];
}

/** Dropped from requests passed on: the proxy's own headers (set anew), the token, and Expect (Node has answered 100 Continue). */
const REQUEST_DROP = new Set(['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', TRAFFIC_TOKEN_HEADER, 'expect']);
/**
 * Dropped from an upgrade's head, which goes on otherwise as sent: its
 * Connection and Upgrade are the point, and any body is relayed raw, so
 * its framing headers stay.
 */
const UPGRADE_DROP = new Set(['x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', TRAFFIC_TOKEN_HEADER, 'proxy-connection', 'proxy-authorization']);

/** The head of a request with `headers`, as sent on the wire (Node keeps no raw copy of it). */
function requestHead(req: IncomingMessage, headers: string[]): Buffer {
  let head = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return Buffer.from(`${head}\r\n`, 'latin1');
}

/** A failure the router answers itself: status and message (E2B's `{ code, message }` body). */
class RouteError extends Error {
  constructor(
    readonly status: 403 | 404 | 502,
    message: string,
  ) {
    super(message);
  }
}

function sameToken(given: string | string[] | undefined, want: string): boolean {
  if (typeof given !== 'string') return false;
  const a = Buffer.from(given);
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Routes the daemon's TCP requests for sandbox hosts (see above). Use
 * `listener` as the server's request listener and `attach(server)` for
 * upgrades. Concurrency: any number of requests at once; the first
 * requests to a port publish it once between them.
 */
export class E2bRouter {
  readonly domain: string;
  readonly #sandboxes: RouterSandboxes;
  readonly #app: RequestListener;
  /** Ports being published, by `<id>:<port>`: concurrent first requests share one. */
  readonly #publishing = new Map<string, Promise<PortBinding>>();
  /** Upgraded connections (both ends), cut by close(). */
  readonly #tunnels = new Set<Duplex>();
  /**
   * Serves upgrades that are not for a sandbox host as ordinary requests,
   * as Node's server does when it has no 'upgrade' listener (the daemon's
   * routes use none): the connection is handed to it with its head.
   */
  readonly #plain: Server;
  readonly #plainSockets = new Set<Socket>();

  constructor(options: E2bRouterOptions) {
    this.domain = parseE2bDomain(options.domain);
    this.#sandboxes = options.sandboxes;
    this.#app = options.app;
    this.#plain = createServer(this.listener);
    this.#plain.requestTimeout = 0;
  }

  /** The request listener: a sandbox host's requests are routed, any other goes to the app. */
  readonly listener: RequestListener = (req, res) => {
    const target = matchSandboxHost(req.headers.host, this.domain);
    if (!target) this.#app(req, res);
    else if (target.port === ENVD_PORT) this.#envd(req, res, target.sandboxId);
    else void this.#proxy(req, res, target);
  };

  /** Takes `server`'s upgrades: a sandbox host's are tunnelled, any other is served as an ordinary request. */
  attach(server: Server): void {
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      const target = matchSandboxHost(req.headers.host, this.domain);
      if (target && target.port !== ENVD_PORT) {
        void this.#tunnel(req, socket, head, target);
        return;
      }
      // As if the server had no 'upgrade' listener: the request, then the connection's next ones, go to the listener.
      this.#plainSockets.add(socket);
      socket.once('close', () => this.#plainSockets.delete(socket));
      socket.unshift(Buffer.concat([requestHead(req, req.rawHeaders), head]));
      this.#plain.emit('connection', socket);
    });
  }

  /** Cuts the upgraded connections and those handed to the plain server (the daemon is closing). */
  close(): void {
    for (const s of this.#tunnels) s.destroy();
    this.#tunnels.clear();
    for (const s of this.#plainSockets) s.destroy();
    this.#plainSockets.clear();
  }

  /** envd (port 49983) is the daemon's own E2B face: the app serves it, for this sandbox. */
  #envd(req: IncomingMessage, res: ServerResponse, sandboxId: string): void {
    const path = (req.url ?? '/').split('?')[0]!;
    if (e2bFaceOf(path) !== 'envd') {
      sendError(res, new RouteError(404, `envd serves no ${path}`));
      return;
    }
    // The Host names the sandbox: any E2b-Sandbox-Id the client sent is replaced (the app reads rawHeaders).
    req.rawHeaders = [...without(req.rawHeaders, new Set(['e2b-sandbox-id'])), 'E2b-Sandbox-Id', sandboxId];
    req.headers['e2b-sandbox-id'] = sandboxId;
    this.#app(req, res);
  }

  /** The sandbox, checked for a request to `target` (its traffic token included): where its port listens on the host. */
  async #resolve(req: IncomingMessage, target: SandboxHost): Promise<{ host: string; port: number }> {
    const { sandboxId: id, port } = target;
    let sandbox: SandboxApi;
    try {
      sandbox = await this.#sandboxes.sandbox(id);
    } catch (e) {
      if (isRoostError(e, 'NOT_FOUND'))
        throw new RouteError(502, `The sandbox ${id} was not found: it was killed or timed out, or it was not made through E2B's API`);
      throw new RouteError(502, `sandbox ${id}: ${e instanceof Error ? e.message : String(e)}`);
    }
    const token = this.#sandboxes.trafficAccessToken(sandbox.info);
    if (token !== null && !sameToken(req.headers[TRAFFIC_TOKEN_HEADER], token)) {
      throw new RouteError(403, `sandbox ${id} takes traffic only with its ${TRAFFIC_TOKEN_HEADER} header (the sandbox's trafficAccessToken)`);
    }
    if (sandbox.status !== 'running') {
      throw new RouteError(502, `sandbox ${id} is ${sandbox.status}: its ports answer while it runs (Sandbox.connect resumes a paused one)`);
    }
    let binding: PortBinding;
    try {
      binding = await this.#binding(sandbox, port);
    } catch (e) {
      throw new RouteError(502, `port ${port} of sandbox ${id} could not be published: ${e instanceof Error ? e.message : String(e)}`);
    }
    return { host: binding.hostIp === '0.0.0.0' ? '127.0.0.1' : binding.hostIp === '::' ? '::1' : binding.hostIp, port: binding.hostPort };
  }

  /** The sandbox's published port for guest port `port`: one it has, else one published now (once, however many ask at once). */
  #binding(sandbox: SandboxApi, port: number): Promise<PortBinding> {
    const have = sandbox.info.network?.ports.find((p) => p.guestPort === port && p.protocol === 'tcp');
    if (have) return Promise.resolve(have);
    const key = `${sandbox.id}:${port}`;
    let publishing = this.#publishing.get(key);
    if (!publishing) {
      // The record lists the binding before add() resolves: later requests find it there.
      publishing = sandbox.ports.add(`127.0.0.1::${port}`).finally(() => this.#publishing.delete(key));
      this.#publishing.set(key, publishing);
    }
    return publishing;
  }

  /** Plain HTTP: the request passed on to the guest port, its answer streamed back; 502 when nothing answers. */
  async #proxy(req: IncomingMessage, res: ServerResponse, target: SandboxHost): Promise<void> {
    let to: { host: string; port: number };
    try {
      to = await this.#resolve(req, target);
    } catch (e) {
      // The body is not read: the connection cannot be reused for a next request.
      if (!req.complete) res.shouldKeepAlive = false;
      sendError(res, e);
      return;
    }
    // The client left while the sandbox was looked up.
    if (res.destroyed || req.socket.destroyed) return;
    const upstream = httpRequest({
      host: to.host,
      port: to.port,
      method: req.method,
      path: req.url,
      headers: [...endToEnd(req.rawHeaders, REQUEST_DROP), ...forwarded(req)],
      // One connection per request: a kept-alive one to a guest that restarted would fail the next request.
      agent: false,
    });
    upstream.on('response', (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, endToEnd(answer.rawHeaders, new Set()));
      answer.pipe(res);
      // The guest cut its answer short: so does the router (the client sees a truncated body, never a complete one).
      answer.on('error', () => res.destroy());
      answer.on('close', () => {
        if (!answer.complete) res.destroy();
      });
    });
    upstream.on('error', (e) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (!req.complete) res.shouldKeepAlive = false;
      sendError(
        res,
        new RouteError(
          502,
          `nothing answered on port ${target.port} of sandbox ${target.sandboxId} (${(e as NodeJS.ErrnoException).code ?? e.message}): is a server listening on 0.0.0.0:${target.port} in the sandbox?`,
        ),
      );
    });
    // The client gone before the answer ended: so is the request to the guest.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.on('error', () => upstream.destroy());
    req.pipe(upstream);
  }

  /** An upgrade: the head written to the guest port, then bytes both ways until either side closes. */
  async #tunnel(req: IncomingMessage, socket: Socket, head: Buffer, target: SandboxHost): Promise<void> {
    socket.on('error', () => socket.destroy());
    this.#tunnels.add(socket);
    socket.once('close', () => this.#tunnels.delete(socket));
    const fail = (e: unknown) => {
      if (socket.destroyed) return;
      const err = e instanceof RouteError ? e : new RouteError(502, e instanceof Error ? e.message : String(e));
      const body = JSON.stringify({ code: err.status, message: err.message });
      socket.end(
        `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    };
    let to: { host: string; port: number };
    try {
      to = await this.#resolve(req, target);
    } catch (e) {
      fail(e);
      return;
    }
    if (socket.destroyed) return;
    const upstream = connect({ host: to.host, port: to.port, noDelay: true });
    this.#tunnels.add(upstream);
    let answered = false;
    const nothing = (why: string) =>
      fail(
        new RouteError(
          502,
          `nothing answered on port ${target.port} of sandbox ${target.sandboxId} (${why}): is a server listening on 0.0.0.0:${target.port} in the sandbox?`,
        ),
      );
    upstream.on('error', (e: NodeJS.ErrnoException) => {
      if (answered) socket.destroy();
      else nothing(e.code ?? e.message);
    });
    upstream.once('close', () => {
      this.#tunnels.delete(upstream);
      if (!answered) nothing('connection closed');
    });
    // Client gone: so is the guest's end. (The guest's end closing ends the client's through the pipe, its last bytes written first.)
    socket.once('close', () => upstream.destroy());
    upstream.once('connect', () => {
      upstream.write(Buffer.concat([requestHead(req, [...without(req.rawHeaders, UPGRADE_DROP), ...forwarded(req)]), head]));
      socket.pipe(upstream);
      // The guest's side is piped from its first byte on: a guest that closes before saying anything gets the client a 502.
      upstream.once('data', (first: Buffer) => {
        answered = true;
        socket.write(first);
        upstream.pipe(socket);
      });
    });
  }
}

/** The router's own answer: E2B's `{ code, message }` with the status as its code. */
function sendError(res: ServerResponse, e: unknown): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const err = e instanceof RouteError ? e : new RouteError(502, e instanceof Error ? e.message : String(e));
  const body = JSON.stringify({ code: err.status, message: err.message });
  res.writeHead(err.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}
