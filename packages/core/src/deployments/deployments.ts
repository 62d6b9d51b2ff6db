import {
  DEPLOYMENT_LABEL,
  DEPLOYMENT_REVISION_LABEL,
  DeploymentSpecSchema,
  parseInput,
  ScaleDeploymentRequestSchema,
  type CommandResult,
  type DeploymentError,
  type DeploymentInfo,
  type DeploymentsApi,
  type DeploymentSpec,
  type DeploymentSpecInput,
  type EventType,
  type ReplicaInfo,
  type ReplicaState,
  type RunOptions,
  type SandboxStatus,
} from '@roost/api';
import { setMaxListeners } from 'node:events';
import type { Duplex } from 'node:stream';
import type Database from 'better-sqlite3';
import { RoostError } from '../errors.js';
import type { SandboxOptions } from '../sandbox/plan.js';
import type { EventLog } from '../state/events.js';
import { plannedBindings, ServicePorts } from './service-ports.js';
import { ReconcileQueue } from '../reconcile-queue.js';
import { HealthTracker, probe } from './health.js';
import { deploymentNotFound, DeploymentStore, sameSpec, specRevision, type DeploymentRecord } from './store.js';

/*
 * Deployments (issue 19; docs/deployments.md): desired state in roost.db,
 * observed state from the sandboxes labelled `roost.deployment=<name>`, and
 * a reconcile loop per deployment, run by the runtime that owns the home,
 * that creates, restarts, replaces and removes replicas until the two
 * match. Every decision is taken from what is observed at the time, so a
 * runtime killed half-way and opened again picks up where it was: no
 * duplicate replicas (they are counted, not remembered), no orphans
 * (replicas of a deployment that no longer exists are removed).
 */

/** What deployments use of a sandbox (a `Sandbox`). */
export interface DeploymentMember {
  readonly id: string;
  readonly status: SandboxStatus;
  /** The deployment and revision it is a replica of (its labels), if any. */
  readonly _replicaOf: { deployment: string; revision: string } | undefined;
  readonly commands: { start(cmd: string, options: RunOptions): Promise<WorkloadHandle> };
  /** A TCP connection from the host to a guest port (INVALID_STATE without a network). */
  _connectTcp(port: number): Duplex;
  resume(): Promise<void>;
  remove(options: { force: boolean }): Promise<void>;
}

/** A replica's workload as started (a `CommandHandle`). */
export interface WorkloadHandle {
  readonly stdout: AsyncIterable<Uint8Array>;
  readonly stderr: AsyncIterable<Uint8Array>;
  wait(): Promise<CommandResult>;
  kill(signal?: NodeJS.Signals | number): void;
}

/** What deployments use of the runtime that owns the home. */
export interface DeploymentHost<S extends DeploymentMember> {
  /** Creates a sandbox through the runtime (its limits and tracking), without the checks of the public create (replicas carry reserved labels). */
  create(options: SandboxOptions): Promise<S>;
  /** Every sandbox the runtime has. */
  sandboxes(): Iterable<S>;
}

/** How long one replica's boot may take (its image pull comes before, bounded by the deployment's removal or the runtime's close). */
const CREATE_TIMEOUT_MS = 60_000;
/** Replicas one reconcile creates at once; more are made by the next reconcile, at once. */
const PARALLEL_CREATES = 4;
/** How long a replica taken out of a service port may keep its open connections before it is removed. */
const DRAIN_TIMEOUT_MS = 10_000;
/** The first retry after a failed create (or a replica replaced before it was ever healthy), doubled each time in a row up to RETRY_MAX_MS. */
const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 60_000;
/** A workload started again waits RESTART_BASE_MS, doubled with each exit in a row up to RESTART_MAX_MS; one that ran RESTART_RESET_MS resets it. */
const RESTART_BASE_MS = 1_000;
const RESTART_MAX_MS = 30_000;
const RESTART_RESET_MS = 10_000;
/**
 * While a replica is starting it is probed this often (or at its interval,
 * if shorter), so that it takes traffic soon after it can; failures still
 * count once per interval, so a slow start is not judged faster than the
 * spec says.
 */
const STARTING_PROBE_MS = 250;
/** The first probe of a starting replica comes this soon, the next ones twice as late each up to STARTING_PROBE_MS: a server that is up at once takes traffic at once. */
const FIRST_PROBE_MS = 25;
/** The end of a workload's output kept for `lastExit`. */
const OUTPUT_TAIL_BYTES = 4096;
/** Events shown with a deployment. */
const EVENTS_SHOWN = 10;

