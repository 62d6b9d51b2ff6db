/**
 * The operations on fids and open files: attach, walk, open, create, read,
 * write, readdir, fsync, getattr, setattr, statfs, clunk, remove.
 *
 * Each states its concurrency guarantee, in the manner of gVisor's p9:
 * "shared on X" means it holds fid X's lock shared and may run at the same
 * time as other shared operations on X; "exclusive on X" means nothing else
 * runs on X meanwhile (operations queued on X before it run first). Changes
 * to the path tree are made synchronously right after the host call, so no
 * operation sees the host and the tree disagree.
 */
import type { Attr, SetAttrRequest } from './backend.js';
import { Errno, GetattrMask, IO_HEADER_SIZE, NOFID, OpenFlag, QidType, S_IFDIR, S_IFMT, SetattrMask } from './constants.js';
import type { OpContext } from './context.js';
import { P9Error } from './errors.js';
import type { Export } from './export.js';
import { Fid, MAX_TOKEN_BYTES } from './fids.js';
import { sanitizeName } from './local-paths.js';
import { fileFid, releaseFid, unopened, writable } from './ops-util.js';
import type { PathNode } from './tree.js';
import { encodeDirents, type MessageName, type MessageOf, type Qid, type RMessage } from './wire.js';

type T<K extends MessageName> = MessageOf<K>;

const DOTDOT = Buffer.from('..');

/**
 * Tattach: makes `fid` the root of the export `aname`. Needs no lock: the fid
 * does not exist yet (the afid is read, not changed). With an authenticator,
 * `afid` must be an auth fid for this aname holding a token it accepts
 * (EACCES otherwise), and a read-only grant makes the fid read-only.
 */
export async function attach(ctx: OpContext, m: T<'Tattach'>): Promise<RMessage> {
  let readOnly = false;
  if (ctx.auth === undefined) {
    if (m.afid !== NOFID) throw new P9Error(Errno.EINVAL, 'no authentication: afid must be NOFID');
  } else {
    if (m.afid === NOFID) throw new P9Error(Errno.EACCES, 'authentication required');
    const afid = ctx.fids.has(m.afid) ? ctx.fids.get(m.afid) : undefined;
    const grant = afid?.auth?.aname === m.aname ? ctx.auth.check(m.aname, afid.auth.token) : null;
    if (grant === null) throw new P9Error(Errno.EACCES, 'authentication failed');
    readOnly = grant.readOnly;
  }
  ctx.fids.checkFree(m.fid);
  const ex = ctx.exportFor(m.aname);
  const attr = await ex.backend.getattr([]);
  // The guest's uid for what this fid creates: n_uname (Linux always sends it), else root.
  const uid = m.nUname === NOFID ? 0 : m.nUname;
  ctx.fids.add(new Fid(m.fid, ex, ex.tree.root, uid, readOnly));
  return { type: 'Rattach', tag: m.tag, qid: attr.qid };
}

/**
 * Tauth (only with an authenticator; EOPNOTSUPP otherwise): makes `afid` an
 * authentication fid for export `aname`, to which the client writes its
 * token. Needs no lock: the fid does not exist yet. An unknown export is
 * EACCES, as a wrong token is, so an unauthenticated peer cannot tell them
 * apart.
 */
export async function auth(ctx: OpContext, m: T<'Tauth'>): Promise<RMessage> {
  if (ctx.auth === undefined) throw new P9Error(Errno.EOPNOTSUPP, 'Tauth is not supported');
  ctx.fids.checkFree(m.afid);
  let ex: Export;
  try {
    ex = ctx.exportFor(m.aname);
  } catch {
    throw new P9Error(Errno.EACCES, 'authentication failed');
  }
  const fid = new Fid(m.afid, ex, ex.tree.root, 0, true);
  fid.auth = { aname: m.aname, token: Buffer.alloc(0) };
  ctx.fids.add(fid);
  return { type: 'Rauth', tag: m.tag, aqid: { type: QidType.AUTH, version: 0, path: 0n } };
}

/**
 * Twalk: shared on `fid` (exclusive when `newfid` is `fid`, which moves it).
 * `..` is resolved from the tree (the root's parent is the root), never on
 * the host. Walks of many fids run at once.
 */
export async function walk(ctx: OpContext, m: T<'Twalk'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  const self = m.newfid === m.fid;
  if (!self) ctx.fids.checkFree(m.newfid);
  return ctx.withFids([[fid, self]], async () => {
    fileFid(fid);
    if (self && m.names.length > 0 && fid.handle !== undefined) throw new P9Error(Errno.EBUSY, 'walking an open fid onto itself');
    const ex = fid.export_;
    const qids: Qid[] = [];
    let node: PathNode = fid.node;
    let error: unknown;
    for (const raw of m.names) {
      try {
        if (raw.equals(DOTDOT)) {
          node = node.parent ?? node;
          qids.push((await ex.backend.getattr(node.livePath())).qid);
          continue;
        }
        const name = sanitizeName(raw);
        const qid = await ex.backend.lookup(node.livePath(), name);
        node = ex.tree.child(node, name);
        qids.push(qid);
      } catch (err) {
        error = err;
        break;
      }
    }
    if (error !== undefined) {
      ex.tree.prune(node);
      if (qids.length === 0) throw error;
      // A partial walk: the qids reached, and newfid is not made.
      return { type: 'Rwalk', tag: m.tag, qids };
    }
    if (self) ctx.fids.move(fid, node);
    else {
      try {
        ctx.fids.add(new Fid(m.newfid, ex, node, fid.uid, fid.readOnly));
      } catch (err) {
        ex.tree.prune(node);
        throw err;
      }
    }
    return { type: 'Rwalk', tag: m.tag, qids };
  });
}

