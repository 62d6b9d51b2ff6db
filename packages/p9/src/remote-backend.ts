/**
 * A backend whose files live on a remote 9P server (`roost volume serve`),
 * reached over TLS 1.3 and authenticated with a per-export token: what a
 * local P9Server exports to a guest for a remote volume.
 *
 *   const backend = await RemoteBackend.connect(parseCredentials(text), { outageTimeoutMs: 30_000 });
 *   const server = new P9Server({ exports: { vol: { backend, readOnly: backend.readOnly } } });
 *
 * Every backend of one server (same host:port and pinned identity) shares
 * one TLS connection (remote-connection.ts), each export attached on it
 * with its own token. Path-based calls become walks from the export's root
 * fid (16 names per Twalk), the operation, and a clunk of the temporary
 * fids (sent without waiting for its answer).
 *
 * Reconnection and retries (see remote-connection.ts for the waiting rules):
 * - retried after a drop: lookup, getattr, open, readlink, statfs, getxattr,
 *   listxattr, setattr (it sets values, so doing it twice is doing it once),
 *   setxattr without XATTR_CREATE, and on open files read, readdir,
 *   getattr, fsync, and write at an offset (writing the same bytes at the
 *   same place twice leaves what once does);
 * - EIO when the drop came after the change was sent: create, mkdir,
 *   symlink, link, rename, unlink, removexattr, setxattr with XATTR_CREATE
 *   and a write to a file opened O_APPEND (each would fail or repeat when
 *   redone); before it was sent they wait and run normally.
 *
 * Ownership: one attach serves every guest uid, so after a create, mkdir
 * or symlink the guest's uid/gid are applied with a Tsetattr (not for
 * symlinks, which cannot carry them in the mapped-xattr model).
 *
 * Concurrency: calls may run at once; unlike the local backend, path work
 * yields (network round trips), so two calls on related paths may
 * interleave on the server as they would for two local processes.
 */
import type { Attr, Backend, Credentials, DirEntry, FileHandle, Name, Path, SetAttrRequest, StatFs } from './backend.js';
import { AT_REMOVEDIR, Errno, IO_HEADER_SIZE, OpenFlag, QidType, SetattrMask, XattrFlag } from './constants.js';
import { parseRemoteUrl, type RemoteCredentials } from './credentials.js';
import { P9Error } from './errors.js';
import {
  acquireConnection,
  releaseConnection,
  type Attachment,
  type Attempt,
  type OpenFile,
  type RemoteConnection,
  type RemoteConnectionOptions,
} from './remote-connection.js';
import { decodeDirents, type MessageOf, type Qid } from './wire.js';

/** Options of {@link RemoteBackend.connect}. */
export interface RemoteBackendOptions extends RemoteConnectionOptions {
  /** How long operations wait for a dropped connection to come back before failing with EIO (default 30 s). */
  outageTimeoutMs?: number;
}

/** Twrite's bytes around its data: header, fid, offset, count. */
const WRITE_OVERHEAD = 23;

function attrOf(r: MessageOf<'Rgetattr'>): Attr {
  return {
    qid: r.qid,
    mode: r.mode,
    uid: r.uid,
    gid: r.gid,
    nlink: r.nlink,
    rdev: r.rdev,
    size: r.size,
    blksize: r.blksize,
    blocks: r.blocks,
    atime: { sec: r.atimeSec, nsec: r.atimeNsec },
    mtime: { sec: r.mtimeSec, nsec: r.mtimeNsec },
    ctime: { sec: r.ctimeSec, nsec: r.ctimeNsec },
  };
}

