import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { RoostError } from '../errors.js';
import { chmodIfThere, PRIVATE_DIR, PRIVATE_FILE } from '../state/private.js';

/**
 * A range of uids for sandboxes' QEMUs. Each sandbox gets one number and
 * uses it as both its uid and its gid.
 */
export interface JailIdRange {
  /** The first uid. */
  start: number;
  /** How many uids, from `start` on. */
  count: number;
}

/**
 * The default range: 65536 ids from 2,000,000,000, below 2^31 (tools that
 * read ids as signed 32-bit numbers still work) and far above normal users
 * and the subordinate ranges `useradd` hands out (100000 and up).
 */
export const DEFAULT_JAIL_IDS: Readonly<JailIdRange> = Object.freeze({ start: 2_000_000_000, count: 65536 });

/** Where the host-wide claims live by default: on a tmpfs, so they vanish at reboot (when no QEMU runs). */
export const DEFAULT_JAIL_CLAIMS_DIR = '/run/roost/jail-ids';

/** The lowest uid a range may start at: below it are system and normal users. */
const MIN_START = 1000;
/** The highest uid a range may end at: 2^31 - 2 (2^31 - 1 and up are read as negative or as "no id" by some tools). */
const MAX_END = 2 ** 31 - 2;

/** The setting's name, in errors and warnings. */
const SETTING = 'ROOST_JAIL_IDS';

/** A sandbox id as it may appear in a claim (and as a directory name under `<home>/sandboxes`). */
const SANDBOX_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** How long a process waits for the claims lock before giving up (it is held for microseconds at a time). */
const CLAIMS_LOCK_TIMEOUT_MS = 10_000;

function formatRange(range: JailIdRange): string {
  return `${range.start}-${range.start + range.count - 1}`;
}

/** Throws INVALID_ARGUMENT naming ROOST_JAIL_IDS unless the range is usable. */
function checkRangeBounds(range: JailIdRange, text: string): void {
  const { start, count } = range;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count)) {
    throw new RoostError('INVALID_ARGUMENT', `${SETTING}=${text} is not a range of uids: write START-END or START+COUNT (like 2000000000+65536)`);
  }
  if (count < 1) throw new RoostError('INVALID_ARGUMENT', `${SETTING}=${text} is empty: it must hold at least one uid (like 2000000000+65536)`);
  if (start < MIN_START) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `${SETTING}=${text} starts at ${start}, among system and normal users: start at ${MIN_START} or above (default ${formatRange(DEFAULT_JAIL_IDS)})`,
    );
  }
  const end = start + count - 1;
  if (end > MAX_END) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `${SETTING}=${text} ends at ${end}: uids must stay below 2^31 - 1 (${MAX_END} at most; default ${formatRange(DEFAULT_JAIL_IDS)})`,
    );
  }
}

/**
 * Parses a jail id range as ROOST_JAIL_IDS writes it: `START-END` (both
 * included) or `START+COUNT`. The range must start at 1000 or above and
 * end below 2^31 - 1. INVALID_ARGUMENT, naming ROOST_JAIL_IDS, otherwise.
 */
export function parseJailIds(text: string): JailIdRange {
  const m = /^\s*(\d+)\s*([-+])\s*(\d+)\s*$/.exec(text);
  if (!m) throw new RoostError('INVALID_ARGUMENT', `${SETTING}="${text}" is not a range of uids: write START-END or START+COUNT (like 2000000000+65536)`);
  const start = Number(m[1]);
  const second = Number(m[3]);
  if (m[2] === '-' && second < start) {
    throw new RoostError('INVALID_ARGUMENT', `${SETTING}=${text} ends before it starts: write START-END with END >= START (like 2000000000-2000065535)`);
  }
  const range = { start, count: m[2] === '-' ? second - start + 1 : second };
  checkRangeBounds(range, text.trim());
  return range;
}