/** What this runtime knows of one replica beyond its sandbox. */
class Replica<S extends DeploymentMember> {
  state: ReplicaState = 'starting';
  restarts = 0;
  startedAt: number | null = null;
  everHealthy = false;
  tracker: HealthTracker | null = null;
  lastProbe: ReplicaInfo['lastProbe'] = null;
  lastExit: ReplicaInfo['lastExit'] = null;
  handle: WorkloadHandle | null = null;
  /** The probe or restart timer. */
  timer: NodeJS.Timeout | null = null;
  /** Exits in a row that came soon after a start (restart back-off). */
  quickExits = 0;
  /** Probes since the workload last started (their pace while starting). */
  startingProbes = 0;
  /** When a failed probe last counted (failures count once per interval). */
  lastCountedFailure = 0;
  /** Increases with each start of the workload and at removal: callbacks of an older run do nothing. */
  run = 0;
  tail = '';

  constructor(
    readonly sandbox: S,
    readonly revision: string,
  ) {}

  keep(chunk: Uint8Array): void {
    this.tail = (this.tail + Buffer.from(chunk).toString('utf8')).slice(-OUTPUT_TAIL_BYTES);
  }

  stopTimers(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** What this runtime knows of one deployment beyond its row. */
interface DeploymentState<S extends DeploymentMember> {
  readonly name: string;
  readonly replicas: Map<string, Replica<S>>;
  readonly ports: ServicePorts;
  /** Its reconciles, one at a time; creates that failed in a row (or replicas replaced before they were ever healthy), and the retry. */
  readonly queue: ReconcileQueue;
  /** Aborts the creates of this deployment (its removal, the runtime closing). */
  readonly abort: AbortController;
  /** When the next create may start (after failures). */
  nextCreateAt: number;
  /** Replicas removed to be replaced, whose replacement is not made yet (for `replica.replaced`). */
  readonly replaced: { id: string; reason: string }[];
  removed: boolean;
}

/**
 * `runtime.deployments`: desired state written with a generation, kept
 * true by a reconcile loop per deployment while `start()` has been called
 * (the runtime that owns the home calls it after recovery).
 *
 * A replica is a detached sandbox labelled with its deployment and the
 * revision of the spec it was made from, running the spec's command as a
 * supervised workload (restarted in place by the restart policy, with
 * back-off), probed by the health check from the host, and put behind the
 * service ports while healthy. A replica whose VM died, or that is
 * unhealthy, is drained and replaced; replicas of an older revision are
 * replaced a few at a time (maxSurge, maxUnavailable).
 */
export class Deployments<S extends DeploymentMember> implements DeploymentsApi {
  readonly #store: DeploymentStore;
  readonly #events: EventLog;
  readonly #host: DeploymentHost<S>;
  readonly #states = new Map<string, DeploymentState<S>>();
  #running = false;
  #closed = false;

  constructor(db: Database.Database, events: EventLog, host: DeploymentHost<S>) {
    this.#store = new DeploymentStore(db, events);
    this.#events = events;
    this.#host = host;
  }

  /** Starts reconciling (the runtime calls it once recovery is done): every deployment, and replicas of deployments that no longer exist. */
  start(): void {
    this.#running = true;
    const names = new Set(this.#store.all().map((d) => d.name));
    for (const s of this.#host.sandboxes()) {
      const of = s._replicaOf;
      if (of) names.add(of.deployment);
    }
    for (const name of names) this.#kick(name);
  }

  /**
   * Creates a deployment, or changes it (a new generation). Its service
   * ports are bound before the spec is written: a port that cannot be bound
   * fails the apply and changes nothing. An apply of the spec in force
   * changes nothing either (no new generation).
   */
  async apply(input: DeploymentSpecInput): Promise<DeploymentInfo> {
    this.#checkOpen();
    const spec = parseInput(DeploymentSpecSchema, input, 'deployment spec') as DeploymentSpec;
    const before = this.#store.get(spec.name);
    if (before && sameSpec(before.spec, spec)) return this.get(spec.name);
    if (this.#running) await this.#syncPorts(this.#state(spec.name), spec, before?.chosenPorts ?? {});
    let rec: DeploymentRecord;
    if (!before) rec = this.#store.write(spec, null, 'deployment.created', { replicas: spec.replicas });
    else {
      // Only the count changed: a scale, and the spec a rollback goes back to stays.
      const scaleOnly = sameSpec({ ...before.spec, replicas: spec.replicas }, spec);
      rec = this.#store.write(spec, scaleOnly ? before.previous : before.spec, scaleOnly ? 'deployment.scaled' : 'deployment.updated', {
        replicas: spec.replicas,
        previousRevision: specRevision(before.spec),
      });
    }
    this.#kick(rec.name);
    return this.get(rec.name);
  }

  async list(): Promise<DeploymentInfo[]> {
    return this.#store.all().map((r) => this.#info(r));
  }

  async get(name: string): Promise<DeploymentInfo> {
    return this.#info(this.#record(name));
  }

  /** Sets the replica count (a new generation); the spec a rollback goes back to stays. */
  async scale(name: string, replicas: number): Promise<DeploymentInfo> {
    this.#checkOpen();
    const req = parseInput(ScaleDeploymentRequestSchema, { replicas }, 'scale');
    const rec = this.#record(name);
    if (rec.spec.replicas === req.replicas) return this.get(name);
    this.#store.write({ ...rec.spec, replicas: req.replicas }, rec.previous, 'deployment.scaled', {
      replicas: req.replicas,
      previousReplicas: rec.spec.replicas,
    });
    this.#kick(name);
    return this.get(name);
  }

