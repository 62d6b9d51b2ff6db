/**
 * Directory reading for the local backend, with bounded memory: entries are
 * streamed from an open directory (Node's fs.Dir reads a few dozen at a
 * time), never listed whole, so a directory of millions of entries costs
 * the same memory as one of ten.
 *
 * Cookies are positions: entry N (0 is `.`, 1 is `..`, then the host's
 * entries in the order the host returns them) carries offset N+1, the cookie
 * to continue after it. Reading on from where the last read stopped is the
 * common case and costs nothing extra; any other cookie (a rewind, a
 * seekdir, a rebuilt session) reopens the directory and skips forward.
 */
import { lstatSync, opendirSync, type BigIntStats, type Dir, type Dirent } from 'node:fs';
import type { DirEntry } from './backend.js';
import { DirentType, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from './constants.js';
import { procEntry, procFd } from './local-paths.js';
import { direntSize, type Qid } from './wire.js';

/** Most entries in one Rreaddir: bounds the synchronous work (one lstat each) of one request. */
export const MAX_ENTRIES_PER_READ = 512;

function direntType(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return DirentType.DIR;
    case S_IFREG:
      return DirentType.REG;
    case S_IFLNK:
      return DirentType.LNK;
    case S_IFIFO:
      return DirentType.FIFO;
    case S_IFSOCK:
      return DirentType.SOCK;
    case S_IFCHR:
      return DirentType.CHR;
    case S_IFBLK:
      return DirentType.BLK;
    default:
      return DirentType.UNKNOWN;
  }
}

const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

/** The read position of one open directory. */
export class LocalDirReader {
  #dir: Dir | null = null;
  /** Position of the next entry `#next` would produce. */
  #index = 0;
  #pending: DirEntry | null = null;

  constructor(
    private readonly qidOf: (st: BigIntStats) => Qid,
    private readonly fd: number,
    private readonly selfQid: Qid,
    private readonly parentQid: Qid,
  ) {}

  /** Entries from cookie `offset` whose encoding fits `maxBytes`. */
  read(offset: bigint, maxBytes: number): DirEntry[] {
    if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return [];
    const want = Number(offset);
    const position = this.#pending !== null ? this.#index - 1 : this.#index;
    if (want !== position) this.#seek(want);
    const out: DirEntry[] = [];
    let used = 0;
    while (out.length < MAX_ENTRIES_PER_READ) {
      const e = this.#pending ?? this.#next();
      if (e === null) break;
      const size = direntSize(e.name);
      if (used + size > maxBytes) {
        this.#pending = e;
        break;
      }
      this.#pending = null;
      used += size;
      out.push(e);
    }
    return out;
  }

  /** The next entry, or null at the end. Entries that vanish between listing and lstat are skipped. */
  #next(): DirEntry | null {
    for (;;) {
      const index = this.#index;
      if (index === 0 || index === 1) {
        this.#index++;
        return { qid: index === 0 ? this.selfQid : this.parentQid, type: DirentType.DIR, name: index === 0 ? DOT : DOTDOT, offset: BigInt(index + 1) };
      }
      const d = this.#readHost();
      if (d === null) return null;
      this.#index++;
      const name = d.name as unknown as Buffer;
      let st: BigIntStats;
      try {
        st = lstatSync(procEntry(this.fd, name), { bigint: true });
      } catch {
        continue;
      }
      return { qid: this.qidOf(st), type: direntType(Number(st.mode)), name, offset: BigInt(index + 1) };
    }
  }

  #readHost(): Dirent | null {
    this.#dir ??= opendirSync(procFd(this.fd), { encoding: 'buffer' as BufferEncoding });
    return this.#dir.readSync();
  }

  /** Restarts at position `want` (reopening the directory and skipping forward). */
  #seek(want: number): void {
    this.#dir?.closeSync();
    this.#dir = null;
    this.#pending = null;
    this.#index = Math.min(want, 2);
    while (this.#index < want) {
      if (this.#readHost() === null) return;
      this.#index++;
    }
  }

  /** Closes the host directory stream. */
  close(): void {
    this.#dir?.closeSync();
    this.#dir = null;
  }
}