/** The files `checkJailIdRange` reads (each optional: defaults are the host's). */
export interface IdDatabaseFiles {
  passwd?: string;
  group?: string;
  subuid?: string;
  subgid?: string;
}

/**
 * What the host already uses inside a jail id range: one warning per file
 * naming the users, groups or subordinate ranges (/etc/subuid, /etc/subgid)
 * whose ids fall in it (a jailed QEMU with such an id could touch their
 * files or processes). Empty when nothing overlaps. A file that cannot be
 * read is skipped. Never throws.
 */
export function checkJailIdRange(range: JailIdRange, files: IdDatabaseFiles = {}): string[] {
  const first = range.start;
  const last = range.start + range.count - 1;
  const inRange = (n: number) => n >= first && n <= last;
  const where = `${SETTING} ${formatRange(range)}`;
  const warnings: string[] = [];
  const read = (path: string): string[] | null => {
    try {
      return readFileSync(path, 'utf8').split('\n');
    } catch {
      return null;
    }
  };
  const report = (path: string, hits: string[], what: string) => {
    if (hits.length === 0) return;
    const shown = hits.slice(0, 5).join(', ') + (hits.length > 5 ? ` and ${hits.length - 5} more` : '');
    warnings.push(`${where} overlaps ${what} in ${path}: ${shown}; choose a range no user, group or subordinate range uses`);
  };
  const num = (s: string | undefined) => (s !== undefined && /^\d+$/.test(s) ? Number(s) : NaN);

  const passwd = files.passwd ?? '/etc/passwd';
  const hitsP: string[] = [];
  for (const line of read(passwd) ?? []) {
    const [name, , uid, gid] = line.split(':');
    if (!name || name.startsWith('#')) continue;
    const u = num(uid);
    const g = num(gid);
    if (inRange(u)) hitsP.push(`user ${name} (uid ${u})`);
    else if (inRange(g)) hitsP.push(`user ${name} (gid ${g})`);
  }
  report(passwd, hitsP, 'users');

  const group = files.group ?? '/etc/group';
  const hitsG: string[] = [];
  for (const line of read(group) ?? []) {
    const [name, , gid] = line.split(':');
    if (!name || name.startsWith('#')) continue;
    const g = num(gid);
    if (inRange(g)) hitsG.push(`group ${name} (gid ${g})`);
  }
  report(group, hitsG, 'groups');

  for (const [path, kind] of [
    [files.subuid ?? '/etc/subuid', 'subordinate uids'],
    [files.subgid ?? '/etc/subgid', 'subordinate gids'],
  ] as const) {
    const hits: string[] = [];
    for (const line of read(path) ?? []) {
      const [name, start, count] = line.split(':');
      if (!name || name.startsWith('#')) continue;
      const s = num(start);
      const c = num(count);
      if (!(c > 0)) continue;
      if (s <= last && s + c - 1 >= first) hits.push(`${name} (${s}-${s + c - 1})`);
    }
    report(path, hits, kind);
  }
  return warnings;
}

/** A claim file's content: which home's sandbox holds the uid. */
interface Claim {
  home: string;
  sandbox: string;
}

/** What a claim file says about a uid, from the point of view of one home and sandbox. */
type ClaimState =
  /** No claim: the uid is free on the host. */
  | { kind: 'free' }
  /** This home's claim for the sandbox the table gives the uid to. */
  | { kind: 'ours' }
  /** Left behind: the sandbox it names is gone. It may be taken over. */
  | { kind: 'stale'; claim: Claim }
  /** Held by a live sandbox of another home, or unreadable (then `claim` is null). */
  | { kind: 'held'; claim: Claim | null };

interface Row {
  uid: number;
  sandbox_id: string;
}

/** Options of `JailIds`. */
export interface JailIdsOptions {
  /** The directory of host-wide claims (default `/run/roost/jail-ids`); every Roost home on the host must use the same one. */
  claimsDir?: string;
}

