import { isMap, isSeq, LineCounter, parseDocument, type Node as YamlNode } from 'yaml';
import { z } from 'zod';
import { RoostError } from './errors.js';
import { normalizePortSpec, PortSpecSchema } from './network.js';
import { CreateSandboxRequestSchema, RoostEventSchema } from './schemas.js';

/*
 * Deployments (issue 19): a workload and a replica count that Roost keeps
 * true. This is the spec a user writes (YAML or JSON) and every face takes:
 * `roost deploy -f FILE`, `runtime.deployments.apply(spec)`, REST and MCP.
 * Files are parsed with `parseDeploymentSpec`, whose errors name the field
 * and its line.
 */

/** The most replicas a deployment may ask for. */
export const MAX_REPLICAS = 64;
/** The most service ports a deployment may publish. */
export const MAX_SERVICE_PORTS = 8;

const name = z
  .string()
  .regex(/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/, 'must be 1-63 lower-case letters, digits and dashes, starting and ending with a letter or digit');
const guestPort = z.number().int().min(1).max(65535);
const ms = (min: number, max: number) => z.number().int().min(min).max(max);

/** How a replica's health is checked from the host: an HTTP GET, a TCP connect, or a command in the sandbox. */
export const HealthCheckSchema = z
  .object({
    /** Healthy when GET http://<replica>:<port><path> answers 2xx or 3xx. */
    http: z
      .object({ port: guestPort, path: z.string().startsWith('/', 'must start with /').default('/') })
      .strict()
      .optional(),
    /** Healthy when a TCP connection to the port opens. */
    tcp: z.object({ port: guestPort }).strict().optional(),
    /** Healthy when the command (argv, run through the agent) exits 0. */
    exec: z.array(z.string().min(1)).min(1).optional(),
    intervalMs: ms(100, 3_600_000).default(5_000),
    timeoutMs: ms(50, 600_000).default(2_000),
    /** Consecutive failures that make a replica unhealthy. */
    retries: z.number().int().min(1).max(100).default(3),
    /** Failures in this long after a replica starts do not count. */
    startPeriodMs: ms(0, 3_600_000).default(0),
  })
  .strict()
  .refine((h) => [h.http, h.tcp, h.exec].filter((x) => x !== undefined).length === 1, {
    message: 'give exactly one of http, tcp and exec',
  })
  .meta({ id: 'HealthCheck' });
export type HealthCheck = z.infer<typeof HealthCheckSchema>;

/** When a replica whose workload ended is started again (with exponential back-off): always, only after a failure (exit status not 0), or never. */
export const RestartPolicySchema = z.enum(['always', 'on-failure', 'never']);
export type RestartPolicy = z.infer<typeof RestartPolicySchema>;

/** How a changed spec replaces replicas: at most `maxSurge` extra replicas, at most `maxUnavailable` fewer healthy ones, at any time. */
export const UpdateStrategySchema = z
  .object({
    maxSurge: z.number().int().min(0).max(MAX_REPLICAS).default(1),
    maxUnavailable: z.number().int().min(0).max(MAX_REPLICAS).default(0),
  })
  .strict()
  .refine((u) => u.maxSurge + u.maxUnavailable > 0, { message: 'maxSurge and maxUnavailable cannot both be 0 (no replica could ever be replaced)' })
  .meta({ id: 'UpdateStrategy' });
export type UpdateStrategy = z.infer<typeof UpdateStrategySchema>;

/** What each replica's sandbox is made from: the create options that make sense for a replica. */
export const DeploymentSandboxSchema = CreateSandboxRequestSchema.pick({
  image: true,
  pull: true,
  template: true,
  snapshot: true,
  cpus: true,
  memoryMiB: true,
  diskSizeMiB: true,
  env: true,
  network: true,
  egress: true,
})
  .strict()
  .meta({ id: 'DeploymentSandbox' });
