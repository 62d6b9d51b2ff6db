import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync, type Dirent } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';

/*
 * An independent check of a Roost home against the invariants of issue 16
 * ("nothing lost, nothing leaked"). It reads what is there (/proc, the
 * home's files, roost.db opened read-only) and shares no code with core's
 * recovery: it is the oracle the fault-injection harness holds core to,
 * and any test may call it on a home no runtime is changing at the moment.
 */

/** One broken invariant: which (a stable name) and what was found. */
export interface Violation {
  invariant: string;
  detail: string;
}

/** Options of `checkHome`. */
export interface CheckOptions {
  /**
   * Every process that made a non-detached sandbox in this home has ended
   * (a daemon may run, but no client of it does): such a sandbox must have
   * ended with its owner, so any record of one left is a leak.
   */
  ownersGone?: boolean;
}

/** The sandbox statuses in which a record claims a VM. */
const LIVE = new Set(['creating', 'running', 'paused', 'stopping']);
/** Names Roost gives files while they are being written (see blobs.ts, rootfs.ts, disk.ts, snapshot.ts, serve.ts). */
const TEMP = /(^|[.-])tmp([.-]|$)|partial|\.part$|\.roost-\d+$|^roost\.sock\.\d+$|^tree-\d+-/i;
/** The pid a temp name carries (`.tmp-<pid>-…`, `tree-<pid>-…`, `roost.sock.<pid>`), if any. */
const TEMP_PID = /(?:(?:^|[.-])tmp-|^tree-|^roost\.sock\.|\.roost-)(\d+)(?:-|$)/;

export interface SandboxRow {
  id: string;
  status: string;
  pid: number | null;
  info: { detached?: boolean; autoRemove?: boolean; snapshot?: string; startedAt?: string | null };
}
export interface SnapshotRow {
  id: string;
  name: string;
  kind: string;
  parent: string | null;
  manifest?: { files?: Record<string, { size: number }> };
}
export interface EventRow {
  id: number;
  time: string;
  type: string;
  sandboxId: string | null;
}

/** A QEMU process whose command line names `home`. */
export interface QemuProcess {
  pid: number;
  cmdline: string;
}

/**
 * QEMU processes of a home: comm or exe is qemu-system-*, the command line
 * names a path under `home`, and the process is not a zombie.
 */
