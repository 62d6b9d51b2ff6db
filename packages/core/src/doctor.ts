import { existsSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import type Database from 'better-sqlite3';
import { VolumeNameSchema, type DatabaseCondition, type DoctorFinding, type DoctorReport, type SandboxInfo } from '@roost/api';
import { HomeLayout, roostHome } from './home.js';
import { isLive } from './sandbox/record.js';
import { recoveryDecision } from './sandbox/recover.js';
import { readSnapshotWitness, SnapshotStore } from './snapshot/store.js';
import { databaseRefusal, memoryStateDb, stateDb } from './state/db.js';
import { EventLog } from './state/events.js';
import { HomeLock } from './state/lock.js';
import { SandboxRecords } from './state/sandboxes.js';
import { secureHome } from './state/private.js';
import { sweepTempFiles } from './state/sweep.js';
import { SandboxWitnesses } from './state/witness.js';
import { resolveVmm } from './vmm/registry.js';
import { DEFAULT_DISK_MIB, type FoundVm, type Vmm } from './vmm/types.js';

/*
 * `roost doctor`: a home checked against what is on the host (the VM
 * processes found in /proc by the VMM backend, the sandbox and snapshot
 * directories and their witnesses), and with `repair` the records rebuilt
 * from them. Nothing is deleted: a broken database is moved aside, and a
 * directory nothing describes goes to `<home>/lost+found/`. A live VM is
 * re-adopted as a detached sandbox, never killed. See docs/recovery.md.
 */

const ID_PATTERN = /^[0-9a-f]{12}$/;

/** What `examineHome` works on: one home's database and files, and its VMM backend. */
export interface DoctorContext {
  layout: HomeLayout;
  db: Database.Database;
  records: SandboxRecords;
  events: EventLog;
  snapshots: SnapshotStore;
  witnesses: SandboxWitnesses;
  vmm: Vmm;
  /**
   * Sandboxes a running runtime watches (`runtime.doctor()`): their records
   * are the runtime's to keep, so a live one without a VM found is left to
   * it. Absent offline (the doctor holds the home's lock).
   */
  owned?: (id: string) => boolean;
}

/**
 * How long a directory nothing describes must have been left alone before
 * a doctor beside a running runtime moves it: younger, it may be a sandbox
 * being created, or one being removed.
 */
export const QUIET_MS = 60_000;

/** What `examineHome` found, and the sandboxes whose records it wrote (a runtime adopts them). */
export interface Examination {
  findings: DoctorFinding[];
  vms: number;
  rewritten: string[];
}

/**
 * Checks a home and, with `repair`, repairs what it safely can: sandbox
 * records rebuilt from witnesses and VM processes, record statuses set to
 * what runs, snapshots and volumes recorded again, and what nothing
 * describes moved to lost+found. The findings say what was done and what
 * is left.
 */
export async function examineHome(ctx: DoctorContext, repair: boolean): Promise<Examination> {
  const { layout } = ctx;
  const findings: DoctorFinding[] = [];
  const rewritten: string[] = [];
  const found = ctx.vmm.findVms?.(layout.sandboxes) ?? null;
  const vms = new Map<string, FoundVm>();
  for (const vm of found ?? []) if (ID_PATTERN.test(basename(vm.dir))) vms.set(basename(vm.dir), vm);
  const dirs = new Set(list(layout.sandboxes).filter((d) => ID_PATTERN.test(d)));
  const records = new Map(ctx.records.all().map((r) => [r.id, r]));
  const owned = ctx.owned ?? (() => false);
  const note = (f: Omit<DoctorFinding, 'repaired'>, repaired = repair) => findings.push({ ...f, repaired });
  const write = (info: SandboxInfo, from: string) => {
    ctx.db.transaction(() => {
      ctx.records.put(info);
      ctx.events.append('sandbox.recovered', { sandboxId: info.id, data: { from, status: info.status, pid: info.pid } });
    })();
    ctx.witnesses.write(info);
    rewritten.push(info.id);
  };
  const todo = (done: string, hint: string) => (repair ? done : `\`roost doctor --repair\` ${hint}`);

  // Sandbox directories without a record.
  for (const id of dirs) {
    if (records.has(id)) continue;
    const path = layout.sandbox(id);
    const witness = ctx.witnesses.read(id);
    const vm = vms.get(id);
    if (witness) {
      const info = vm ? adopted(witness, vm) : settled(witness);
      const runs = vm ? `, and its VM runs (pid ${vm.pid})` : '';
      note({
        kind: 'dir-without-record',
        id,
        path,
        message: `sandbox ${id} has no record; its witness says ${witness.status}${runs}: ${todo(`recorded again as ${info.status}`, 'records it again')}`,
      });
      if (repair) write(info, 'witness');
    } else if (vm) {
      const message = `VM process ${vm.pid} runs in ${path}, which has neither record nor witness: ${todo('re-adopted as a detached sandbox (its image, env, labels and network are not known)', 're-adopts it as a detached sandbox')}`;
      note({ kind: 'vm-without-record', id, path, message });
      if (repair) write(fromProcess(id, vm), 'process');
    } else {
      const to = lostAndFound(layout, 'sandboxes', id);
      const what = `sandbox directory ${path} has neither record nor witness, and no VM runs in it`;
      if (ctx.owned && !quiet(path)) {
        note(
          {
            kind: 'dir-without-record',
            id,
            path,
            message: `${what}, but it changed in the last minute (a create or remove in progress?): run doctor again later`,
          },
          false,
        );
      } else {
        note({ kind: 'dir-without-record', id, path, message: `${what}: ${todo(`moved to ${to}`, `moves it to ${to}`)}` });
        if (repair) moveTo(path, to);
      }
    }
  }

  // VMs that records disagree with.
  for (const [id, vm] of vms) {
    const rec = records.get(id);
    if (!rec) continue; // above
    if (!dirs.has(id)) {
      const message = `VM process ${vm.pid} of sandbox ${id} runs, but its directory is gone (its disk and sockets were deleted): it cannot be managed; end it with \`kill ${vm.pid}\``;
      note({ kind: 'status-mismatch', id, message }, false);
      continue;
    }
    if (!isLive(rec.status)) {
      note({
        kind: 'status-mismatch',
        id,
        message: `sandbox ${id} is recorded ${rec.status}, but its VM runs (pid ${vm.pid}): ${todo('re-adopted as running and detached', 're-adopts it')}`,
      });
      if (repair) write(adopted(rec, vm), 'process');
    } else if (rec.pid !== vm.pid && !owned(id)) {
      note({ kind: 'status-mismatch', id, message: `sandbox ${id} records pid ${rec.pid}, but its VM is pid ${vm.pid}: ${todo('recorded', 'records it')}` });
      if (repair) write(adopted(rec, vm), 'process');
    }
  }

  // Records of live sandboxes whose VM is gone (a runtime that is open watches its own).
  if (found !== null) {
    for (const rec of records.values()) {
      if (!isLive(rec.status) || vms.has(rec.id) || owned(rec.id)) continue;
      const info = settled(rec);
      note({
        kind: 'status-mismatch',
        id: rec.id,
        message: `sandbox ${rec.id} is recorded ${rec.status}, but no VM of it runs: ${todo(`recorded ${info.status}`, `records it ${info.status}`)}`,
      });
      if (repair) write(info, 'doctor');
    }
  }

  // Records whose directory is gone.
  for (const rec of records.values()) {
    if (dirs.has(rec.id) || vms.has(rec.id)) continue;
    const message = `the directory of sandbox ${rec.id} (${layout.sandbox(rec.id)}) is gone, with its disk and logs: remove the record with \`roost rm -f ${rec.id}\``;
    note({ kind: 'record-without-dir', id: rec.id, path: layout.sandbox(rec.id), message }, false);
  }

  findings.push(...examineSnapshots(ctx, repair), ...examineVolumes(ctx, repair), ...examineImages(ctx));
  findings.push(...(await sweepFindings(layout.root, repair)));
  return { findings, vms: vms.size, rewritten };
}

/**
 * Temporary files left by killed processes (blob downloads, root
 * filesystem builds, snapshots being written, disks being made) and files
 * of the home with loose permissions: removed and tightened with `repair`,
 * as every runtime does when it opens a home (`sweepTempFiles`, `secureHome`).
 */
export async function sweepFindings(home: string, repair: boolean): Promise<DoctorFinding[]> {
  const { removed } = await sweepTempFiles(home, { dryRun: !repair });
  const loose = secureHome(home, { dryRun: !repair });
  return [
    ...removed.map((path) => ({
      kind: 'temp-files' as const,
      path,
      message: repair ? 'a temporary file of a process that died: removed' : 'a temporary file of a process that died (--repair removes it)',
      repaired: repair,
    })),
    ...loose.map((path) => ({
      kind: 'permissions' as const,
      path,
      message: repair ? 'readable by other users: made private (0700/0600)' : 'readable by other users (--repair makes it 0700/0600)',
      repaired: repair,
    })),
  ];
}

/** Options of the offline doctor (`Runtime.doctor`, `roost doctor` without a daemon). */
export interface HomeDoctorOptions {
  /** Roost home (default $ROOST_HOME or ~/.roost). */
  home?: string;
  /** Repair what can be repaired (default: only check). */
  repair?: boolean;
  /** The VMM backend (default `qemu`). */
  vmm?: string | Vmm;
}

/**
 * The doctor of a home no runtime has open, which works when its database
 * is refused: it takes the home's lock (UNAVAILABLE while a runtime owns
 * the home: ask that one), checks the database and, with `repair`, moves a
 * refused one aside (`roost.db.broken-<time>`, never deleted), makes a new
 * one and rebuilds the records (see `examineHome`). A database from a newer
 * Roost is never touched.
 */
export async function doctorHome(options: HomeDoctorOptions = {}): Promise<DoctorReport> {
  const home = roostHome(options.home);
  const repair = options.repair ?? false;
  const vmm = resolveVmm(options.vmm);
  const lock = HomeLock.acquire(home, 'roost doctor');
  let scratch: Database.Database | null = null;
  try {
    const refused = databaseRefusal(home);
    const findings: DoctorFinding[] = [];
    let condition: DatabaseCondition = 'ok';
    let movedTo: string | undefined;
    let db: Database.Database;
    if (refused) {
      condition = refused.condition;
      const fixable = repair && refused.condition !== 'newer';
      if (fixable) {
        movedTo = moveDatabaseAside(home);
        db = stateDb(home, { fresh: true });
      } else {
        // Compared with an empty database: what a repair would record again.
        db = scratch = memoryStateDb();
      }
      const done = fixable
        ? `moved to ${movedTo} (kept) and a new database made`
        : refused.condition === 'newer'
          ? 'upgrade Roost'
          : 'the checks below compare the home with an empty database';
      findings.push({
        kind: 'database',
        path: join(home, 'roost.db'),
        message: `${refused.error.message.split(': run `roost doctor`')[0]}: ${done}`,
        repaired: fixable,
      });
    } else {
      db = stateDb(home);
    }
    const layout = new HomeLayout(home);
    const records = new SandboxRecords(db);
    const ctx: DoctorContext = {
      layout,
      db,
      records,
      events: new EventLog(db),
      snapshots: new SnapshotStore(db, layout, () => vmm.version()),
      witnesses: new SandboxWitnesses(layout),
      vmm,
    };
    const result = await examineHome(ctx, repair && scratch === null);
    if (scratch) for (const f of result.findings) f.repaired = false;
    findings.push(...result.findings);
    return report(home, repair, condition, movedTo, result.vms, findings);
  } finally {
    scratch?.close();
    lock.release();
  }
}

/** A report from its parts: `ok` when nothing is left unrepaired. */
export function report(
  home: string,
  repair: boolean,
  condition: DatabaseCondition,
  movedTo: string | undefined,
  vms: number,
  findings: DoctorFinding[],
): DoctorReport {
  return {
    home,
    repair,
    database: { condition, ...(movedTo ? { movedTo } : {}) },
    vms,
    findings,
    ok: findings.every((f) => f.repaired),
  };
}

/** Renames a refused database (with its WAL and shared memory) to `roost.db.broken-<time>`; returns the new name. */
function moveDatabaseAside(home: string): string {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const to = join(home, `roost.db.broken-${stamp}`);
  for (const suffix of ['', '-wal', '-shm', '-journal']) {
    const from = join(home, `roost.db${suffix}`);
    if (existsSync(from)) renameSync(from, `${to}${suffix}`);
  }
  return to;
}

/** A record rebuilt for a VM that runs: running (or paused), with its pid, detached so the next runtime attaches to it. */
function adopted(info: SandboxInfo, vm: FoundVm): SandboxInfo {
  const next: SandboxInfo = { ...info, status: info.status === 'paused' ? 'paused' : 'running', pid: vm.pid, detached: true, stoppedAt: null };
  delete next.reason;
  return next;
}

/** A record of a live status whose VM is gone, as recovery would record it. */
function settled(info: SandboxInfo): SandboxInfo {
  const d = recoveryDecision(info, false);
  if (d.action !== 'record') return info;
  return { ...info, status: d.status, pid: null, reason: d.reason, stoppedAt: new Date().toISOString() };
}

/** A record made from a VM process alone: what its command line says; the rest is unknown. */
function fromProcess(id: string, vm: FoundVm): SandboxInfo {
  const started = vm.startedAt ?? new Date().toISOString();
  return {
    id,
    status: 'running',
    createdAt: started,
    startedAt: started,
    stoppedAt: null,
    cpus: vm.cpus ?? 1,
    memoryMiB: vm.memoryMiB ?? 0,
    diskSizeMiB: vm.diskSizeMiB ?? DEFAULT_DISK_MIB,
    detached: true,
    accel: vm.accel ?? 'tcg',
    pid: vm.pid,
    env: {},
    labels: {},
    execs: 0,
  };
}

function examineSnapshots(ctx: DoctorContext, repair: boolean): DoctorFinding[] {
  const findings: DoctorFinding[] = [];
  const dirs = list(ctx.layout.snapshots).filter((d) => ID_PATTERN.test(d));
  const recorded = new Set(ctx.snapshots.all().map((r) => r.id));
  for (const id of dirs) {
    if (recorded.has(id)) continue;
    const path = ctx.layout.snapshot(id);
    const witness = readSnapshotWitness(path, id);
    if (witness) {
      const message = `snapshot ${witness.name} (${id}) has no record: ${repair ? 'recorded again from its witness' : '`roost doctor --repair` records it again'}`;
      if (repair) ctx.snapshots.restoreFromWitness(id);
      findings.push({ kind: 'snapshot-without-record', id, path, message, repaired: repair });
    } else if (ctx.owned && !quiet(path)) {
      const message = `snapshot directory ${path} has neither record nor witness, but it changed in the last minute: run doctor again later`;
      findings.push({ kind: 'snapshot-without-record', id, path, message, repaired: false });
    } else {
      const to = lostAndFound(ctx.layout, 'snapshots', id);
      const message = `snapshot directory ${path} has neither record nor witness: ${repair ? `moved to ${to}` : `\`roost doctor --repair\` moves it to ${to}`}`;
      if (repair) moveTo(path, to);
      findings.push({ kind: 'snapshot-without-record', id, path, message, repaired: repair });
    }
  }
  for (const id of recorded) {
    if (dirs.includes(id)) continue;
    const rec = ctx.snapshots.find(id);
    const message = `the files of snapshot ${rec?.name ?? id} are gone: remove it with \`roost snapshots rm ${rec?.name ?? id}\``;
    findings.push({ kind: 'snapshot-without-files', id, path: ctx.layout.snapshot(id), message, repaired: false });
  }
  return findings;
}

function examineVolumes(ctx: DoctorContext, repair: boolean): DoctorFinding[] {
  const findings: DoctorFinding[] = [];
  const root = join(ctx.layout.root, 'volumes');
  for (const name of list(root)) {
    if (!VolumeNameSchema.safeParse(name).success || !existsSync(join(root, name, 'data'))) continue;
    if (ctx.db.prepare('SELECT 1 FROM volumes WHERE name = ?').get(name)) continue;
    const path = join(root, name, 'data');
    if (repair) {
      ctx.db.prepare('INSERT INTO volumes (name, path, created_at, labels_json) VALUES (?, ?, ?, ?)').run(name, path, new Date().toISOString(), '{}');
    }
    const message = `volume ${name} has no record: ${repair ? 'recorded again (its labels are lost)' : '`roost doctor --repair` records it again'}`;
    findings.push({ kind: 'volume-without-record', id: name, path, message, repaired: repair });
  }
  return findings;
}

/** Image blobs the index does not name: reported (a pull or import of the image indexes them again without downloading them). */
function examineImages(ctx: DoctorContext): DoctorFinding[] {
  const root = join(ctx.layout.root, 'images', 'blobs');
  const known = new Set<string>();
  for (const r of ctx.db.prepare('SELECT id, config_digest FROM images').all() as { id: string; config_digest: string }[]) known.add(r.id).add(r.config_digest);
  for (const r of ctx.db.prepare('SELECT digest FROM layers').all() as { digest: string }[]) known.add(r.digest);
  let count = 0;
  for (const alg of list(root)) for (const hex of list(join(root, alg))) if (!hex.startsWith('.') && !known.has(`${alg}:${hex}`)) count++;
  if (count === 0) return [];
  const message = `${count} image blob${count > 1 ? 's are' : ' is'} in ${root} but in no image of the index: pull or import those images again (blobs already here are not downloaded again), or \`roost images prune\` to remove them`;
  return [{ kind: 'images-not-indexed', path: root, message, repaired: false }];
}

/** `<home>/lost+found/<what>/<id>`, with a suffix when that is taken. */
function lostAndFound(layout: HomeLayout, what: string, id: string): string {
  const base = join(layout.root, 'lost+found', what, id);
  let to = base;
  for (let n = 1; existsSync(to); n++) to = `${base}.${n}`;
  return to;
}

function moveTo(from: string, to: string): void {
  mkdirSync(join(to, '..'), { recursive: true, mode: 0o700 });
  renameSync(from, to);
}

/** True when a directory has not changed for QUIET_MS. */
function quiet(path: string): boolean {
  try {
    return Date.now() - statSync(path).mtimeMs >= QUIET_MS;
  } catch {
    return false;
  }
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