export type DeploymentSandbox = z.infer<typeof DeploymentSandboxSchema>;

/**
 * A service port: one host port (TCP) balanced over the healthy replicas'
 * guest port, in the same syntax as published ports (`127.0.0.1:8080:8000`,
 * `8080:8000`, `127.0.0.1::8000` for a free host port).
 */
export const ServicePortSchema = PortSpecSchema.superRefine((spec, ctx) => {
  try {
    if (normalizePortSpec(spec).protocol !== 'tcp') ctx.addIssue({ code: 'custom', message: 'service ports are TCP' });
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: e instanceof Error ? e.message : String(e) });
  }
});

/** A deployment: the desired state Roost keeps true. */
export const DeploymentSpecSchema = z
  .object({
    name,
    replicas: z.number().int().min(0).max(MAX_REPLICAS).default(1),
    sandbox: DeploymentSandboxSchema.default({}),
    /** The long-running workload of each replica: an argv, or a shell command line (run with `sh -c`). */
    command: z.union([z.array(z.string()).min(1), z.string().min(1)]),
    /** Its working directory and user (default: the image's). */
    workingDir: z.string().startsWith('/', 'must be an absolute path').optional(),
    user: z.string().min(1).optional(),
    ports: z.array(ServicePortSchema).max(MAX_SERVICE_PORTS).default([]),
    /** How a service port picks the healthy replica of a new connection: in turn, or the one with the fewest open connections. */
    balance: z.enum(['round-robin', 'least-connections']).default('round-robin'),
    health: HealthCheckSchema.optional(),
    restart: RestartPolicySchema.default('always'),
    update: UpdateStrategySchema.default({ maxSurge: 1, maxUnavailable: 0 }),
    labels: z.record(z.string(), z.string()).optional(),
  })
  .strict()
  .superRefine((spec, ctx) => {
    if (spec.sandbox.template !== undefined && spec.sandbox.image !== undefined)
      ctx.addIssue({ code: 'custom', path: ['sandbox', 'template'], message: 'give template or image, not both' });
    if (spec.sandbox.network === 'none') {
      if (spec.ports.length > 0)
        ctx.addIssue({ code: 'custom', path: ['ports'], message: "service ports need a network: leave sandbox.network out, or give 'user' or 'bridge'" });
      if (spec.health?.http || spec.health?.tcp)
        ctx.addIssue({
          code: 'custom',
          path: ['health'],
          message: "http and tcp checks need a network: use an exec check, or give sandbox.network 'user' or 'bridge'",
        });
    }
    const hostPorts = new Set<string>();
    spec.ports.forEach((p, i) => {
      const m = normalizePortSpec(p);
      if (m.hostPort === 0) return;
      const key = `${m.hostIp}:${m.hostPort}`;
      if (hostPorts.has(key)) ctx.addIssue({ code: 'custom', path: ['ports', i], message: `host port ${key} is given twice` });
      hostPorts.add(key);
    });
  })
  .meta({ id: 'DeploymentSpec' });
/** A deployment spec as written (defaults not yet applied). */
export type DeploymentSpecInput = z.input<typeof DeploymentSpecSchema>;
/** A deployment spec with its defaults applied. */
export type DeploymentSpec = z.infer<typeof DeploymentSpecSchema>;

/** One problem of a spec: the field, its line in the file when known, and what is wrong. */
export interface SpecProblem {
  path: string;
  line?: number;
  message: string;
}

/**
 * Parses a deployment spec from YAML or JSON text (JSON is YAML). Any
 * problem, in the syntax or against the schema, is INVALID_ARGUMENT naming
 * `source`, the line and the field, e.g. `web.yaml:3: replicas: must be at
 * most 64`; `details.fields` lists them all.
 */