export function qemuProcesses(home: string): QemuProcess[] {
  const out: QemuProcess[] = [];
  for (const p of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmdline = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ');
      if (!cmdline.includes(`${home}/`)) continue;
      const comm = readFileSync(`/proc/${p}/comm`, 'utf8').trim();
      let exe = '';
      try {
        exe = readlinkSync(`/proc/${p}/exe`);
      } catch {
        // not ours to read
      }
      if (!comm.startsWith('qemu-system') && !/\/qemu-system-[^/]*$/.test(exe)) continue;
      if (/\) Z /.test(readFileSync(`/proc/${p}/stat`, 'utf8'))) continue;
      out.push({ pid: Number(p), cmdline });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** What roost.db holds, as the checker reads it. */
export interface HomeState {
  sandboxes: SandboxRow[];
  snapshots: SnapshotRow[];
  events: EventRow[];
  leases: string[];
}

/** Reads the home's database read-only (nothing is created or migrated); null if there is none. */
export function readState(home: string): HomeState | null {
  const path = join(home, 'roost.db');
  if (!existsSync(path)) return null;
  const db = new Database(path, { readonly: true, fileMustExist: true, timeout: 10_000 });
  try {
    const tables = new Set((db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((r) => r.name));
    const sandboxes = tables.has('sandboxes')
      ? (db.prepare('SELECT id, status, pid, info_json FROM sandboxes').all() as { id: string; status: string; pid: number | null; info_json: string }[]).map(
          (r) => ({ id: r.id, status: r.status, pid: r.pid, info: JSON.parse(r.info_json) as SandboxRow['info'] }),
        )
      : [];
    const snapshots = tables.has('snapshots')
      ? (db.prepare('SELECT info_json FROM snapshots').all() as { info_json: string }[]).map((r) => JSON.parse(r.info_json) as SnapshotRow)
      : [];
    const events = tables.has('events') ? (db.prepare('SELECT id, time, type, sandbox_id AS sandboxId FROM events ORDER BY rowid').all() as EventRow[]) : [];
    const leases = tables.has('leases') ? (db.prepare('SELECT sandbox_id FROM leases').all() as { sandbox_id: string }[]).map((r) => r.sandbox_id) : [];
    return { sandboxes, snapshots, events, leases };
  } finally {
    db.close();
  }
}

/**
 * Checks a home no runtime is changing right now (after a runtime reopened
 * it: a daemon started, or an embedded command ran) and returns every
 * broken invariant:
 * - every QEMU of the home has a live record with its pid, and every
 *   running or paused record has its QEMU (the recorded pid, naming the
 *   sandbox's directory); no record is left in a transient status;
 * - every directory under sandboxes/ and snapshots/ has a record, every
 *   record its files; no temp file of a dead writer is left;
 * - fork snapshots nothing uses any more are gone, leases belong to records;
 * - events are in order, and each sandbox's events tell its story: created
 *   first and once, nothing after its deletion, a record gone only with a
 *   `sandbox.deleted`, and the last lifecycle event agreeing with the status.
 */
export async function checkHome(home: string, options: CheckOptions = {}): Promise<Violation[]> {
  const v: Violation[] = [];
  const add = (invariant: string, detail: string) => v.push({ invariant, detail });
  let state: HomeState | null;
  try {
    state = readState(home);
  } catch (e) {
    add('database-readable', `roost.db cannot be read: ${(e as Error).message}`);
    return v;
  }
  const sandboxes = state?.sandboxes ?? [];
  const snapshots = state?.snapshots ?? [];
  const byId = new Map(sandboxes.map((s) => [s.id, s]));

  // Processes against records.
  const qemus = qemuProcesses(home);
  for (const q of qemus) {
    const rec = sandboxes.find((s) => s.pid === q.pid);
    if (!rec) {
      const named = sandboxes.find((s) => q.cmdline.includes(`${home}/sandboxes/${s.id}/`));
      add(
        'qemu-has-record',
        `QEMU pid ${q.pid} has no record with its pid${named ? ` (its command line names sandbox ${named.id}, recorded ${named.status} pid ${named.pid})` : ''}`,
      );
    } else if (!LIVE.has(rec.status)) {
      add('qemu-has-record', `QEMU pid ${q.pid} runs, but its sandbox ${rec.id} is recorded ${rec.status}`);
    }
  }
  for (const s of sandboxes) {
    if (s.status === 'running' || s.status === 'paused') {
      const q = qemus.find((p) => p.pid === s.pid);
      if (s.pid === null || !q) add('record-has-qemu', `sandbox ${s.id} is recorded ${s.status} with pid ${s.pid}, which is not a live QEMU of the home`);
      else if (!q.cmdline.includes(`${home}/sandboxes/${s.id}/`)) add('record-has-qemu', `sandbox ${s.id}'s pid ${s.pid} is a QEMU of another sandbox`);
    } else if (s.status === 'creating' || s.status === 'stopping') {
      add('no-transient-status', `sandbox ${s.id} is still recorded ${s.status} after the home was reopened`);
    } else if (s.pid !== null && alive(s.pid) && qemus.some((q) => q.pid === s.pid)) {
      add('record-has-qemu', `sandbox ${s.id} is recorded ${s.status}, yet its pid ${s.pid} is a live QEMU`);
    }
    if (options.ownersGone && s.info.detached === false) {
      // Not detached: it ends with its owner. Made with autoRemove (`roost run`), it is removed too; without, its record stays, stopped.
      if (s.info.autoRemove === true)
        add('ends-with-owner', `sandbox ${s.id} was made with autoRemove and its owner is gone, yet it is still recorded (${s.status})`);
      else if (s.status === 'running' || s.status === 'paused')
        add('ends-with-owner', `sandbox ${s.id} is not detached and its owner is gone, yet it is ${s.status}`);
    }
  }

  // Directories against records.
  const sbDir = join(home, 'sandboxes');
  for (const d of existsSync(sbDir) ? readdirSync(sbDir) : []) {
    if (!byId.has(d)) add('dir-has-record', `sandboxes/${d} has no record`);
  }
  for (const s of sandboxes) {
    const dir = join(sbDir, s.id);
    if (!existsSync(dir)) {
      add('record-has-files', `sandbox ${s.id} (${s.status}) has no directory`);
      continue;
    }
    if (s.info.startedAt && !existsSync(join(dir, 'disk.qcow2'))) add('record-has-files', `sandbox ${s.id} has no disk.qcow2`);
    if (!LIVE.has(s.status)) {
      const socks = readdirSync(dir).filter((f) => f.endsWith('.sock'));
      if (socks.length) add('no-stale-socket', `sandbox ${s.id} is ${s.status} but keeps ${socks.join(', ')}`);
    }
  }
  const snapDir = join(home, 'snapshots');
  const snapIds = new Set(snapshots.map((s) => s.id));
  for (const d of existsSync(snapDir) ? readdirSync(snapDir) : []) {
    if (!snapIds.has(d) && !TEMP.test(d)) add('dir-has-record', `snapshots/${d} has no record`);
  }
  for (const s of snapshots) {
    const dir = join(snapDir, s.id);
    for (const [key, file] of [
      ['memory', 'memory'],
      ['state', 'state'],
      ['disk', 'disk.qcow2'],
      ['overlay', 'overlay.qcow2'],
      ['manifest', 'manifest.json'],
    ] as const) {
      const st = statOrNull(join(dir, file));
      if (!st) add('record-has-files', `snapshot ${s.name} (${s.id}) has no ${file}`);
      else {
        const want = s.manifest?.files?.[key]?.size;
        if (want !== undefined && st.size !== want) add('record-has-files', `snapshot ${s.name}'s ${file} has ${st.size} bytes, ${want} recorded`);
      }
    }
    if (s.kind === 'fork') {
      const users = sandboxes.filter((x) => x.info.snapshot === s.id).length + snapshots.filter((x) => x.parent === s.id).length;
      if (users === 0) add('no-unowned-snapshot', `fork snapshot ${s.name} (${s.id}) is used by no sandbox or snapshot`);
    }
  }
  for (const id of state?.leases ?? []) if (!byId.has(id)) add('lease-has-record', `an address is leased to ${id}, which has no record`);

  // Temp files of dead writers, anywhere in the home but the shared cache and volume contents.
  for (const f of walk(home)) {
    const name = f.slice(f.lastIndexOf('/') + 1);
    if (!TEMP.test(name) || f === join(home, 'tmp')) continue; // <home>/tmp is the scratch directory itself
    const pid = Number(TEMP_PID.exec(name)?.[1] ?? NaN);
    if (Number.isInteger(pid) && alive(pid)) continue;
    add('no-temp-files', `${f.slice(home.length + 1)} was left by a writer that is gone`);
  }

  // Events.
  const events = state?.events ?? [];
  let last = 0;
  let lastTime = '';
  for (const e of events) {
    if (e.id <= last) add('events-in-order', `event ${e.id} (${e.type}) follows event ${last}`);
    if (lastTime && Date.parse(e.time) < Date.parse(lastTime) - 1_000)
      add('events-in-order', `event ${e.id} (${e.type}) at ${e.time} is older than its predecessor (${lastTime})`);
    last = e.id;
    lastTime = e.time;
  }
  const minId = events[0]?.id ?? 0;
  const bySandbox = new Map<string, EventRow[]>();
  for (const e of events) if (e.sandboxId) bySandbox.set(e.sandboxId, [...(bySandbox.get(e.sandboxId) ?? []), e]);
  for (const [id, evs] of bySandbox) {
    const types = evs.map((e) => e.type);
    const story = `${id}: ${types.join(' ')}`;
    // Only while no event was pruned (the log keeps the newest 100,000): a story's beginning may be gone after.
    if (minId === 1 && types[0] !== 'sandbox.created') add('events-tell-story', `sandbox ${story} (does not start with sandbox.created)`);
    if (types.filter((t) => t === 'sandbox.created').length > 1) add('events-tell-story', `sandbox ${story} (created twice)`);
    const del = types.indexOf('sandbox.deleted');
    if (del >= 0 && del < types.length - 1) add('events-tell-story', `sandbox ${story} (events after sandbox.deleted)`);
    const started = types.indexOf('sandbox.started');
    const created = types.indexOf('sandbox.created');
    if (started >= 0 && created > started) add('events-tell-story', `sandbox ${story} (started before created)`);
    const rec = byId.get(id);
    if (rec && del >= 0) add('events-tell-story', `sandbox ${id} is recorded ${rec.status} after its sandbox.deleted event`);
    if (!rec && del < 0) add('no-lost-record', `sandbox ${story}: its record is gone without a sandbox.deleted event`);
    if (rec) {
      const life = types.filter((t) => ['sandbox.started', 'sandbox.exited', 'sandbox.failed', 'sandbox.paused', 'sandbox.resumed'].includes(t)).pop();
      const expected: Record<string, string[]> = {
        running: ['sandbox.started', 'sandbox.resumed'],
        paused: ['sandbox.paused'],
        stopped: ['sandbox.exited'],
        failed: ['sandbox.failed'],
      };
      const want = expected[rec.status];
      if (want && life !== undefined && !want.includes(life))
        add('events-tell-story', `sandbox ${id} is recorded ${rec.status}, its last lifecycle event is ${life}`);
      if (want && life === undefined && rec.status !== 'failed')
        add('events-tell-story', `sandbox ${id} is recorded ${rec.status} with no lifecycle event (${types.join(' ')})`);
    }
  }
  for (const s of sandboxes) {
    if (!bySandbox.has(s.id) && minId === 1) add('events-tell-story', `sandbox ${s.id} (${s.status}) has no events at all`);
  }
  return v;
}

function statOrNull(path: string): ReturnType<typeof statSync> | null {
  try {
    return statSync(path);
  } catch {
    return null;
  }
}

/** Every path under `home`, not following symlinks, skipping the shared cache and the contents of volumes. */
function* walk(home: string, dir = home): Generator<string> {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (dir === home && e.name === 'cache') continue;
    if (dir === join(home, 'volumes')) {
      yield p;
      continue; // a volume's data is the user's
    }
    yield p;
    if (e.isDirectory() && !lstatSync(p).isSymbolicLink()) yield* walk(home, p);
  }
}