/** A Tsetattr from a SetAttrRequest. */
function setattrMessage(fid: number, q: SetAttrRequest): MessageOf<'Tsetattr'> extends infer M ? Omit<M, 'tag'> : never {
  let valid = 0;
  if (q.mode !== undefined) valid |= SetattrMask.MODE;
  if (q.uid !== undefined) valid |= SetattrMask.UID;
  if (q.gid !== undefined) valid |= SetattrMask.GID;
  if (q.size !== undefined) valid |= SetattrMask.SIZE;
  if (q.atime !== undefined) valid |= SetattrMask.ATIME | (q.atime === 'now' ? 0 : SetattrMask.ATIME_SET);
  if (q.mtime !== undefined) valid |= SetattrMask.MTIME | (q.mtime === 'now' ? 0 : SetattrMask.MTIME_SET);
  const at = q.atime === undefined || q.atime === 'now' ? { sec: 0n, nsec: 0n } : q.atime;
  const mt = q.mtime === undefined || q.mtime === 'now' ? { sec: 0n, nsec: 0n } : q.mtime;
  return {
    type: 'Tsetattr',
    fid,
    valid,
    mode: q.mode ?? 0,
    uid: q.uid ?? 0,
    gid: q.gid ?? 0,
    size: q.size ?? 0n,
    atimeSec: at.sec,
    atimeNsec: at.nsec,
    mtimeSec: mt.sec,
    mtimeNsec: mt.nsec,
  };
}

/** An open file on the remote server. */
export class RemoteHandle implements FileHandle, OpenFile {
  readonly isDir: boolean;
  stale: number | undefined;
  #closed = false;

  constructor(
    readonly backend: RemoteBackend,
    readonly fid: number,
    public path: Path,
    readonly flags: number,
    readonly qid: Qid,
  ) {
    this.isDir = (qid.type & QidType.DIR) !== 0;
  }

  #run<T>(fn: (a: Attempt) => Promise<T>): Promise<T> {
    return this.backend.run((a) => {
      if (this.stale !== undefined) throw new P9Error(this.stale, 'the file is gone since the connection to the volume server was restored');
      return fn(a);
    });
  }

  /** Reads in msize-sized pieces until `count` bytes or the end of the file. */
  read(offset: bigint, count: number): Promise<Buffer> {
    return this.#run(async (a) => {
      const parts: Buffer[] = [];
      let got = 0;
      while (got < count) {
        const want = Math.min(count - got, a.msize - IO_HEADER_SIZE);
        const r = await a.rpc({ type: 'Tread', fid: this.fid, offset: offset + BigInt(got), count: want }, 'Rread');
        parts.push(r.data);
        got += r.data.length;
        if (r.data.length < want) break;
      }
      return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    });
  }

  /** Writes in msize-sized pieces; a short piece (the server's quota) ends it. */
  write(offset: bigint, data: Buffer): Promise<number> {
    const append = (this.flags & OpenFlag.APPEND) !== 0;
    return this.#run(async (a) => {
      let done = 0;
      while (done < data.length || data.length === 0) {
        const piece = data.subarray(done, done + a.msize - WRITE_OVERHEAD);
        const request = { type: 'Twrite', fid: this.fid, offset: offset + BigInt(done), data: piece } as const;
        const r = append ? await a.mutate(request, 'Rwrite') : await a.rpc(request, 'Rwrite');
        done += r.count;
        if (r.count < piece.length || data.length === 0) break;
      }
      return done;
    });
  }

  readdir(offset: bigint, maxBytes: number): Promise<DirEntry[]> {
    return this.#run(async (a) => {
      const r = await a.rpc({ type: 'Treaddir', fid: this.fid, offset, count: Math.min(maxBytes, a.msize - IO_HEADER_SIZE) }, 'Rreaddir');
      return decodeDirents(r.data);
    });
  }

  fsync(datasync: boolean): Promise<void> {
    return this.#run(async (a) => {
      await a.rpc({ type: 'Tfsync', fid: this.fid, datasync: datasync ? 1 : 0 }, 'Rfsync');
    });
  }

  getattr(): Promise<Attr> {
    return this.#run(async (a) => attrOf(await a.rpc({ type: 'Tgetattr', fid: this.fid, requestMask: 0x7ffn }, 'Rgetattr')));
  }

  /** @internal A Tsetattr on the open file (ftruncate and friends). */
  setattr(request: SetAttrRequest): Promise<void> {
    return this.#run(async (a) => {
      await a.rpc(setattrMessage(this.fid, request), 'Rsetattr');
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.backend.forget(this);
  }
}

