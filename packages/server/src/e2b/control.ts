import { createHmac, randomBytes } from 'node:crypto';
import {
  errorStatus,
  isRoostError,
  parseInput,
  RoostError,
  type CreateOptions,
  type EgressSpec,
  type SandboxApi,
  type SandboxInfo,
  type SnapshotInfo,
} from '@roost/api';
import type { Context } from 'hono';
import { z } from 'zod';
import type { DaemonRuntime } from '../daemon-runtime.js';
import { parseJsonBody } from '../http.js';
import type { RoostHono } from '../route-context.js';
import { E2bMetrics } from './metrics.js';

/*
 * E2B's control plane (docs/e2b-wire.md §1) over Roost's runtime: the JSON
 * API E2B's SDK calls with E2B_API_URL. Sandboxes made here carry the
 * label E2B_TEMPLATE_LABEL (only they are E2B's to list and touch), their
 * metadata as labels under E2B_METADATA_PREFIX, and E2B's timeout as a
 * Roost lifetime. Errors are E2B's `{ code: <status>, message }`: the SDK
 * reads 404 and 409 from `code`, not from the status.
 */

/** The label naming the E2B template a sandbox was made from (and marking it as E2B's). */
export const E2B_TEMPLATE_LABEL = 'e2b.template';
/** Labels holding E2B metadata: `e2b.metadata/<key>`. */
export const E2B_METADATA_PREFIX = 'e2b.metadata/';
/**
 * The label (value `false`) of a sandbox made with E2B's
 * `network.allowPublicTraffic: false`: its sandbox hosts (./router.ts) want
 * the `e2b-traffic-access-token` header.
 */
export const E2B_PUBLIC_TRAFFIC_LABEL = 'e2b.allow-public-traffic';
/** E2B's default sandbox timeout (s), when create gives none. */
export const E2B_DEFAULT_TIMEOUT_S = 300;
/** The longest timeout E2B's API takes (s): 24 hours, as its Pro tier. */
export const E2B_MAX_TIMEOUT_S = 86_400;
/**
 * The envd version Roost's envd face reports. The SDK turns features on by
 * version (docs/e2b-wire.md §3.5); every one up to this version must be served.
 */
export const ENVD_VERSION = '0.6.4';

const timeoutSeconds = z.number().int().positive().max(E2B_MAX_TIMEOUT_S);

/** `POST /v2/sandboxes` (and v1's `POST /sandboxes`): what Roost reads of E2B's NewSandbox. */
const NewSandboxSchema = z.looseObject({
  templateID: z.string().min(1),
  metadata: z.record(z.string(), z.string()).optional(),
  envVars: z.record(z.string(), z.string()).optional(),
  timeout: timeoutSeconds.optional(),
  autoPause: z.boolean().optional(),
  allow_internet_access: z.boolean().optional(),
  network: z
    .looseObject({
      allowOut: z.array(z.string().min(1)).optional(),
      denyOut: z.array(z.string().min(1)).optional(),
      allowPublicTraffic: z.boolean().optional(),
    })
    .optional(),
});

/** Every IPv4 address: E2B's way of saying "deny everything not allowed". */
const ALL_ADDRESSES = '0.0.0.0/0';

/**
 * E2B's network options as a Roost egress policy. `allow_internet_access:
 * false`, or `denyOut` with 0.0.0.0/0, denies by default with `allowOut` as
 * the exceptions; other `denyOut` entries are deny rules. (In Roost a
 * matching deny rule wins over an allow rule; in E2B allowOut does.)
 */