/** Tlopen: exclusive on `fid` (it becomes open). Writing opens and O_TRUNC are EROFS on a read-only export. */
export async function lopen(ctx: OpContext, m: T<'Tlopen'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, true]], async () => {
    unopened(fid);
    const acc = m.flags & OpenFlag.ACCMODE;
    if (acc === OpenFlag.WRONLY || acc === OpenFlag.RDWR || m.flags & OpenFlag.TRUNC) writable(fid);
    const handle = await fid.export_.backend.open(fid.node.livePath(), m.flags & ~(OpenFlag.CREATE | OpenFlag.EXCL));
    fid.handle = handle;
    fid.openFlags = m.flags & ~(OpenFlag.CREATE | OpenFlag.EXCL | OpenFlag.TRUNC);
    fid.dirOffset = 0n;
    return { type: 'Rlopen', tag: m.tag, qid: handle.qid, iounit: 0 };
  });
}

/** Tlcreate: exclusive on `fid` (the directory fid becomes the new file, open). */
export async function lcreate(ctx: OpContext, m: T<'Tlcreate'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, true]], async () => {
    unopened(fid);
    writable(fid);
    const name = sanitizeName(m.name);
    const ex = fid.export_;
    const handle = await ex.backend.create(fid.node.livePath(), name, m.flags, m.mode, { uid: fid.uid, gid: m.gid });
    ctx.fids.move(fid, ex.tree.child(fid.node, name));
    fid.handle = handle;
    fid.openFlags = m.flags & ~(OpenFlag.CREATE | OpenFlag.EXCL | OpenFlag.TRUNC);
    return { type: 'Rlcreate', tag: m.tag, qid: handle.qid, iounit: 0 };
  });
}

/**
 * Tread: shared on `fid`: reads run beside each other and beside writes on
 * the same fid (each at its own offset, as pread). Reads an open file or an
 * extended-attribute fid. At most msize - 11 bytes.
 */
export async function readOp(ctx: OpContext, m: T<'Tread'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fid.checkUsable();
    const count = Math.min(m.count, ctx.msize - IO_HEADER_SIZE);
    if (fid.xattr?.kind === 'read') {
      const data = fid.xattr.data;
      const start = m.offset > BigInt(data.length) ? data.length : Number(m.offset);
      return { type: 'Rread', tag: m.tag, data: data.subarray(start, start + count) };
    }
    if (fid.handle === undefined || fid.xattr !== undefined) throw new P9Error(Errno.EBADF, 'fid not open for reading');
    return { type: 'Rread', tag: m.tag, data: await fid.handle.read(m.offset, count) };
  });
}

/**
 * Twrite: shared on `fid`: writes run beside each other and beside reads on
 * the same fid (as pwrite). Writes an open file, or the value of an
 * extended-attribute writer (set when the fid is clunked).
 */
export async function writeOp(ctx: OpContext, m: T<'Twrite'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fid.checkUsable();
    if (fid.auth !== undefined) {
      // The token, in order; bounded so a peer cannot grow it.
      if (m.offset !== BigInt(fid.auth.token.length) || fid.auth.token.length + m.data.length > MAX_TOKEN_BYTES)
        throw new P9Error(Errno.EINVAL, 'authentication write out of order or too long');
      fid.auth.token = Buffer.concat([fid.auth.token, m.data]);
      return { type: 'Rwrite', tag: m.tag, count: m.data.length };
    }
    const x = fid.xattr;
    if (x?.kind === 'write') {
      if (m.offset !== BigInt(x.written) || x.written + m.data.length > x.size)
        throw new P9Error(Errno.EINVAL, 'extended attribute write out of order or too long');
      m.data.copy(x.data, x.written);
      x.written += m.data.length;
      return { type: 'Rwrite', tag: m.tag, count: m.data.length };
    }
    if (fid.handle === undefined || x !== undefined) throw new P9Error(Errno.EBADF, 'fid not open for writing');
    writable(fid);
    return { type: 'Rwrite', tag: m.tag, count: await fid.handle.write(m.offset, m.data) };
  });
}

/** Tclunk: exclusive on `fid`: waits for what is in flight on it, then forgets it (closing its file). */
export async function clunk(ctx: OpContext, m: T<'Tclunk'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, true]], async () => {
    const err = await releaseFid(ctx, fid);
    if (err !== undefined) throw err;
    return { type: 'Rclunk', tag: m.tag };
  });
}