  /**
   * Goes back to the spec before the last change (keeping today's replica
   * count): a new generation, rolled out like any update. A second rollback
   * undoes the first. INVALID_STATE when there is nothing to go back to.
   */
  async rollback(name: string): Promise<DeploymentInfo> {
    this.#checkOpen();
    const rec = this.#record(name);
    if (!rec.previous) {
      throw new RoostError('INVALID_STATE', `deployment ${name} has no previous spec to roll back to (it has not been changed since it was created)`, {
        details: { deployment: name },
      });
    }
    const spec: DeploymentSpec = { ...rec.previous, replicas: rec.spec.replicas };
    if (this.#running) await this.#syncPorts(this.#state(name), spec, rec.chosenPorts);
    this.#store.write(spec, rec.spec, 'deployment.rolledback', { fromRevision: specRevision(rec.spec) });
    this.#kick(name);
    return this.get(name);
  }

  /** Removes the deployment: its row first (nothing reconciles it after), then its service ports close and its replicas are removed. */
  async remove(name: string): Promise<void> {
    this.#checkOpen();
    this.#record(name);
    const st = this.#state(name);
    st.removed = true;
    st.abort.abort(new RoostError('ABORTED', `deployment ${name} is being removed`));
    st.queue.cancelRetry();
    this.#store.delete(name);
    await st.queue.settled();
    await st.ports.close();
    await this.#removeAll(name, st);
    if (this.#states.get(name) === st) this.#states.delete(name);
  }

  /** @internal A sandbox's VM is gone, or the sandbox removed: if it was a replica, its deployment is reconciled. */
  _gone(id: string): void {
    for (const st of this.#states.values()) if (st.replicas.has(id)) return this.#kick(st.name);
  }

  /** The names of the deployments (for `roost serve stop`, which will not leave them ownerless unasked). */
  names(): string[] {
    return this.#store.all().map((d) => d.name);
  }

  /**
   * Stops reconciling: timers cleared, creates in flight aborted and waited
   * for, service ports closed. Replicas stay (they are detached): the next
   * runtime to open the home adopts them and starts their workloads again.
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const st of this.#states.values()) {
      st.queue.cancelRetry();
      st.abort.abort(new RoostError('UNAVAILABLE', 'the runtime is closing'));
      for (const r of st.replicas.values()) {
        r.stopTimers();
        r.run++;
      }
    }
    await Promise.allSettled([...this.#states.values()].map((st) => st.queue.settled()));
    await Promise.allSettled([...this.#states.values()].map((st) => st.ports.close()));
  }

  // ---- state ---------------------------------------------------------------------

  #checkOpen(): void {
    if (this.#closed) throw new RoostError('UNAVAILABLE', 'the runtime is closed');
  }

  #record(name: string): DeploymentRecord {
    const rec = this.#store.get(name);
    if (!rec) throw deploymentNotFound(name);
    return rec;
  }

  #state(name: string): DeploymentState<S> {
    let st = this.#states.get(name);
    if (!st) {
      const abort = new AbortController();
      setMaxListeners(0, abort.signal);
      const state: DeploymentState<S> = {
        name,
        replicas: new Map(),
        ports: new ServicePorts(),
        // A retry's pass checks what a kick would (not started, or closing).
        queue: new ReconcileQueue(
          () => (this.#running && !this.#closed ? this.#reconcile(state) : Promise.resolve()),
          (e) => this.#failed(state, e),
          { baseMs: RETRY_BASE_MS, maxMs: RETRY_MAX_MS },
        ),
        abort,
        nextCreateAt: 0,
        replaced: [],
        removed: false,
      };
      st = state;
      this.#states.set(name, st);
    }
    return st;
  }

  /** The sandboxes labelled as replicas of `name` (any status). */
  #members(name: string): S[] {
    return [...this.#host.sandboxes()].filter((s) => s._replicaOf?.deployment === name);
  }

  #info(rec: DeploymentRecord): DeploymentInfo {
    const st = this.#states.get(rec.name);
    const revision = specRevision(rec.spec);
    const members: ReplicaInfo[] = this.#members(rec.name).map((s) => {
      const r = st?.replicas.get(s.id);
      const rev = r?.revision ?? s._replicaOf!.revision;
      return {
        id: s.id,
        revision: rev,
        current: rev === revision,
        state: r?.state ?? observedState(s.status),
        restarts: r?.restarts ?? 0,
        startedAt: r?.startedAt ? new Date(r.startedAt).toISOString() : null,
        lastProbe: r?.lastProbe ?? null,
        lastExit: r?.lastExit ?? null,
      };
    });
    const existing = members.filter((m) => m.state !== 'creating' && m.state !== 'removing');
    const ports = st?.ports.size ? st.ports.bindings() : plannedBindings(rec.spec.ports, rec.chosenPorts);
    return {
      name: rec.name,
      spec: rec.spec,
      revision,
      generation: rec.generation,
      observedGeneration: rec.observedGeneration,
      replicas: existing.length,
      healthyReplicas: existing.filter((m) => m.state === 'healthy').length,
      updatedReplicas: existing.filter((m) => m.current).length,
      ports,
      members,
      canRollback: rec.previous !== null,
      createdAt: rec.createdAt,
      updatedAt: rec.updatedAt,
      lastError: rec.lastError,
      events: this.#events.latest({ typePrefixes: ['deployment.', 'replica.'], key: 'deployment', value: rec.name, limit: EVENTS_SHOWN }),
    };
  }