/** A remote export as a Backend. */
export class RemoteBackend implements Backend {
  /** Whether the token grants read-only access (the remote enforces it; serve the export read-only too). */
  readonly readOnly: boolean;
  readonly #conn: RemoteConnection;
  readonly #att: Attachment;
  readonly #outageTimeoutMs: number;
  #closed = false;

  private constructor(conn: RemoteConnection, att: Attachment, readOnly: boolean, outageTimeoutMs: number) {
    this.#conn = conn;
    this.#att = att;
    this.readOnly = readOnly;
    this.#outageTimeoutMs = outageTimeoutMs;
  }

  /**
   * Connects to the export the credentials name (or joins the process's
   * connection to that server) and attaches it with its token. Rejects
   * without retrying when the server cannot be reached (ECONNREFUSED, EIO
   * ...), is not the one pinned (EACCES, before any 9P byte is sent) or
   * refuses the token (EACCES). Call `close()` when done.
   */
  static async connect(credentials: RemoteCredentials, options: RemoteBackendOptions = {}): Promise<RemoteBackend> {
    const { host, port, exportName } = parseRemoteUrl(credentials.url);
    const outage = options.outageTimeoutMs ?? 30_000;
    const conn = await acquireConnection(
      {
        host,
        port,
        ...(credentials.fingerprint !== undefined ? { fingerprint: credentials.fingerprint } : {}),
        ...(credentials.ca !== undefined ? { ca: credentials.ca } : {}),
      },
      options,
    );
    try {
      const att = await conn.attach(exportName, credentials.token, outage);
      return new RemoteBackend(conn, att, credentials.readOnly, outage);
    } catch (err) {
      releaseConnection(conn);
      throw err;
    }
  }

  /** The shared connection (for tests and diagnostics: `dials` counts TLS connections made). */
  get connection(): RemoteConnection {
    return this.#conn;
  }