/** Tremove: exclusive on `fid`: removes its file, then clunks the fid whatever the removal did. */
export async function remove(ctx: OpContext, m: T<'Tremove'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, true]], async () => {
    try {
      fileFid(fid);
      writable(fid);
      const node = fid.node;
      if (node.parent === null) throw new P9Error(Errno.EBUSY, 'the export root');
      const path = node.livePath();
      const ex = fid.export_;
      const attr = await ex.backend.getattr(path);
      await ex.backend.unlink(path.slice(0, -1), path[path.length - 1]!, (attr.mode & S_IFMT) === S_IFDIR);
      ex.tree.removed(node.parent, node.name);
    } finally {
      await releaseFid(ctx, fid);
    }
    return { type: 'Rremove', tag: m.tag };
  });
}

/** Treaddir: exclusive on `fid` (it moves the open directory's cursor). At most msize - 11 bytes of entries. */
export async function readdir(ctx: OpContext, m: T<'Treaddir'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, true]], async () => {
    fileFid(fid);
    if (fid.handle === undefined) throw new P9Error(Errno.EBADF, 'directory not open');
    if (!fid.handle.isDir) throw new P9Error(Errno.ENOTDIR);
    const entries = await fid.handle.readdir(m.offset, Math.min(m.count, ctx.msize - IO_HEADER_SIZE));
    fid.dirOffset = entries.length > 0 ? entries[entries.length - 1]!.offset : m.offset;
    return { type: 'Rreaddir', tag: m.tag, data: encodeDirents(entries) };
  });
}

/** Tfsync: shared on `fid` (beside reads and writes on it; it flushes what was written before it began). */
export async function fsyncOp(ctx: OpContext, m: T<'Tfsync'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    if (fid.handle === undefined) throw new P9Error(Errno.EBADF, 'fid not open');
    await fid.handle.fsync(m.datasync !== 0);
    return { type: 'Rfsync', tag: m.tag };
  });
}

/** The attributes of a fid's file: by path, or through its open file once the path is gone. */
export async function fidAttr(fid: Fid): Promise<Attr> {
  const path = fid.node.path();
  if (path !== null) {
    try {
      return await fid.export_.backend.getattr(path);
    } catch (err) {
      if (fid.handle === undefined || !(err instanceof Error && ['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? ''))) throw err;
    }
  }
  if (fid.handle === undefined) throw new P9Error(Errno.ENOENT, 'the file was removed');
  return fid.handle.getattr();
}

/** Tgetattr: shared on `fid`. Reports the basic attributes (P9_GETATTR_BASIC) whatever was asked. */
export async function getattr(ctx: OpContext, m: T<'Tgetattr'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    const a = await fidAttr(fid);
    return {
      type: 'Rgetattr',
      tag: m.tag,
      valid: BigInt(GetattrMask.BASIC),
      qid: a.qid,
      mode: a.mode,
      uid: a.uid,
      gid: a.gid,
      nlink: a.nlink,
      rdev: a.rdev,
      size: a.size,
      blksize: a.blksize,
      blocks: a.blocks,
      atimeSec: a.atime.sec,
      atimeNsec: a.atime.nsec,
      mtimeSec: a.mtime.sec,
      mtimeNsec: a.mtime.nsec,
      ctimeSec: a.ctime.sec,
      ctimeNsec: a.ctime.nsec,
      btimeSec: 0n,
      btimeNsec: 0n,
      gen: 0n,
      dataVersion: 0n,
    };
  });
}

/**
 * Tsetattr: shared on `fid` (it changes the file, not the fid; two setattrs
 * on one file are ordered by the host). ATIME/MTIME without their _SET bit
 * mean "now"; CTIME alone is accepted and does nothing (the host sets it).
 */
export async function setattr(ctx: OpContext, m: T<'Tsetattr'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    const v = m.valid;
    const request: SetAttrRequest = {};
    if (v & SetattrMask.MODE) request.mode = m.mode;
    if (v & SetattrMask.UID) request.uid = m.uid;
    if (v & SetattrMask.GID) request.gid = m.gid;
    if (v & SetattrMask.SIZE) request.size = m.size;
    if (v & SetattrMask.ATIME) request.atime = v & SetattrMask.ATIME_SET ? { sec: m.atimeSec, nsec: m.atimeNsec } : 'now';
    if (v & SetattrMask.MTIME) request.mtime = v & SetattrMask.MTIME_SET ? { sec: m.mtimeSec, nsec: m.mtimeNsec } : 'now';
    if (Object.keys(request).length > 0) {
      writable(fid);
      const path = fid.node.path();
      if (path === null && fid.handle === undefined) throw new P9Error(Errno.ENOENT, 'the file was removed');
      await fid.export_.backend.setattr(path, request, fid.handle);
    }
    return { type: 'Rsetattr', tag: m.tag };
  });
}

/** Tstatfs: shared on `fid`. */
export async function statfs(ctx: OpContext, m: T<'Tstatfs'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    const s = await fid.export_.backend.statfs(fid.node.path() ?? []);
    return { type: 'Rstatfs', tag: m.tag, ...s };
  });
}
