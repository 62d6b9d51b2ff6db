import { randomBytes } from 'node:crypto';
import type Database from 'better-sqlite3';
import { CreateTemplateRequestSchema, parseInput, type CommandsApi, type CreateTemplateRequest, type TemplateInfo, type TemplatesApi } from '@roost/api';
import { RoostError } from '../errors.js';
import type { SandboxOptions } from '../sandbox/plan.js';
import type { EventLog } from '../state/events.js';
import { DEFAULT_DISK_MIB } from '../vmm/types.js';
import type { SnapshotRecord, SnapshotStore } from './store.js';
import type { Assets } from '../assets.js';

/** What building a template uses of its sandbox: a command, a snapshot, removal. */
export interface TemplateSandbox {
  readonly commands: Pick<CommandsApi, 'run'>;
  _snapshot(name: string, kind: 'template', options: { template: string; timeoutMs: number; signal?: AbortSignal }): Promise<SnapshotRecord>;
  remove(options: { force: boolean }): Promise<void>;
}

/** What templates need from the runtime. */
export interface TemplateHost {
  create(options: SandboxOptions): Promise<TemplateSandbox>;
  assets(): Promise<Assets>;
}

type TemplateSpec = Omit<TemplateInfo, 'snapshot' | 'createdAt'>;

/**
 * Templates (warm pools): an image, resources and an optional setup command,
 * kept ready as a snapshot. The first sandbox of a template builds the
 * snapshot (a sandbox is booted, the setup runs, the snapshot is taken, the
 * sandbox removed); later ones restore it. A snapshot that no longer
 * restores (QEMU, kernel or agent changed) is rebuilt on the next use.
 * Builds of one template are serialized within this runtime.
 */
export class Templates implements TemplatesApi {
  readonly #db: Database.Database;
  readonly #snapshots: SnapshotStore;
  readonly #events: EventLog;
  readonly #host: TemplateHost;
  readonly #building = new Map<string, Promise<TemplateInfo>>();

  constructor(db: Database.Database, snapshots: SnapshotStore, events: EventLog, host: TemplateHost) {
    this.#db = db;
    this.#snapshots = snapshots;
    this.#events = events;
    this.#host = host;
  }