  /** @internal Runs an operation on the export with the reconnection rules. */
  run<T>(fn: (a: Attempt) => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new P9Error(Errno.EIO, 'the remote backend is closed'));
    return this.#conn.run(this.#att, this.#outageTimeoutMs, fn);
  }

  /** A fid walked to `path` from the export root (the root itself for [] is still a clone, so it can be clunked). */
  #walk(a: Attempt, path: Path): Promise<number> {
    return a.walk(this.#att.rootFid, path);
  }

  lookup(dir: Path, name: Name): Promise<Qid> {
    return this.run(async (a) => (await a.walkTo(this.#att.rootFid, [...dir, name])).qid!);
  }

  getattr(path: Path): Promise<Attr> {
    return this.run(async (a) => {
      const fid = path.length === 0 ? this.#att.rootFid : await this.#walk(a, path);
      return attrOf(await a.rpc({ type: 'Tgetattr', fid, requestMask: 0x7ffn }, 'Rgetattr'));
    });
  }

  setattr(path: Path | null, request: SetAttrRequest, handle?: FileHandle): Promise<void> {
    if (handle instanceof RemoteHandle) return handle.setattr(request);
    if (path === null) return Promise.reject(new P9Error(Errno.ENOENT, 'the file was removed'));
    return this.run(async (a) => {
      await a.rpc(setattrMessage(await this.#walk(a, path), request), 'Rsetattr');
    });
  }

  open(path: Path, flags: number): Promise<FileHandle> {
    const openFlags = flags & ~(OpenFlag.CREATE | OpenFlag.EXCL);
    return this.run(async (a) => {
      const fid = await this.#walk(a, path);
      // O_TRUNC changes the file: not repeated after a drop.
      const request = { type: 'Tlopen', fid, flags: openFlags } as const;
      const r = openFlags & OpenFlag.TRUNC ? await a.mutate(request, 'Rlopen') : await a.rpc(request, 'Rlopen');
      return this.#opened(a, fid, path, openFlags, r.qid);
    });
  }

  #opened(a: Attempt, fid: number, path: Path, flags: number, qid: Qid): RemoteHandle {
    a.keep(fid);
    const h = new RemoteHandle(this, fid, [...path], flags & ~(OpenFlag.CREATE | OpenFlag.EXCL | OpenFlag.TRUNC), qid);
    this.#att.handles.add(h);
    return h;
  }

  /** @internal An open file is closed: its fid is let go and it is no longer reopened after a drop. */
  forget(h: RemoteHandle): void {
    this.#att.handles.delete(h);
    this.#conn.closeFid(h.fid, h.stale === undefined);
  }

  /** Applies the guest's owner to what was just made (the attach is shared by every uid). */
  async #own(a: Attempt, fid: number, cred: Credentials): Promise<void> {
    // The attach is uid 0, and the gid went with the request: nothing to change for root.
    if (cred.uid === 0) return;
    await a.rpc(setattrMessage(fid, { uid: cred.uid, gid: cred.gid }), 'Rsetattr');
  }

  create(dir: Path, name: Name, flags: number, mode: number, cred: Credentials): Promise<FileHandle> {
    return this.run(async (a) => {
      const fid = await this.#walk(a, dir);
      const r = await a.mutate({ type: 'Tlcreate', fid, name, flags, mode, gid: cred.gid }, 'Rlcreate');
      await this.#own(a, fid, cred);
      return this.#opened(a, fid, [...dir, name], flags, r.qid);
    });
  }

  mkdir(dir: Path, name: Name, mode: number, cred: Credentials): Promise<Qid> {
    return this.run(async (a) => {
      const fid = await this.#walk(a, dir);
      const r = await a.mutate({ type: 'Tmkdir', dfid: fid, name, mode, gid: cred.gid }, 'Rmkdir');
      if (cred.uid !== 0) await this.#own(a, await a.walk(fid, [name]), cred);
      return r.qid;
    });
  }

  symlink(dir: Path, name: Name, target: Buffer, cred: Credentials): Promise<Qid> {
    return this.run(async (a) => {
      const fid = await this.#walk(a, dir);
      return (await a.mutate({ type: 'Tsymlink', fid, name, target, gid: cred.gid }, 'Rsymlink')).qid;
    });
  }

  link(target: Path, dir: Path, name: Name): Promise<void> {
    return this.run(async (a) => {
      const [fid, dfid] = await Promise.all([this.#walk(a, target), this.#walk(a, dir)]);
      await a.mutate({ type: 'Tlink', dfid, fid, name }, 'Rlink');
    });
  }

  rename(oldDir: Path, oldName: Name, newDir: Path, newName: Name): Promise<void> {
    return this.run(async (a) => {
      const [from, to] = await Promise.all([this.#walk(a, oldDir), this.#walk(a, newDir)]);
      await a.mutate({ type: 'Trenameat', olddirfid: from, oldname: oldName, newdirfid: to, newname: newName }, 'Rrenameat');
      this.#moved([...oldDir, oldName], [...newDir, newName]);
    });
  }

  /** Open files below a renamed path follow it (so a reconnect reopens them where they are now). */
  #moved(from: Path, to: Path): void {
    for (const h of this.#att.handles) {
      if (h.path.length < from.length || !from.every((n, i) => n.equals(h.path[i]!))) continue;
      h.path = [...to, ...h.path.slice(from.length)];
    }
  }

  unlink(dir: Path, name: Name, isDir: boolean): Promise<void> {
    return this.run(async (a) => {
      const fid = await this.#walk(a, dir);
      await a.mutate({ type: 'Tunlinkat', dirfid: fid, name, flags: isDir ? AT_REMOVEDIR : 0 }, 'Runlinkat');
    });
  }

  readlink(path: Path): Promise<Buffer> {
    return this.run(async (a) => (await a.rpc({ type: 'Treadlink', fid: await this.#walk(a, path) }, 'Rreadlink')).target);
  }

  statfs(path: Path): Promise<StatFs> {
    return this.run(async (a) => {
      const r = await a.rpc({ type: 'Tstatfs', fid: path.length === 0 ? this.#att.rootFid : await this.#walk(a, path) }, 'Rstatfs');
      return {
        fsType: r.fsType,
        bsize: r.bsize,
        blocks: r.blocks,
        bfree: r.bfree,
        bavail: r.bavail,
        files: r.files,
        ffree: r.ffree,
        fsid: r.fsid,
        namelen: r.namelen,
      };
    });
  }

  /** Txattrwalk then Treads of the value (or of the name list for ""). */
  #xattrRead(path: Path, name: string): Promise<Buffer> {
    return this.run(async (a) => {
      const fid = await this.#walk(a, path);
      const xfid = a.conn.allocFid();
      let r: MessageOf<'Rxattrwalk'>;
      try {
        r = await a.rpc({ type: 'Txattrwalk', fid, newfid: xfid, name: Buffer.from(name) }, 'Rxattrwalk');
      } catch (err) {
        a.conn.freeFid(xfid);
        throw err;
      }
      try {
        const size = Number(r.size);
        const parts: Buffer[] = [];
        let got = 0;
        while (got < size) {
          const d = await a.rpc({ type: 'Tread', fid: xfid, offset: BigInt(got), count: Math.min(size - got, a.msize - IO_HEADER_SIZE) }, 'Rread');
          if (d.data.length === 0) break;
          parts.push(d.data);
          got += d.data.length;
        }
        return Buffer.concat(parts);
      } finally {
        a.conn.clunkLater(a.client, xfid);
      }
    });
  }

  getxattr(path: Path, name: string): Promise<Buffer> {
    return this.#xattrRead(path, name);
  }

  async listxattr(path: Path): Promise<string[]> {
    const list = await this.#xattrRead(path, '');
    return list
      .toString('utf8')
      .split('\0')
      .filter((n) => n !== '');
  }

  /** Txattrcreate, the value in Twrites, and the Tclunk that sets it (its answer carries the set's error). */
  #xattrWrite(path: Path, name: string, value: Buffer, flags: number, unsafe: boolean): Promise<void> {
    return this.run(async (a) => {
      const fid = await this.#walk(a, path);
      await a.rpc({ type: 'Txattrcreate', fid, name: Buffer.from(name), size: BigInt(value.length), flags }, 'Rxattrcreate');
      for (let at = 0; at < value.length;) {
        const piece = value.subarray(at, at + a.msize - WRITE_OVERHEAD);
        at += (await a.rpc({ type: 'Twrite', fid, offset: BigInt(at), data: piece }, 'Rwrite')).count;
      }
      a.keep(fid);
      try {
        // The value is set (or removed) by this clunk: the change that may not be repeatable.
        if (unsafe) await a.mutate({ type: 'Tclunk', fid }, 'Rclunk');
        else await a.rpc({ type: 'Tclunk', fid }, 'Rclunk');
      } finally {
        a.conn.freeFid(fid);
      }
    });
  }

  setxattr(path: Path, name: string, value: Buffer, flags: number): Promise<void> {
    return this.#xattrWrite(path, name, value, flags, (flags & XattrFlag.CREATE) !== 0);
  }

  removexattr(path: Path, name: string): Promise<void> {
    return this.#xattrWrite(path, name, Buffer.alloc(0), 0, true);
  }

  /** Lets go of the export (its open files were closed by the server first); the last backend of a server closes the connection. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#conn.detach(this.#att);
    releaseConnection(this.#conn);
  }
}