  #event(type: EventType, name: string, sandboxId: string | undefined, data: Record<string, unknown> = {}): void {
    this.#events.append(type, { ...(sandboxId ? { sandboxId } : {}), data: { deployment: name, ...data } });
  }

  // ---- the reconcile loop ------------------------------------------------------

  /** Queues a reconcile behind the one running (at most one waits). Nothing before start(), after close(), or for a deployment being removed. */
  #kick(name: string): void {
    if (!this.#running || this.#closed) return;
    const st = this.#state(name);
    if (!st.removed) st.queue.kick();
  }

  /**
   * One pass: replicas whose VM is gone or that are unhealthy are removed
   * (to be replaced), replicas found that this runtime does not know yet
   * are adopted (their workload started), and replicas are created and
   * removed toward the spec: the count, and a rolling update within
   * maxSurge and maxUnavailable. Serialized per deployment by #kick; health
   * changes, exits and timers kick the next pass.
   */
  async #reconcile(st: DeploymentState<S>): Promise<void> {
    const name = st.name;
    const rec = this.#store.get(name);
    if (!rec || st.removed) {
      if (st.removed) return;
      // Replicas of a deployment that no longer exists (its remove was cut short by a crash).
      await st.ports.close();
      await this.#removeAll(name, st);
      if (this.#states.get(name) === st && !st.queue.queued) this.#states.delete(name);
      return;
    }
    const spec = rec.spec;
    const revision = specRevision(spec);
    await this.#syncPorts(st, spec, rec.chosenPorts);

    // What is observed: gone replicas go, new ones are adopted.
    const removals: Promise<void>[] = [];
    const members = this.#members(name);
    const present = new Set(members.map((s) => s.id));
    for (const r of [...st.replicas.values()]) {
      if (present.has(r.sandbox.id) || r.state === 'removing') continue;
      // Removed by someone else (`roost rm`): replaced.
      r.stopTimers();
      r.run++;
      st.replicas.delete(r.sandbox.id);
      st.replaced.push({ id: r.sandbox.id, reason: 'its sandbox was removed' });
      this.#updateBackends(st);
    }
    for (const s of members) {
      const r = st.replicas.get(s.id);
      if (s.status === 'stopped' || s.status === 'failed') {
        if (r?.state !== 'removing') removals.push(this.#retire(st, s, r, `its VM ${s.status === 'failed' ? 'failed' : 'stopped'}`, true));
      } else if (!r && (s.status === 'running' || s.status === 'paused')) {
        this.#adopt(st, s, spec);
      }
    }
    for (const r of st.replicas.values()) {
      if (r.state === 'unhealthy') removals.push(this.#retire(st, r.sandbox, r, `unhealthy: ${r.lastProbe?.detail ?? 'failed its health check'}`, true));
    }

    const live = [...st.replicas.values()].filter((r) => r.state !== 'removing');
    const current = live.filter((r) => r.revision === revision);
    const old = live.filter((r) => r.revision !== revision);
    const desired = spec.replicas;

    // Too many of the current revision: the least useful go first.
    if (current.length > desired) {
      for (const r of [...current].sort(byUsefulness).slice(0, current.length - desired)) removals.push(this.#retire(st, r.sandbox, r, 'scaled down', false));
    }
    // Replicas of an older revision: those that serve nothing go at once; healthy ones while enough healthy replicas remain.
    const surge = old.length > 0 ? spec.update.maxSurge : 0;
    let healthy = live.filter((r) => r.state === 'healthy').length;
    const minAvailable = Math.max(0, desired - spec.update.maxUnavailable);
    let remaining = live.length;
    for (const r of [...old].sort(byUsefulness)) {
      const serving = r.state === 'healthy';
      const waiting = r.state === 'starting';
      if (serving ? healthy - 1 >= minAvailable : !waiting || remaining > desired + surge) {
        if (serving) healthy--;
        remaining--;
        removals.push(this.#retire(st, r.sandbox, r, `rolling update to revision ${revision}`, false));
      }
    }
    // Missing replicas of the current revision, within the surge.
    const wanted = Math.min(desired - Math.min(current.length, desired), desired + surge - remaining, PARALLEL_CREATES);
    const creates: Promise<void>[] = [];
    if (wanted > 0) {
      const wait = st.nextCreateAt - Date.now();
      if (wait > 0) st.queue.retryIn(wait);
      else for (let i = 0; i < wanted; i++) creates.push(this.#createReplica(st, spec, revision));
    }
    const results = await Promise.allSettled([...removals, ...creates]);
    if (st.removed || this.#closed) return;
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    if (creates.length > 0 && st.queue.failures === 0 && rec.lastError) this.#store.setError(name, null);

    // Rolled out: the replicas are the spec's count, all of its revision, none being made or removed.
    const now = [...st.replicas.values()];
    if (now.length === desired && now.every((r) => r.revision === revision && r.state !== 'removing')) this.#store.observed(name, rec.generation);
    // Creates left for the next pass (more than PARALLEL_CREATES missing) are made at once.
    if (creates.length > 0 && now.filter((r) => r.revision === revision).length < desired) this.#kick(name);
  }

  /** Makes one replica of the current revision and starts its workload. */
  async #createReplica(st: DeploymentState<S>, spec: DeploymentSpec, revision: string): Promise<void> {
    let s: S;
    try {
      s = await this.#host.create({
        ...spec.sandbox,
        detached: true,
        labels: { ...spec.labels, [DEPLOYMENT_LABEL]: st.name, [DEPLOYMENT_REVISION_LABEL]: revision },
        timeoutMs: CREATE_TIMEOUT_MS,
        signal: st.abort.signal,
      } as SandboxOptions);
    } catch (e) {
      // What a failed create left (a record kept failed, with its logs) is removed by the next pass.
      this.#backOff(st);
      throw e;
    }
    const r = new Replica(s, revision);
    st.replicas.set(s.id, r);
    const replaced = st.replaced.shift();
    if (replaced) this.#event('replica.replaced', st.name, s.id, { replaced: replaced.id, reason: replaced.reason, revision });
    else this.#event('replica.created', st.name, s.id, { revision });
    await this.#startWorkload(st, r, spec);
  }

  /** A replica found running that this runtime did not make (a previous owner did): its workload is started again. */
  #adopt(st: DeploymentState<S>, s: S, spec: DeploymentSpec): void {
    const r = new Replica(s, s._replicaOf!.revision);
    st.replicas.set(s.id, r);
    r.state = 'restarting';
    void (async () => {
      // Paused by hand: a replica runs.
      if (s.status === 'paused') await s.resume();
      r.restarts++;
      this.#event('replica.restarted', st.name, s.id, { reason: 'adopted by a new owner of the home', restarts: r.restarts });
      await this.#startWorkload(st, r, this.#specFor(st, r) ?? spec);
    })().catch(() => {
      r.state = 'unhealthy';
      this.#kick(st.name);
    });
  }

  /** The spec a replica's workload runs: the current one when the replica is of the current revision, else the one before it (a rolling update in progress), else the current. */
  #specFor(st: DeploymentState<S>, r: Replica<S>): DeploymentSpec | undefined {
    const rec = this.#store.get(st.name);
    if (!rec) return undefined;
    if (rec.previous && specRevision(rec.previous) === r.revision && specRevision(rec.spec) !== r.revision)
      return { ...rec.previous, ports: rec.spec.ports, health: rec.spec.health, restart: rec.spec.restart };
    return rec.spec;
  }

  /**
   * Takes a replica out: out of the service ports (drained, unless its VM
   * is gone), its workload and probes stopped, its sandbox removed.
   * `replace`: its replacement is announced as `replica.replaced`.
   */
  async #retire(st: DeploymentState<S>, s: S, r: Replica<S> | undefined, reason: string, replace: boolean): Promise<void> {
    if (r) {
      if (r.state === 'removing') return;
      // Replaced before it was ever healthy: the new revision (or the image) may be broken, so creates back off.
      if (replace && !r.everHealthy) this.#backOff(st);
      r.state = 'removing';
      r.stopTimers();
      r.run++;
    }
    if (replace) st.replaced.push({ id: s.id, reason });
    this.#updateBackends(st);
    const vmGone = s.status === 'stopped' || s.status === 'failed';
    try {
      if (!vmGone) await st.ports.drain(s.id, DRAIN_TIMEOUT_MS);
      await s.remove({ force: true });
      if (!replace) this.#event('replica.removed', st.name, s.id, { reason });
    } finally {
      st.replicas.delete(s.id);
    }
  }

  /** Removes every replica of `name` (the deployment is gone). */
  async #removeAll(name: string, st: DeploymentState<S>): Promise<void> {
    await Promise.allSettled(
      this.#members(name).map((s) => {
        const r = st.replicas.get(s.id);
        if (r) {
          r.stopTimers();
          r.run++;
          r.state = 'removing';
        }
        return s.remove({ force: true }).finally(() => st.replicas.delete(s.id));
      }),
    );
  }

  // ---- workloads and health ---------------------------------------------------

  /** Starts (or starts again) a replica's workload; its health is probed from then on. */
  async #startWorkload(st: DeploymentState<S>, r: Replica<S>, spec: DeploymentSpec): Promise<void> {
    const run = ++r.run;
    r.stopTimers();
    r.state = 'starting';
    r.tracker = spec.health ? new HealthTracker(spec.health, Date.now()) : null;
    r.startingProbes = 0;
    r.lastCountedFailure = Date.now();
    this.#updateBackends(st);
    const [cmd, args] = typeof spec.command === 'string' ? [spec.command, undefined] : [spec.command[0]!, spec.command.slice(1)];
    let handle: WorkloadHandle;
    try {
      handle = await r.sandbox.commands.start(cmd, {
        ...(args ? { args } : {}),
        ...(spec.workingDir ? { cwd: spec.workingDir } : {}),
        ...(spec.user ? { user: spec.user } : {}),
      });
    } catch (e) {
      if (run === r.run) this.#workloadEnded(st, r, run, spec, { exitCode: null, signal: null, error: e instanceof Error ? e.message : String(e) });
      return;
    }
    if (run !== r.run) {
      handle.kill();
      return;
    }
    r.handle = handle;
    r.startedAt = Date.now();
    if (!spec.health) this.#setHealth(st, r, 'healthy', 'its workload started (no health check)');
    else this.#probeLater(st, r, spec, this.#startingDelay(r, spec.health.intervalMs));
    void this.#follow(st, r, run, spec, handle);
  }

  /** Reads a workload's output (its tail is kept) until it ends, then applies the restart policy. */
  async #follow(st: DeploymentState<S>, r: Replica<S>, run: number, spec: DeploymentSpec, handle: WorkloadHandle): Promise<void> {
    const drain = async (stream: AsyncIterable<Uint8Array>) => {
      for await (const chunk of stream) r.keep(chunk);
    };
    try {
      // Read, not collected: a workload's output over days would otherwise stay in memory.
      await Promise.all([drain(handle.stdout), drain(handle.stderr)]);
      const res = await handle.wait();
      this.#workloadEnded(st, r, run, spec, { exitCode: res.exitCode, signal: res.signal });
    } catch (e) {
      // The agent is gone (the VM died, or the runtime closes): the VM's exit is what the reconcile acts on.
      if (run === r.run) this.#workloadEnded(st, r, run, spec, { exitCode: null, signal: null, error: e instanceof Error ? e.message : String(e) });
    }
  }

  #workloadEnded(
    st: DeploymentState<S>,
    r: Replica<S>,
    run: number,
    spec: DeploymentSpec,
    end: { exitCode: number | null; signal: string | null; error?: string },
  ): void {
    if (run !== r.run || st.removed || this.#closed) return;
    r.stopTimers();
    r.handle = null;
    const output = end.error ? `${r.tail}${r.tail && !r.tail.endsWith('\n') ? '\n' : ''}${end.error}` : r.tail;
    r.lastExit = { exitCode: end.exitCode, signal: end.signal, at: new Date().toISOString(), output: output.slice(-OUTPUT_TAIL_BYTES) };
    r.tail = '';
    const ranFor = r.startedAt ? Date.now() - r.startedAt : 0;
    r.quickExits = ranFor >= RESTART_RESET_MS ? 0 : r.quickExits + 1;
    const failed = end.exitCode !== 0;
    const restart = spec.restart === 'always' || (spec.restart === 'on-failure' && failed);
    const wasHealthy = r.state === 'healthy';
    r.state = restart ? 'restarting' : 'exited';
    this.#updateBackends(st);
    if (wasHealthy) this.#event('replica.unhealthy', st.name, r.sandbox.id, { reason: `its workload exited (${describeExit(end)})` });
    if (!restart) return this.#kick(st.name);
    const delay = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** Math.max(0, r.quickExits - 1));
    r.timer = setTimeout(() => {
      r.timer = null;
      if (run !== r.run || st.removed || this.#closed) return;
      r.restarts++;
      this.#event('replica.restarted', st.name, r.sandbox.id, { reason: `its workload exited (${describeExit(end)})`, restarts: r.restarts, delayMs: delay });
      // The spec may have changed meanwhile (a health check, a restart policy): the replica's own revision still says what it runs.
      void this.#startWorkload(st, r, this.#specFor(st, r) ?? spec);
    }, delay);
    r.timer.unref();
  }

  /** The wait before the next probe of a starting replica: FIRST_PROBE_MS, doubled with each probe up to STARTING_PROBE_MS (or the interval, if shorter). */
  #startingDelay(r: Replica<S>, intervalMs: number): number {
    return Math.min(FIRST_PROBE_MS * 2 ** r.startingProbes++, STARTING_PROBE_MS, intervalMs);
  }

  #probeLater(st: DeploymentState<S>, r: Replica<S>, spec: DeploymentSpec, delay: number): void {
    const run = r.run;
    r.timer = setTimeout(() => {
      r.timer = null;
      if (run === r.run) void this.#probe(st, r, spec, run);
    }, delay);
    r.timer.unref();
  }

  async #probe(st: DeploymentState<S>, r: Replica<S>, spec: DeploymentSpec, run: number): Promise<void> {
    const check = spec.health!;
    const s = r.sandbox;
    const result = await probe(check, {
      connectTcp: (port) => s._connectTcp(port),
      exec: async (argv, o) => {
        const h = await s.commands.start(argv[0]!, { args: argv.slice(1), timeoutMs: o.timeoutMs, signal: o.signal });
        return (await h.wait()).exitCode;
      },
    });
    if (run !== r.run || st.removed || this.#closed) return;
    const now = Date.now();
    const starting = r.state === 'starting';
    // While starting, probes come faster than the interval but failures count once per interval.
    const counts = result.ok || !starting || now - r.lastCountedFailure >= check.intervalMs;
    if (counts) {
      if (!result.ok) r.lastCountedFailure = now;
      const state = r.tracker!.record(result, now);
      r.lastProbe = { ok: result.ok, detail: result.detail, at: new Date(now).toISOString(), failures: r.tracker!.failures };
      if (state !== r.state) this.#setHealth(st, r, state, result.detail);
    }
    if (r.state === 'unhealthy') return;
    this.#probeLater(st, r, spec, r.state === 'starting' ? this.#startingDelay(r, check.intervalMs) : check.intervalMs);
  }

  #setHealth(st: DeploymentState<S>, r: Replica<S>, state: 'starting' | 'healthy' | 'unhealthy', detail: string): void {
    const was = r.state;
    r.state = state;
    if (state === 'healthy') {
      r.everHealthy = true;
      if (st.queue.failures > 0) {
        st.queue.succeeded();
        st.nextCreateAt = 0;
      }
      this.#event('replica.healthy', st.name, r.sandbox.id, { detail });
    } else if (state === 'unhealthy' && was !== 'unhealthy') {
      this.#event('replica.unhealthy', st.name, r.sandbox.id, { detail, failures: r.tracker?.failures ?? 0 });
    }
    this.#updateBackends(st);
    // A replica healthy or unhealthy changes what the rollout or the replacement may do next.
    this.#kick(st.name);
  }

  // ---- service ports ----------------------------------------------------------

  /** The service ports take new connections to the healthy replicas (others are drained). */
  #updateBackends(st: DeploymentState<S>): void {
    const healthy = [...st.replicas.values()].filter((r) => r.state === 'healthy');
    st.ports.setReplicas(healthy.map((r) => ({ id: r.sandbox.id, connect: (port) => r.sandbox._connectTcp(port) })));
  }

  /** Binds the spec's service ports (see ServicePorts.sync), keeping the host ports chosen in the row. */
  async #syncPorts(st: DeploymentState<S>, spec: DeploymentSpec, chosen: Record<string, number>): Promise<void> {
    const picked = await st.ports.sync(spec.ports, chosen, spec.balance);
    if (JSON.stringify(picked) !== JSON.stringify(chosen) && this.#store.get(st.name)) this.#store.setChosenPorts(st.name, picked);
    this.#updateBackends(st);
  }

  // ---- failures ---------------------------------------------------------------

  /** A create failed (or a replica was replaced before it was ever healthy): the next create waits, longer each time in a row. */
  #backOff(st: DeploymentState<S>): void {
    st.nextCreateAt = Date.now() + st.queue.backOff();
  }

  /** A reconcile failed: recorded in the deployment's `lastError`, and tried again after the back-off. */
  #failed(st: DeploymentState<S>, reason: unknown): void {
    if (st.removed || this.#closed || !this.#store.get(st.name)) return;
    if (st.nextCreateAt <= Date.now()) this.#backOff(st);
    const delay = Math.max(st.nextCreateAt - Date.now(), RETRY_BASE_MS);
    const error: DeploymentError = {
      code: reason instanceof RoostError ? reason.code : 'INTERNAL',
      message: reason instanceof Error ? (reason.message.split('\n')[0] ?? reason.message) : String(reason),
      at: new Date().toISOString(),
      failures: st.queue.failures,
      retryAt: new Date(Date.now() + delay).toISOString(),
    };
    this.#store.setError(st.name, error);
    st.queue.retryIn(delay);
  }
}

/** The state of a replica this runtime does not follow (another owner's, or none yet), from its sandbox's status. */
function observedState(status: SandboxStatus): ReplicaState {
  if (status === 'creating') return 'creating';
  if (status === 'running' || status === 'paused') return 'starting';
  if (status === 'stopping') return 'removing';
  return 'exited';
}

/** Removal order among replicas: those that serve nothing first, then the newest. */
function byUsefulness<S extends DeploymentMember>(a: Replica<S>, b: Replica<S>): number {
  const rank = (r: Replica<S>) => ({ exited: 0, unhealthy: 1, restarting: 2, creating: 3, starting: 4, removing: 5, healthy: 6 })[r.state];
  return rank(a) - rank(b) || (b.startedAt ?? 0) - (a.startedAt ?? 0);
}

function describeExit(end: { exitCode: number | null; signal: string | null; error?: string }): string {
  if (end.error) return end.error;
  if (end.signal) return `signal ${end.signal}`;
  return `exit status ${end.exitCode}`;
}