export function egressOf(req: {
  allow_internet_access?: boolean | undefined;
  network?: { allowOut?: string[] | undefined; denyOut?: string[] | undefined } | undefined;
}): EgressSpec | undefined {
  const allow = req.network?.allowOut ?? [];
  const denyAll = req.allow_internet_access === false || (req.network?.denyOut ?? []).includes(ALL_ADDRESSES);
  const deny = (req.network?.denyOut ?? []).filter((d) => d !== ALL_ADDRESSES);
  if (!denyAll && allow.length === 0 && deny.length === 0) return undefined;
  if (denyAll && allow.length === 0 && deny.length === 0) return 'deny';
  return { default: denyAll ? 'deny' : 'allow', ...(allow.length ? { allow } : {}), ...(deny.length ? { deny } : {}) };
}
const TimeoutSchema = z.looseObject({ timeout: timeoutSeconds });
const ForkSchema = z.looseObject({ timeout: timeoutSeconds.optional(), count: z.number().int().min(1).max(16).optional() });
const SnapshotSchema = z.looseObject({ name: z.string().min(1).optional() });
const pageLimit = z.coerce.number().int().min(1).max(1000);
const SnapshotListQuerySchema = z.looseObject({
  sandboxID: z.string().optional(),
  name: z.string().optional(),
  limit: pageLimit.optional(),
  nextToken: z.string().optional(),
});
const unixSeconds = z.coerce.number().int().nonnegative();
const MetricsQuerySchema = z.looseObject({ start: unixSeconds.optional(), end: unixSeconds.optional() });
const ConnectSchema = z.looseObject({ timeout: timeoutSeconds.optional() });

/** An E2B error response: `{ code, message }` with the status as its code. */
export function e2bError(c: Context, err: unknown): Response {
  const e = isRoostError(err) ? err : new RoostError('INTERNAL', err instanceof Error ? err.message : String(err));
  const status = errorStatus(e);
  const res = c.json({ code: status, message: e.message }, status as 400);
  if (status === 429 || status === 503) res.headers.set('Retry-After', '1');
  return res;
}

/** E2B's state of a Roost sandbox: running or paused; anything else is gone to E2B. */
function stateOf(info: SandboxInfo): 'running' | 'paused' | null {
  return info.status === 'running' ? 'running' : info.status === 'paused' ? 'paused' : null;
}

function metadataOf(info: SandboxInfo): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(info.labels)) if (k.startsWith(E2B_METADATA_PREFIX)) out[k.slice(E2B_METADATA_PREFIX.length)] = v;
  return out;
}

/**
 * The E2B face's view of the runtime: its sandboxes only, with E2B's 404
 * for any other. One per daemon, shared by the app's routes and the
 * sandbox-host router (./router.ts).
 */
export class E2bControl {
  /** Tokens are an HMAC of the sandbox id under this daemon's secret: nothing to store, nothing to leak. */
  readonly #secret = randomBytes(32);
  /** Metrics of E2B's sandboxes, sampled from the first control-plane call on. */
  readonly metrics: E2bMetrics;
  /**
   * The domain of the sandbox hosts (`sandbox.getHost(port)` is
   * `<port>-<id>.<domain>`), returned as `domain` by create, connect and
   * getInfo; null without a router (the SDK then falls back to E2B_DOMAIN).
   * Set by `serve` once its TCP listener's port is known.
   */
  domain: string | null = null;

  constructor(private readonly runtime: DaemonRuntime) {
    this.metrics = new E2bMetrics(runtime, async () => (await runtime.list({ labels: [E2B_TEMPLATE_LABEL], status: 'running' })).map((i) => i.id));
  }

