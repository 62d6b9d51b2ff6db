import type Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import type { DeploymentError, DeploymentSpec, EventType } from '@roost/api';
import { RoostError } from '../errors.js';
import type { EventLog } from '../state/events.js';

/** A deployment's row: its desired state and what the reconcile loop has made of it. */
export interface DeploymentRecord {
  name: string;
  spec: DeploymentSpec;
  /** The spec before the last change of anything but the replica count (rollback goes back to it). */
  previous: DeploymentSpec | null;
  generation: number;
  observedGeneration: number;
  /** Host ports chosen for spec ports given without one (`127.0.0.1::8000`), by spec string: kept across owners. */
  chosenPorts: Record<string, number>;
  createdAt: string;
  updatedAt: string;
  lastError: DeploymentError | null;
}

interface Row {
  name: string;
  spec_json: string;
  previous_spec_json: string | null;
  generation: number;
  observed_generation: number;
  ports_json: string;
  created_at: string;
  updated_at: string;
  last_error_json: string | null;
}

/**
 * The revision of a spec: a digest of what makes a replica (its sandbox,
 * command, working directory, user and labels). Replicas of another
 * revision are replaced by a rolling update; a change of the replica count,
 * ports, health check, restart policy or update strategy changes none.
 */
export function specRevision(spec: DeploymentSpec): string {
  const template = { sandbox: spec.sandbox, command: spec.command, workingDir: spec.workingDir ?? null, user: spec.user ?? null, labels: spec.labels ?? {} };
  return createHash('sha256').update(canonicalJson(template)).digest('hex').slice(0, 12);
}

/** JSON with object keys sorted at every level: equal values give equal text. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** Two specs are the same desired state. */
export function sameSpec(a: DeploymentSpec, b: DeploymentSpec): boolean {
  return canonicalJson(a) === canonicalJson(b);
}

/**
 * The `deployments` table: each change of the desired state is written with
 * its event in one transaction. One runtime owns a home at a time, so its
 * Deployments object is the only writer. Concurrency: synchronous calls,
 * each its own transaction.
 */
export class DeploymentStore {
  readonly #db: Database.Database;
  readonly #events: EventLog;

  constructor(db: Database.Database, events: EventLog) {
    this.#db = db;
    this.#events = events;
  }

  get(name: string): DeploymentRecord | undefined {
    const row = this.#db.prepare('SELECT * FROM deployments WHERE name = ?').get(name) as Row | undefined;
    return row ? toRecord(row) : undefined;
  }

  /** Every deployment, by name. */
  all(): DeploymentRecord[] {
    return (this.#db.prepare('SELECT * FROM deployments ORDER BY name').all() as Row[]).map(toRecord);
  }

  /**
   * Writes a new spec (a new deployment at generation 1, or the next
   * generation of one) with `event`. `previous`: the spec a rollback would
   * go back to after this. Returns the record as written.
   */
  write(spec: DeploymentSpec, previous: DeploymentSpec | null, event: EventType, data: Record<string, unknown>): DeploymentRecord {
    return this.#db.transaction(() => {
      const now = new Date().toISOString();
      const before = this.get(spec.name);
      const generation = (before?.generation ?? 0) + 1;
      if (before) {
        this.#db
          .prepare('UPDATE deployments SET spec_json = ?, previous_spec_json = ?, generation = ?, updated_at = ? WHERE name = ?')
          .run(JSON.stringify(spec), previous ? JSON.stringify(previous) : null, generation, now, spec.name);
      } else {
        this.#db
          .prepare('INSERT INTO deployments (name, spec_json, previous_spec_json, generation, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)')
          .run(spec.name, JSON.stringify(spec), previous ? JSON.stringify(previous) : null, generation, now, now);
      }
      this.#events.append(event, { data: { deployment: spec.name, generation, revision: specRevision(spec), ...data } });
      return this.get(spec.name)!;
    })();
  }

  /** Records that the replicas match `generation`. */
  observed(name: string, generation: number): void {
    this.#db.prepare('UPDATE deployments SET observed_generation = ? WHERE name = ? AND observed_generation < ?').run(generation, name, generation);
  }

  /** Keeps the host port chosen for a spec port given without one. */
  setChosenPorts(name: string, ports: Record<string, number>): void {
    this.#db.prepare('UPDATE deployments SET ports_json = ? WHERE name = ?').run(JSON.stringify(ports), name);
  }

  /** Records the last reconcile's failure, or clears it (null). */
  setError(name: string, error: DeploymentError | null): void {
    this.#db.prepare('UPDATE deployments SET last_error_json = ? WHERE name = ?').run(error ? JSON.stringify(error) : null, name);
  }

  /** Deletes a deployment's row with its `deployment.removed` event (false: no such deployment). */
  delete(name: string): boolean {
    return this.#db.transaction(() => {
      const changes = this.#db.prepare('DELETE FROM deployments WHERE name = ?').run(name).changes;
      if (changes > 0) this.#events.append('deployment.removed', { data: { deployment: name } });
      return changes > 0;
    })();
  }
}

/** NOT_FOUND for a deployment name. */
export function deploymentNotFound(name: string): RoostError {
  return new RoostError('NOT_FOUND', `no deployment ${name} (see \`roost deployments ls\`)`, { details: { deployment: name } });
}

function toRecord(row: Row): DeploymentRecord {
  return {
    name: row.name,
    spec: JSON.parse(row.spec_json) as DeploymentSpec,
    previous: row.previous_spec_json ? (JSON.parse(row.previous_spec_json) as DeploymentSpec) : null,
    generation: row.generation,
    observedGeneration: row.observed_generation,
    chosenPorts: JSON.parse(row.ports_json) as Record<string, number>,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    lastError: row.last_error_json ? (JSON.parse(row.last_error_json) as DeploymentError) : null,
  };
}
