import { readFileSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { diskFullErrno, RoostError } from '../errors.js';
import { isAlive } from '../proc.js';
import { chmodIfThere, mkdirPrivate, PRIVATE_FILE } from './private.js';

/** Who holds a Roost home, as its owner file says. */
export interface HomeOwner {
  pid: number;
  /** What the owner is: `roost serve`, `roost run`, `library`. */
  owner: string;
  since: string;
  hostname: string;
}

/**
 * The lock that makes one runtime the owner of a Roost home.
 *
 * It is an exclusive SQLite lock (POSIX fcntl underneath) on `<home>/roost.lock`,
 * held by an open connection in `locking_mode=EXCLUSIVE`: the kernel drops it
 * when the owner exits, even on SIGKILL, so a crashed owner never leaves a stale
 * lock, and two contenders cannot both win (no pid-file races). Within one
 * process a second lock on the same home fails too (SQLite tracks locks per inode).
 * `roost.owner.json` beside it names the holder for the error message.
 */
export class HomeLock {
  readonly #db: Database.Database;
  readonly #ownerFile: string;

  private constructor(db: Database.Database, ownerFile: string) {
    this.#db = db;
    this.#ownerFile = ownerFile;
  }

  /** Takes the lock of `home`, or throws UNAVAILABLE naming the current owner. */
  static acquire(home: string, owner: string): HomeLock {
    mkdirPrivate(home);
    const path = join(home, 'roost.lock');
    const ownerFile = join(home, 'roost.owner.json');
    let db: Database.Database;
    for (let attempt = 0; ; attempt++) {
      db = new Database(path, { timeout: 0 });
      try {
        db.pragma('journal_mode = DELETE');
        db.pragma('locking_mode = EXCLUSIVE');
        // The first write takes the EXCLUSIVE lock; in this locking mode it is kept until close.
        db.exec('BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS lock (x); COMMIT;');
        chmodIfThere(path, PRIVATE_FILE);
        break;
      } catch (e) {
        db.close();
        if ((e as { code?: string }).code !== 'SQLITE_BUSY') {
          throw new RoostError('INTERNAL', `cannot lock the Roost home ${home}: ${(e as Error).message}`, { cause: e });
        }
        const holder = readOwner(ownerFile);
        // A holder that is dying (its threads still closing files) lets go within moments: wait for it.
        if (holder && holder.hostname === hostname() && !isAlive(holder.pid) && attempt < 40) {
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
          continue;
        }
        const who = holder
          ? `${holder.owner} (pid ${holder.pid}${holder.hostname !== hostname() ? ` on ${holder.hostname}` : ''}, since ${holder.since})`
          : 'another process';
        const hint =
          holder?.owner === 'roost serve'
            ? ': talk to it with the CLI or @roost/client'
            : ': wait for it to finish, or run `roost serve` and let every client share it';
        throw new RoostError('UNAVAILABLE', `the Roost home ${home} is in use by ${who}${hint}`, { details: { home, ...(holder ? { owner: holder } : {}) } });
      }
    }
    const info: HomeOwner = { pid: process.pid, owner, since: new Date().toISOString(), hostname: hostname() };
    const tmp = `${ownerFile}.tmp-${process.pid}`;
    try {
      writeFileSync(tmp, JSON.stringify(info) + '\n', { mode: PRIVATE_FILE });
      renameSync(tmp, ownerFile);
    } catch (e) {
      rmSync(tmp, { force: true });
      // The owner file only names the holder in others' errors: a full disk must not keep the owner out of its home
      // (freeing space often takes `roost rm`).
      if (!diskFullErrno(e)) {
        db.close();
        throw e;
      }
    }
    return new HomeLock(db, ownerFile);
  }

  /** The holder named in a home's owner file (which may be stale: only the lock is authoritative). */
  static owner(home: string): HomeOwner | null {
    return readOwner(join(home, 'roost.owner.json'));
  }

  get held(): boolean {
    return this.#db.open;
  }

  /** Releases the lock. */
  release(): void {
    if (!this.#db.open) return;
    const holder = readOwner(this.#ownerFile);
    if (holder?.pid === process.pid) rmSync(this.#ownerFile, { force: true });
    this.#db.close();
  }
}

function readOwner(path: string): HomeOwner | null {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as HomeOwner;
    return typeof v.pid === 'number' && typeof v.owner === 'string' ? v : null;
  } catch {
    return null;
  }
}