/**
 * The jail's uid allocator: gives each sandbox its own uid (its QEMU's uid
 * and gid, the same number) from a range, recorded in the home's database
 * (table `jail_ids`) and claimed host-wide, so that neither two sandboxes
 * of this home nor sandboxes of two homes on one host ever hold the same uid
 * at once. A removed sandbox's uid is reused (lowest free first).
 *
 * The claims: one file per uid in the claims directory, named by the
 * number, holding `{"home": "<home>", "sandbox": "<id>"}`, made complete
 * (written to a temporary file, then `link`ed to its name, which fails if
 * the uid is taken). A claim is stale, and is taken over, when its home's
 * `sandboxes/<id>` directory is gone, or when it names this home and this
 * home's table does not give that uid to that sandbox. A claim that cannot
 * be read or parsed (not one Roost wrote: Roost never leaves a partial one)
 * is taken as held by someone unknown: its uid is skipped, never shared,
 * until the file is removed or the host reboots. The directory is a tmpfs
 * by default: claims vanish at reboot and `acquire` makes them again.
 *
 * Concurrency: safe across threads, processes and homes of one host; every
 * change to the claims happens under one host-wide lock (an fcntl lock on
 * `<claimsDir>/.lock`, dropped by the kernel if its holder dies), inside an
 * IMMEDIATE transaction of the home's database for the table.
 */
export class JailIds {
  /** The range uids are allocated from. */
  readonly range: Readonly<JailIdRange>;
  /** The claims directory. */
  readonly claimsDir: string;
  /** The home, as claims name it (absolute, symlinks resolved). */
  readonly home: string;

  readonly #db: Database.Database;
  readonly #select: Database.Statement;
  readonly #selectAll: Database.Statement;
  readonly #used: Database.Statement;
  readonly #holds: Database.Statement;
  readonly #insert: Database.Statement;
  readonly #move: Database.Statement;
  readonly #delete: Database.Statement;

  /** Checks the range (INVALID_ARGUMENT naming ROOST_JAIL_IDS); touches no file. */
  constructor(db: Database.Database, home: string, range: JailIdRange = DEFAULT_JAIL_IDS, options: JailIdsOptions = {}) {
    checkRangeBounds(range, formatRange(range));
    this.range = Object.freeze({ start: range.start, count: range.count });
    this.claimsDir = resolve(options.claimsDir ?? DEFAULT_JAIL_CLAIMS_DIR);
    this.home = canonical(home);
    this.#db = db;
    this.#select = db.prepare('SELECT uid, sandbox_id FROM jail_ids WHERE sandbox_id = ?');
    this.#selectAll = db.prepare('SELECT uid, sandbox_id FROM jail_ids ORDER BY uid');
    this.#used = db.prepare('SELECT uid FROM jail_ids WHERE uid BETWEEN ? AND ?').pluck();
    this.#holds = db.prepare('SELECT 1 FROM jail_ids WHERE uid = ? AND sandbox_id = ?').pluck();
    this.#insert = db.prepare('INSERT INTO jail_ids (uid, sandbox_id, created_at) VALUES (?, ?, ?)');
    this.#move = db.prepare('UPDATE jail_ids SET uid = ?, created_at = ? WHERE sandbox_id = ?');
    this.#delete = db.prepare('DELETE FROM jail_ids WHERE sandbox_id = ?');
  }

  /**
   * The sandbox's uid, claimed on the host: its recorded one when that is
   * still in the range and its claim is this sandbox's, or free, or stale;
   * otherwise (another home's live sandbox holds it now, or the range
   * changed) the lowest uid of the range that neither this home's table nor
   * a live claim holds, recorded in place of the old one. Call it once the
   * sandbox's directory exists (other homes take a claim whose directory is
   * missing for stale), and before each start of its QEMU (claims do not
   * survive a reboot). RESOURCE_EXHAUSTED when the range is full.
   */
  acquire(sandboxId: string): number {
    if (!SANDBOX_ID_RE.test(sandboxId)) {
      throw new RoostError('INVALID_ARGUMENT', `"${sandboxId}" is not a sandbox id a jail uid can be claimed for`);
    }
    return this.#db.transaction((): number => this.#withClaims((claims) => this.#acquire(sandboxId, claims))).immediate();
  }