  /**
   * Defines a template; with `warm`, builds its snapshot first and writes the
   * template with it, so a failed build leaves no template. ALREADY_EXISTS if
   * the name is taken.
   */
  async create(request: CreateTemplateRequest & { signal?: AbortSignal }): Promise<TemplateInfo> {
    const { signal, ...rest } = request;
    const req = parseInput(CreateTemplateRequestSchema, rest, 'template');
    const spec: TemplateSpec = {
      name: req.name,
      ...(req.image ? { image: req.image } : {}),
      cpus: req.cpus ?? 1,
      memoryMiB: req.memoryMiB ?? 256,
      diskSizeMiB: req.diskSizeMiB ?? DEFAULT_DISK_MIB,
      env: req.env ?? {},
      ...(req.setup ? { setup: req.setup } : {}),
    };
    if (this.#find(spec.name)) throw alreadyExists(spec.name);
    if (!req.warm) {
      this.#insert(spec, null);
      return this.get(spec.name);
    }
    // Built first, written with its snapshot: a failed build (a setup that exits non-zero, a boot that fails) leaves no template.
    const rec = await this.#buildSnapshot(spec, { ...(req.timeoutMs ? { timeoutMs: req.timeoutMs } : {}), ...(signal ? { signal } : {}) });
    try {
      this.#insert(spec, rec.id);
    } catch (e) {
      await this.#snapshots.removeIfUnused(rec.id).catch(() => {});
      throw e;
    }
    return this.get(spec.name);
  }

  /** Writes a template's row (with its snapshot, when built) and its event; ALREADY_EXISTS if the name is taken. */
  #insert(spec: TemplateSpec, snapshotId: string | null): void {
    try {
      this.#db.transaction(() => {
        this.#db
          .prepare('INSERT INTO templates (name, spec_json, snapshot_id, created_at) VALUES (?, ?, ?, ?)')
          .run(spec.name, JSON.stringify(spec), snapshotId, new Date().toISOString());
        this.#events.append('template.created', { data: { template: spec.name, image: spec.image ?? null } });
      })();
    } catch (e) {
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw alreadyExists(spec.name);
      throw e;
    }
  }

  async get(name: string): Promise<TemplateInfo> {
    const t = this.#find(name);
    if (!t) throw new RoostError('NOT_FOUND', `no template ${name} (see \`roost template ls\`)`, { details: { template: name } });
    return t;
  }

  async list(): Promise<TemplateInfo[]> {
    const rows = this.#db.prepare('SELECT spec_json, snapshot_id, created_at FROM templates ORDER BY name').all() as Row[];
    return rows.map(toInfo);
  }

  /** Builds the template's snapshot (again, even when it has one that restores). */
  warm(name: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<TemplateInfo> {
    const running = this.#building.get(name);
    if (running) return running;
    const build = this.#build(name, options).finally(() => this.#building.delete(name));
    this.#building.set(name, build);
    return build;
  }

  /** Removes the template, and its snapshot once no sandbox restored from it remains. */
  async remove(name: string): Promise<void> {
    const t = await this.get(name);
    this.#db.transaction(() => {
      this.#db.prepare('DELETE FROM templates WHERE name = ?').run(name);
      this.#events.append('template.removed', { data: { template: name } });
    })();
    if (t.snapshot) await this.#snapshots.removeIfUnused(t.snapshot);
  }

  /**
   * @internal The snapshot a sandbox of this template restores: the current
   * one when it was made by this build of Roost, else a new one.
   */
  async _snapshotFor(name: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<string> {
    // A build in progress (this one's or another caller's) is waited for.
    const inFlight = this.#building.get(name);
    let t = inFlight ? await inFlight : await this.get(name);
    if (t.snapshot && (await this.#restorable(t.snapshot))) return t.snapshot;
    t = await this.warm(name, options);
    if (!t.snapshot) throw new RoostError('INTERNAL', `template ${name} has no snapshot after its build`);
    return t.snapshot;
  }

  async #restorable(id: string): Promise<boolean> {
    const rec = this.#snapshots.find(id);
    return rec !== undefined && (await this.#snapshots.mismatch(rec, await this.#host.assets())) === null;
  }

  /** Builds a new snapshot of a defined template and makes it the template's (the old one is removed once unused). */
  async #build(name: string, options: { timeoutMs?: number; signal?: AbortSignal }): Promise<TemplateInfo> {
    const t = await this.get(name);
    const rec = await this.#buildSnapshot(t, options);
    const old = this.#find(name)?.snapshot ?? null;
    const changes = this.#db.prepare('UPDATE templates SET snapshot_id = ? WHERE name = ?').run(rec.id, name).changes;
    if (changes === 0) {
      // Removed while it was being built.
      await this.#snapshots.removeIfUnused(rec.id);
      throw new RoostError('NOT_FOUND', `template ${name} was removed while its snapshot was built`);
    }
    if (old && old !== rec.id) await this.#snapshots.removeIfUnused(old);
    return this.get(name);
  }

  /** Boots a sandbox of the spec, runs its setup, snapshots it and removes it: the snapshot, or the error that stopped it (nothing left behind). */
  async #buildSnapshot(t: TemplateSpec, options: { timeoutMs?: number; signal?: AbortSignal }): Promise<SnapshotRecord> {
    const name = t.name;
    const timeoutMs = options.timeoutMs ?? 120_000;
    const sb = await this.#host.create({
      ...(t.image ? { image: t.image } : {}),
      cpus: t.cpus,
      memoryMiB: t.memoryMiB,
      diskSizeMiB: t.diskSizeMiB,
      env: t.env,
      labels: { 'roost.template': name },
      timeoutMs,
      ...(options.signal ? { signal: options.signal } : {}),
    });
    try {
      if (t.setup) {
        const r = await sb.commands.run(t.setup, { timeoutMs, ...(options.signal ? { signal: options.signal } : {}) });
        if (r.exitCode !== 0) {
          const tailOf = (s: string) => s.split('\n').filter(Boolean).slice(-10).join('\n  ');
          throw new RoostError(
            'INVALID_STATE',
            `the setup command of template ${name} exited with ${r.exitCode}:\n  ${tailOf(r.stderr || r.stdout) || '(no output)'}`,
            {
              details: { template: name, exitCode: r.exitCode },
            },
          );
        }
      }
      return await sb._snapshot(`template.${name}.${randomBytes(3).toString('hex')}`, 'template', {
        template: name,
        timeoutMs,
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } finally {
      await sb.remove({ force: true }).catch(() => {});
    }
  }

  #find(name: string): TemplateInfo | undefined {
    const row = this.#db.prepare('SELECT spec_json, snapshot_id, created_at FROM templates WHERE name = ?').get(name) as Row | undefined;
    return row ? toInfo(row) : undefined;
  }
}

function alreadyExists(name: string): RoostError {
  return new RoostError('ALREADY_EXISTS', `a template named ${name} exists already: choose another name or remove it (\`roost template rm ${name}\`)`, {
    details: { template: name },
  });
}

interface Row {
  spec_json: string;
  snapshot_id: string | null;
  created_at: string;
}

function toInfo(row: Row): TemplateInfo {
  return { ...(JSON.parse(row.spec_json) as TemplateSpec), createdAt: row.created_at, snapshot: row.snapshot_id };
}