  /** The envd access token of a sandbox (X-Access-Token). */
  accessToken(id: string): string {
    return createHmac('sha256', this.#secret).update(`envd:${id}`).digest('hex');
  }

  /** The traffic access token its sandbox hosts want (`e2b-traffic-access-token`), or null when they are public (E2B's default). */
  trafficAccessToken(info: SandboxInfo): string | null {
    if (info.labels[E2B_PUBLIC_TRAFFIC_LABEL] !== 'false') return null;
    return createHmac('sha256', this.#secret).update(`traffic:${info.id}`).digest('hex');
  }

  /** A live E2B sandbox by id; NOT_FOUND (E2B's 404) otherwise. */
  async sandbox(id: string): Promise<SandboxApi> {
    const notFound = new RoostError('NOT_FOUND', `sandbox ${id} not found`);
    if (!/^[0-9a-f]{12}$/.test(id)) throw notFound;
    const sb = await this.runtime.get(id).catch((e: unknown) => {
      throw isRoostError(e, 'NOT_FOUND') ? notFound : e;
    });
    if (!(E2B_TEMPLATE_LABEL in sb.info.labels) || stateOf(sb.info) === null) throw notFound;
    return sb;
  }

  /** The `Sandbox` body of create and connect. */
  sandboxBody(info: SandboxInfo): Record<string, unknown> {
    return {
      sandboxID: info.id,
      templateID: info.labels[E2B_TEMPLATE_LABEL],
      clientID: 'roost',
      envdVersion: ENVD_VERSION,
      envdAccessToken: this.accessToken(info.id),
      trafficAccessToken: this.trafficAccessToken(info),
      domain: this.domain,
    };
  }

  /** The `SandboxDetail` of getInfo, and a `ListedSandbox` of list. */
  detail(info: SandboxInfo): Record<string, unknown> {
    return {
      sandboxID: info.id,
      templateID: info.labels[E2B_TEMPLATE_LABEL],
      alias: info.labels[E2B_TEMPLATE_LABEL],
      clientID: 'roost',
      metadata: metadataOf(info),
      startedAt: info.startedAt ?? info.createdAt,
      // A paused sandbox has no end (Roost clears its lifetime when E2B pauses it).
      endAt: info.expiresAt ?? new Date(Date.parse(info.createdAt) + E2B_MAX_TIMEOUT_S * 1000).toISOString(),
      state: stateOf(info),
      allowInternetAccess: info.network?.egress?.default !== 'deny',
      cpuCount: info.cpus,
      memoryMB: info.memoryMiB,
      diskSizeMB: info.diskSizeMiB,
      envdVersion: ENVD_VERSION,
      domain: this.domain,
      network: { allowPublicTraffic: info.labels[E2B_PUBLIC_TRAFFIC_LABEL] !== 'false' },
      volumeMounts: [],
    };
  }

  /**
   * The create options of an E2B template name: a Roost template of that
   * name, else a stored image, else (for `base`) the built-in Linux;
   * E2B's 404 for anything else.
   */
  async source(templateID: string): Promise<Pick<CreateOptions, 'template' | 'image' | 'snapshot'>> {
    const exists = (p: Promise<unknown>) =>
      p.then(
        () => true,
        (e: unknown) => (isRoostError(e, 'NOT_FOUND') ? false : Promise.reject(e)),
      );
    if (await exists(this.runtime.templates.get(templateID))) return { template: templateID };
    if (await exists(this.runtime.images.inspect(templateID))) return { image: templateID };
    // E2B's snapshots are templates to create from (`Sandbox.create(snapshot.snapshotId)`).
    if (await exists(this.runtime.snapshots.get(templateID))) return { snapshot: templateID };
    if (templateID === 'base') return {};
    throw new RoostError(
      'NOT_FOUND',
      `template '${templateID}' not found: make it with \`roost template create\`, pull an image of that name, or snapshot a sandbox`,
    );
  }
}

/** Registers E2B's control-plane routes (behind X-API-KEY: see app.ts) over `control` (default: a new one, without a router). */
export function e2bControlRoutes(app: RoostHono, runtime: DaemonRuntime, shutdown?: AbortSignal, control = new E2bControl(runtime)): E2bControl {
  const route = (fn: (c: Context) => Promise<Response>) => async (c: Context) => {
    control.metrics.start(shutdown);
    return fn(c).catch((e: unknown) => e2bError(c, e));
  };

  const create = route(async (c) => {
    const req = await parseJsonBody(c, NewSandboxSchema);
    const labels: Record<string, string> = { [E2B_TEMPLATE_LABEL]: req.templateID };
    for (const [k, v] of Object.entries(req.metadata ?? {})) labels[`${E2B_METADATA_PREFIX}${k}`] = v;
    if (req.network?.allowPublicTraffic === false) labels[E2B_PUBLIC_TRAFFIC_LABEL] = 'false';
    const egress = egressOf(req);
    const sb = await runtime.create({
      ...(await control.source(req.templateID)),
      labels,
      ...(req.envVars ? { env: req.envVars } : {}),
      ...(egress ? { egress } : {}),
      // E2B's timeout is the sandbox's lifetime: killed (removed) at its end, or paused with autoPause.
      lifetimeMs: (req.timeout ?? E2B_DEFAULT_TIMEOUT_S) * 1000,
      onExpiry: req.autoPause ? 'pause' : 'remove',
      // E2B's sandboxes outlive the client that made them.
      detached: true,
    });
    return c.json(control.sandboxBody(sb.info), 201);
  });
  app.post('/v2/sandboxes', create);
  app.post('/sandboxes', create);

  app.get(
    '/sandboxes/:id',
    route(async (c) => c.json(control.detail((await control.sandbox(c.req.param('id')!)).info))),
  );

  app.delete(
    '/sandboxes/:id',
    route(async (c) => {
      await (await control.sandbox(c.req.param('id')!)).remove({ force: true });
      return c.body(null, 204);
    }),
  );

  app.post(
    '/sandboxes/:id/timeout',
    route(async (c) => {
      const req = await parseJsonBody(c, TimeoutSchema);
      const sb = await control.sandbox(c.req.param('id')!);
      await sb.setLifetime(req.timeout * 1000);
      return c.body(null, 204);
    }),
  );

  app.get(
    '/sandboxes/:id/metrics',
    route(async (c) => {
      const range = parseInput(MetricsQuerySchema, c.req.query(), 'query');
      return c.json(await control.metrics.metrics(await control.sandbox(c.req.param('id')!), range));
    }),
  );

  app.post(
    '/sandboxes/:id/fork',
    route(async (c) => {
      const req = await parseJsonBody(c, ForkSchema);
      const sb = await control.sandbox(c.req.param('id')!);
      // A fork keeps its parent's template, metadata and traffic restriction (its hosts want their own token).
      const e2bLabels = Object.fromEntries(
        Object.entries(sb.info.labels).filter(([k]) => k === E2B_TEMPLATE_LABEL || k === E2B_PUBLIC_TRAFFIC_LABEL || k.startsWith(E2B_METADATA_PREFIX)),
      );
      const forks = await sb.fork({ count: req.count ?? 1, labels: e2bLabels, detached: true });
      const lifetimeMs = (req.timeout ?? E2B_DEFAULT_TIMEOUT_S) * 1000;
      // Each entry succeeds or fails alone, as E2B's fork result does.
      const results = await Promise.all(
        forks.map(async (f) => {
          try {
            return { sandbox: control.sandboxBody(await f.setLifetime(lifetimeMs, { onExpiry: 'remove' })) };
          } catch (e) {
            const err = isRoostError(e) ? e : new RoostError('INTERNAL', String(e));
            return { error: { code: errorStatus(err), message: err.message } };
          }
        }),
      );
      return c.json(results, 201);
    }),
  );

  app.post(
    '/sandboxes/:id/snapshots',
    route(async (c) => {
      const req = await parseJsonBody(c, SnapshotSchema);
      const sb = await control.sandbox(c.req.param('id')!);
      const snap = await sb.snapshot(req.name ? { name: req.name } : {});
      return c.json(snapshotBody(snap), 201);
    }),
  );

  app.get(
    '/snapshots',
    route(async (c) => {
      const q = parseInput(SnapshotListQuerySchema, c.req.query(), 'query');
      const all = (await runtime.snapshots.list())
        .filter((s) => s.kind === 'user' && (!q.sandboxID || s.sourceSandbox === q.sandboxID) && (!q.name || s.name === q.name))
        .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || a.id.localeCompare(b.id));
      return page(c, all, q, (s) => s.id, snapshotBody);
    }),
  );

  app.delete(
    '/templates/:id',
    route(async (c) => {
      // E2B deletes snapshots as templates; only snapshots are deletable here (Roost's templates are not E2B's to remove).
      const snap = await runtime.snapshots.get(c.req.param('id')!);
      if (snap.kind !== 'user') throw new RoostError('NOT_FOUND', `snapshot ${c.req.param('id')} not found`);
      await runtime.snapshots.remove(snap.id);
      return c.body(null, 204);
    }),
  );

  app.post(
    '/sandboxes/:id/pause',
    route(async (c) => {
      await parseJsonBody(c, z.looseObject({ memory: z.boolean().optional() }));
      const sb = await control.sandbox(c.req.param('id')!);
      if (sb.status === 'paused') throw new RoostError('INVALID_STATE', `sandbox ${sb.id} is already paused`);
      await sb.pause();
      // A paused E2B sandbox stays until it is connected to again (or killed): no end while it sleeps.
      await sb.setLifetime(null);
      return c.body(null, 204);
    }),
  );

  const connect = route(async (c) => {
    const req = await parseJsonBody(c, ConnectSchema);
    const sb = await control.sandbox(c.req.param('id')!);
    const resumed = sb.status === 'paused';
    if (resumed) await sb.resume();
    // Connecting extends the timeout, never shortens it.
    const info = await sb.setLifetime((req.timeout ?? E2B_DEFAULT_TIMEOUT_S) * 1000, { extendOnly: true });
    return c.json(control.sandboxBody(info), resumed ? 201 : 200);
  });
  app.post('/v2/sandboxes/:id/connect', connect);
  app.post('/sandboxes/:id/connect', connect);

  const list = route(async (c) => {
    const q = c.req.query();
    const states = (q.state ?? 'running,paused').split(',').filter(Boolean);
    for (const s of states) if (s !== 'running' && s !== 'paused') throw new RoostError('INVALID_ARGUMENT', `state: '${s}' is not running or paused`);
    const metadata = parseMetadataQuery(q.metadata);
    const labels = [E2B_TEMPLATE_LABEL, ...Object.entries(metadata).map(([k, v]) => `${E2B_METADATA_PREFIX}${k}=${v}`)];
    // Newest first (as runtime.list).
    const all = (await runtime.list({ labels })).filter((i) => states.includes(stateOf(i) ?? ''));
    return page(
      c,
      all,
      parseInput(z.looseObject({ limit: pageLimit.optional(), nextToken: z.string().optional() }), q, 'query'),
      (i) => i.id,
      (i) => control.detail(i),
    );
  });
  app.get('/v2/sandboxes', list);
  app.get('/sandboxes', list);

  app.put(
    '/sandboxes/:id/network',
    route(async (c) => {
      await control.sandbox(c.req.param('id')!);
      throw new RoostError('INVALID_ARGUMENT', "Roost sets a sandbox's egress policy when it is made: pass allowInternetAccess or network to Sandbox.create");
    }),
  );
  // The rest of E2B's API (template builds, logs, teams...): a JSON 501 the SDK reports, not a bare 404.
  const unserved = route(async (c) => c.json({ code: 501, message: `${c.req.method} ${c.req.path} is not served by Roost's E2B face (see docs/e2b.md)` }, 501));
  for (const path of ['/sandboxes/*', '/v2/sandboxes/*', '/snapshots/*', '/templates', '/templates/*']) app.all(path, unserved);

  return control;
}

/** E2B's `{ snapshotID, names }` of a Roost snapshot. */
function snapshotBody(s: SnapshotInfo): { snapshotID: string; names: string[] } {
  return { snapshotID: s.id, names: [s.name] };
}

/**
 * One page of a list, E2B's way: `limit` items (default 100) after the one
 * `nextToken` names (the last id of the page before), and X-Next-Token when
 * more follow.
 */
function page<T>(
  c: Context,
  all: T[],
  q: { limit?: number | undefined; nextToken?: string | undefined },
  idOf: (item: T) => string,
  body: (item: T) => unknown,
): Response {
  const limit = q.limit ?? 100;
  const start = q.nextToken ? all.findIndex((i) => idOf(i) === q.nextToken) + 1 : 0;
  if (q.nextToken && start === 0) throw new RoostError('INVALID_ARGUMENT', 'nextToken: not a token this list gave (its item is gone: list again)');
  const items = all.slice(start, start + limit);
  const res = c.json(items.map(body));
  if (start + limit < all.length && items.length > 0) res.headers.set('X-Next-Token', idOf(items[items.length - 1]!));
  return res;
}

/**
 * E2B's list `metadata` query: `k=v&k2=v2` with each key and value
 * URL-encoded by the SDK before the whole was encoded again (one decoding
 * is done by the query parser).
 */
export function parseMetadataQuery(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!text) return out;
  for (const [k, v] of new URLSearchParams(text)) {
    try {
      out[decodeURIComponent(k)] = decodeURIComponent(v);
    } catch {
      throw new RoostError('INVALID_ARGUMENT', `metadata: '${k}' is not URL-encoded`);
    }
  }
  return out;
}