  /** Gives the sandbox's uid back: deletes its row, and its claim when the claim is this sandbox's. Nothing if it has none. */
  release(sandboxId: string): void {
    this.#db
      .transaction(() => {
        const row = this.#select.get(sandboxId) as Row | undefined;
        if (!row) return;
        if (existsSync(this.claimsDir)) {
          this.#withClaims((claims) => {
            if (this.#state(row.uid, row.sandbox_id).kind === 'ours') claims.remove(row.uid);
          });
        }
        this.#delete.run(sandboxId);
      })
      .immediate();
  }

  /** The sandbox's recorded uid, or null. Reads only this home's table. */
  get(sandboxId: string): number | null {
    const row = this.#select.get(sandboxId) as Row | undefined;
    return row ? row.uid : null;
  }

  /** Every recorded uid of this home, by uid. */
  list(): Array<{ uid: number; sandboxId: string }> {
    return (this.#selectAll.all() as Row[]).map((r) => ({ uid: r.uid, sandboxId: r.sandbox_id }));
  }

  #acquire(sandboxId: string, claims: Claims): number {
    const { start, count } = this.range;
    const end = start + count - 1;
    const row = this.#select.get(sandboxId) as Row | undefined;
    if (row) {
      if (row.uid >= start && row.uid <= end) {
        const state = this.#state(row.uid, sandboxId);
        if (state.kind === 'ours') return row.uid;
        if (state.kind === 'stale') claims.remove(row.uid);
        if (state.kind !== 'held' && claims.make(row.uid, sandboxId)) return row.uid;
        // Held by another home's live sandbox now (its claim was made while ours was gone, after a reboot): move.
      } else if (this.#state(row.uid, sandboxId).kind === 'ours') {
        // Recorded under an older range: give that uid back to the host.
        claims.remove(row.uid);
      }
    }
    const ours = new Set(this.#used.all(start, end) as number[]);
    const claimed = claims.list();
    let held = 0;
    for (let uid = start; uid <= end; uid++) {
      if (ours.has(uid)) continue;
      if (claimed.has(uid)) {
        const state = this.#state(uid, sandboxId);
        if (state.kind === 'held') {
          held++;
          continue;
        }
        if (state.kind === 'stale') claims.remove(uid);
      }
      if (!claims.make(uid, sandboxId)) {
        held++;
        continue;
      }
      try {
        const now = new Date().toISOString();
        if (row) this.#move.run(uid, now, sandboxId);
        else this.#insert.run(uid, sandboxId, now);
      } catch (e) {
        claims.remove(uid);
        throw e;
      }
      return uid;
    }
    const mine = ours.size - (row && ours.has(row.uid) ? 1 : 0);
    throw new RoostError(
      'RESOURCE_EXHAUSTED',
      `every uid of the jail range ${formatRange(this.range)} (${count}) is taken: ${mine} by this home's sandboxes, ${held} by other Roost homes on this host (claims in ${this.claimsDir}): remove sandboxes you no longer need (\`roost rm\`), or configure a larger range with ${SETTING}`,
      { details: { range: { ...this.range }, home: this.home, claimsDir: this.claimsDir } },
    );
  }

  /** What the claim of `uid` is to `sandboxId` of this home. */
  #state(uid: number, sandboxId: string): ClaimState {
    let text: string;
    try {
      text = readFileSync(join(this.claimsDir, String(uid)), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'free' };
      return { kind: 'held', claim: null };
    }
    const claim = parseClaim(text);
    if (!claim) return { kind: 'held', claim: null };
    if (claim.home === this.home) {
      const recorded = this.#holds.get(uid, claim.sandbox) !== undefined;
      if (!recorded) return { kind: 'stale', claim };
      return claim.sandbox === sandboxId ? { kind: 'ours' } : { kind: 'held', claim };
    }
    return existsSync(join(claim.home, 'sandboxes', claim.sandbox)) ? { kind: 'held', claim } : { kind: 'stale', claim };
  }

  /** Runs `fn` holding the host-wide claims lock (made with the directory if need be). */
  #withClaims<T>(fn: (claims: Claims) => T): T {
    const dir = this.claimsDir;
    try {
      mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR });
    } catch (e) {
      throw new RoostError('INTERNAL', `cannot make the jail's uid claims directory ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const lockPath = join(dir, '.lock');
    let lock: Database.Database;
    try {
      lock = new Database(lockPath, { timeout: CLAIMS_LOCK_TIMEOUT_MS });
    } catch (e) {
      throw new RoostError('INTERNAL', `cannot open the jail's uid claims lock ${lockPath}: ${(e as Error).message}`, { cause: e });
    }
    try {
      chmodIfThere(lockPath, PRIVATE_FILE);
      lock.pragma('journal_mode = DELETE');
      // BEGIN EXCLUSIVE takes an fcntl write lock on the file until COMMIT (or this process's death).
      lock.exec('BEGIN EXCLUSIVE');
    } catch (e) {
      lock.close();
      const busy = (e as { code?: string }).code === 'SQLITE_BUSY';
      throw new RoostError(
        busy ? 'UNAVAILABLE' : 'INTERNAL',
        busy
          ? `the jail's uid claims in ${dir} stayed locked for ${CLAIMS_LOCK_TIMEOUT_MS / 1000} s by another process`
          : `cannot lock the jail's uid claims in ${dir}: ${(e as Error).message}`,
        { cause: e },
      );
    }
    const claims = new Claims(dir, this.home);
    try {
      return fn(claims);
    } finally {
      claims.done();
      lock.exec('COMMIT');
      lock.close();
    }
  }
}