export function parseDeploymentSpec(text: string, source = 'deployment spec'): DeploymentSpec {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const lineOf = (offset: number | undefined) => (offset === undefined ? undefined : lines.linePos(offset).line);
  if (doc.errors.length > 0) {
    const problems: SpecProblem[] = doc.errors.map((e) => ({ path: '', line: lineOf(e.pos[0]), message: e.message.split('\n')[0]! }));
    throw specError(source, problems);
  }
  const value: unknown = doc.toJS({ maxAliasCount: 100 });
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw specError(source, [{ path: '', line: 1, message: 'must be a mapping (name, replicas, sandbox, command, ...)' }]);
  const r = DeploymentSpecSchema.safeParse(value);
  if (r.success) return r.data;
  const problems = r.error.issues.map((i): SpecProblem => {
    const path = i.path.map(String);
    // The deepest node of the path that exists: the field itself, or the mapping it is missing from.
    let node: YamlNode | null | undefined;
    for (let n = path.length; n >= 0 && !node; n--) node = nodeAt(doc.contents, i.path.slice(0, n));
    const keys = i.code === 'unrecognized_keys' ? (i as { keys: string[] }).keys : [];
    // An unknown key is reported on its own line.
    const keyNode =
      keys.length && isMap(node) ? (node.items.find((p) => (p.key as { value?: unknown } | null)?.value === keys[0])?.key as YamlNode | undefined) : undefined;
    return { path: [...path, ...(keys.length ? [keys.join(', ')] : [])].join('.'), line: lineOf((keyNode ?? node)?.range?.[0]), message: i.message };
  });
  throw specError(source, problems);
}

function nodeAt(root: unknown, path: PropertyKey[]): YamlNode | null {
  let node = root;
  for (const key of path) {
    if (isMap(node)) node = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === key)?.value;
    else if (isSeq(node) && typeof key === 'number') node = node.items[key];
    else return null;
  }
  return (node as YamlNode | undefined) ?? null;
}

function specError(source: string, problems: SpecProblem[]): RoostError {
  const text = problems.map((p) => `${source}${p.line ? `:${p.line}` : ''}: ${p.path ? `${p.path}: ` : ''}${p.message}`).join('\n');
  return new RoostError('INVALID_ARGUMENT', `invalid deployment spec:\n${text}`, { details: { fields: problems } });
}

// ---- the deployments' state and API ------------------------------------------------

/** POST /v1/deployments/{name}/scale */
export const ScaleDeploymentRequestSchema = z
  .object({ replicas: z.number().int().min(0).max(MAX_REPLICAS) })
  .strict()
  .meta({ id: 'ScaleDeploymentRequest' });
export type ScaleDeploymentRequest = z.infer<typeof ScaleDeploymentRequestSchema>;

/**
 * Where a replica is: `creating` (its sandbox boots), `starting` (its
 * workload runs, not yet healthy), `healthy`, `unhealthy` (failed its
 * check `retries` times in a row: it is replaced), `restarting` (its
 * workload exited and is started again after a back-off), `exited` (its
 * workload ended and the restart policy keeps it down), `removing`
 * (drained, then removed).
 */
export const ReplicaStateSchema = z.enum(['creating', 'starting', 'healthy', 'unhealthy', 'restarting', 'exited', 'removing']);
export type ReplicaState = z.infer<typeof ReplicaStateSchema>;

/** One replica of a deployment. */
export const ReplicaInfoSchema = z
  .object({
    /** Its sandbox's id. */
    id: z.string(),
    /** The revision of the spec it was made from; `current` when that is the deployment's. */
    revision: z.string(),
    current: z.boolean(),
    state: ReplicaStateSchema,
    /** Times its workload was started again in the same sandbox. */
    restarts: z.number().int(),
    /** When its workload last started (ISO 8601), null before it has. */
    startedAt: z.string().nullable(),
    /** The last health probe: what it saw, and failures in a row so far. */
    lastProbe: z.object({ ok: z.boolean(), detail: z.string(), at: z.string(), failures: z.number().int() }).nullable(),
    /** How its workload last ended, with the end of its output. */
    lastExit: z.object({ exitCode: z.number().int().nullable(), signal: z.string().nullable(), at: z.string(), output: z.string() }).nullable(),
  })
  .meta({ id: 'ReplicaInfo' });
export type ReplicaInfo = z.infer<typeof ReplicaInfoSchema>;

/** A service port as bound: the host address clients use, and the guest port it balances over. */
export const ServicePortBindingSchema = z
  .object({ hostIp: z.string(), hostPort: z.number().int(), guestPort: z.number().int(), spec: z.string() })
  .meta({ id: 'ServicePortBinding' });
export type ServicePortBinding = z.infer<typeof ServicePortBindingSchema>;

/** Why the last reconcile could not do what it wanted (a create failed, a port could not be bound), until one succeeds. */
export const DeploymentErrorSchema = z.object({
  code: z.string(),
  message: z.string(),
  at: z.string(),
  /** Failures in a row; the next attempt waits longer each time (up to a minute). */
  failures: z.number().int(),
  retryAt: z.string().nullable(),
});
export type DeploymentError = z.infer<typeof DeploymentErrorSchema>;

/** A deployment's desired state and what Roost observes of it. */
export const DeploymentInfoSchema = z
  .object({
    name: z.string(),
    /** The spec being kept true, defaults applied. */
    spec: DeploymentSpecSchema,
    /** The revision of the spec's replica template (sandbox, command, workingDir, user, labels): replicas of another are replaced by a rolling update. */
    revision: z.string(),
    /** Increases with every change of the spec (apply, scale, rollback). */
    generation: z.number().int(),
    /** The generation the replicas match: equal to `generation` once a change has rolled out. */
    observedGeneration: z.number().int(),
    /** Replicas that exist now (being created or removed ones excluded). */
    replicas: z.number().int(),
    healthyReplicas: z.number().int(),
    /** Replicas of the current revision. */
    updatedReplicas: z.number().int(),
    ports: z.array(ServicePortBindingSchema),
    members: z.array(ReplicaInfoSchema),
    /** A previous spec to roll back to. */
    canRollback: z.boolean(),
    createdAt: z.string(),
    updatedAt: z.string(),
    lastError: DeploymentErrorSchema.nullable(),
    /** Its last events, newest last. */
    events: z.array(RoostEventSchema),
  })
  .meta({ id: 'DeploymentInfo' });
export type DeploymentInfo = z.infer<typeof DeploymentInfoSchema>;

export const DeploymentListSchema = z.object({ deployments: z.array(DeploymentInfoSchema) }).meta({ id: 'DeploymentList' });

/**
 * `runtime.deployments`. The runtime that owns the home (the daemon, or an
 * embedded runtime while it is open) keeps each deployment's replicas
 * running and its service ports open; without one, replicas keep running
 * and nothing is reconciled until one opens the home.
 * Concurrency: calls may overlap; the reconciles of one deployment are
 * serialized, different deployments reconcile in parallel.
 */
export interface DeploymentsApi {
  /** Creates the deployment, or changes it (a new generation, rolled out by the reconcile loop); resolves at once with the state so far. INVALID_ARGUMENT for a bad spec, UNAVAILABLE when a service port cannot be bound. */
  apply(spec: DeploymentSpecInput): Promise<DeploymentInfo>;
  /** Every deployment, by name. */
  list(): Promise<DeploymentInfo[]>;
  /** A deployment by name; NOT_FOUND when there is none. */
  get(name: string): Promise<DeploymentInfo>;
  /** Sets the replica count (a new generation). */
  scale(name: string, replicas: number): Promise<DeploymentInfo>;
  /** Goes back to the previous spec (a new generation); INVALID_STATE when there is none. */
  rollback(name: string): Promise<DeploymentInfo>;
  /** Removes the deployment: its service ports close, its replicas are drained and removed; resolves once they are gone. */
  remove(name: string): Promise<void>;
}