/** The claim files, while the lock is held, for one operation on one sandbox. */
class Claims {
  #tmp: string | null = null;

  constructor(
    readonly dir: string,
    readonly home: string,
  ) {}

  /** The uids with a claim file. */
  list(): Set<number> {
    return new Set(
      readdirSync(this.dir)
        .filter((f) => /^\d+$/.test(f))
        .map(Number),
    );
  }

  /** Makes the claim of `uid` for this home's sandbox; false if the uid is claimed already. */
  make(uid: number, sandboxId: string): boolean {
    // One temporary file per operation: its content names no uid, so it is linked to whichever name is free.
    if (this.#tmp === null) {
      this.#tmp = join(this.dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
      const claim: Claim = { home: this.home, sandbox: sandboxId };
      writeFileSync(this.#tmp, JSON.stringify(claim) + '\n', { mode: PRIVATE_FILE, flag: 'wx' });
    }
    try {
      linkSync(this.#tmp, join(this.dir, String(uid)));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
  }

  /** Removes the claim of `uid` (the caller judged it ours or stale, under the lock). */
  remove(uid: number): void {
    rmSync(join(this.dir, String(uid)), { force: true });
  }

  /** Removes the temporary file. */
  done(): void {
    if (this.#tmp === null) return;
    try {
      unlinkSync(this.#tmp);
    } catch {
      // already gone
    }
    this.#tmp = null;
  }
}

function parseClaim(text: string): Claim | null {
  try {
    const v = JSON.parse(text) as Partial<Claim> | null;
    if (typeof v?.home !== 'string' || typeof v.sandbox !== 'string') return null;
    if (!isAbsolute(v.home) || !SANDBOX_ID_RE.test(v.sandbox)) return null;
    return { home: v.home, sandbox: v.sandbox };
  } catch {
    return null;
  }
}

/** The home as claims name it: absolute, with symlinks resolved (so every process of a home spells it the same). */
function canonical(home: string): string {
  try {
    return realpathSync(home);
  } catch {
    return resolve(home);
  }
}
