/**
 * The operations on names and metadata: mkdir, mknod (refused), symlink,
 * link, rename, renameat, unlinkat, readlink, extended attributes, locks.
 *
 * Concurrency, as in ops-files.ts: all of these hold their fids' locks
 * shared (they change the tree, not the fids), so they run beside reads,
 * writes and each other. The host call and the matching change of the
 * path tree happen with no yield between them, so fids below a renamed or
 * removed directory follow it at once. Two renames of one name race as
 * they would on the host: one wins, the other gets ENOENT.
 */
import { AT_REMOVEDIR, Errno, LockType, MAX_XATTR_SIZE } from './constants.js';
import type { OpContext } from './context.js';
import { P9Error } from './errors.js';
import { Fid } from './fids.js';
import { sanitizeName } from './local-paths.js';
import { lockOwner } from './locks.js';
import { fidAttr } from './ops-files.js';
import { fileFid, parentOf, sameExport, unopened, writable, xattrName } from './ops-util.js';
import type { MessageName, MessageOf, RMessage } from './wire.js';

type T<K extends MessageName> = MessageOf<K>;

/** Tmkdir: shared on `dfid`. */
export async function mkdir(ctx: OpContext, m: T<'Tmkdir'>): Promise<RMessage> {
  const dfid = ctx.fids.get(m.dfid);
  return ctx.withFids([[dfid, false]], async () => {
    fileFid(dfid);
    writable(dfid);
    const qid = await dfid.export_.backend.mkdir(dfid.node.livePath(), sanitizeName(m.name), m.mode, { uid: dfid.uid, gid: m.gid });
    return { type: 'Rmkdir', tag: m.tag, qid };
  });
}

/**
 * Tmknod: shared on `dfid` (the directory). The backend stores the node as
 * data (the local backend: a plain file with mapped attributes), never as a
 * host device; a backend without `mknod` refuses it (EPERM).
 */
export async function mknod(ctx: OpContext, m: T<'Tmknod'>): Promise<RMessage> {
  const dfid = ctx.fids.get(m.dfid);
  return ctx.withFids([[dfid, false]], async () => {
    fileFid(dfid);
    writable(dfid);
    const backend = dfid.export_.backend;
    if (backend.mknod === undefined) throw new P9Error(Errno.EPERM, 'mknod is not supported');
    const qid = await backend.mknod(dfid.node.livePath(), sanitizeName(m.name), m.mode, makedev(m.major, m.minor), { uid: dfid.uid, gid: m.gid });
    return { type: 'Rmknod', tag: m.tag, qid };
  });
}

/** glibc's makedev: what QEMU stores in user.virtfs.rdev and Rgetattr reports. */
function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

/** Tsymlink: shared on `fid` (the directory). The target is stored as given and never followed by the server. */
export async function symlink(ctx: OpContext, m: T<'Tsymlink'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    writable(fid);
    const qid = await fid.export_.backend.symlink(fid.node.livePath(), sanitizeName(m.name), m.target, { uid: fid.uid, gid: m.gid });
    return { type: 'Rsymlink', tag: m.tag, qid };
  });
}

/** Tlink: shared on `dfid` and `fid`. Both in one export (EXDEV otherwise), so the link stays inside it. */
export async function link(ctx: OpContext, m: T<'Tlink'>): Promise<RMessage> {
  const dfid = ctx.fids.get(m.dfid);
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids(
    [
      [dfid, false],
      [fid, false],
    ],
    async () => {
      fileFid(dfid);
      fileFid(fid);
      sameExport(dfid, fid);
      writable(dfid);
      await dfid.export_.backend.link(fid.node.livePath(), dfid.node.livePath(), sanitizeName(m.name));
      return { type: 'Rlink', tag: m.tag };
    },
  );
}

/** Trename: shared on `fid` and `dfid`; the fid's node moves with its file, and fids below it follow. */
export async function rename(ctx: OpContext, m: T<'Trename'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  const dfid = ctx.fids.get(m.dfid);
  return ctx.withFids(
    [
      [fid, false],
      [dfid, false],
    ],
    async () => {
      fileFid(fid);
      fileFid(dfid);
      sameExport(fid, dfid);
      writable(fid);
      const name = sanitizeName(m.name);
      const { parent, name: oldName } = parentOf(fid);
      const ex = fid.export_;
      const oldParent = fid.node.parent!;
      await ex.backend.rename(parent, oldName, dfid.node.livePath(), name);
      ex.tree.moved(oldParent, oldName, dfid.node, name);
      return { type: 'Rrename', tag: m.tag };
    },
  );
}

/** Trenameat: shared on both directory fids. */
export async function renameat(ctx: OpContext, m: T<'Trenameat'>): Promise<RMessage> {
  const olddir = ctx.fids.get(m.olddirfid);
  const newdir = ctx.fids.get(m.newdirfid);
  return ctx.withFids(
    [
      [olddir, false],
      [newdir, false],
    ],
    async () => {
      fileFid(olddir);
      fileFid(newdir);
      sameExport(olddir, newdir);
      writable(olddir);
      const oldName = sanitizeName(m.oldname);
      const newName = sanitizeName(m.newname);
      const ex = olddir.export_;
      await ex.backend.rename(olddir.node.livePath(), oldName, newdir.node.livePath(), newName);
      ex.tree.moved(olddir.node, oldName, newdir.node, newName);
      return { type: 'Rrenameat', tag: m.tag };
    },
  );
}

/** Tunlinkat: shared on `dirfid`. AT_REMOVEDIR removes a directory; without it a directory is EISDIR. */
export async function unlinkat(ctx: OpContext, m: T<'Tunlinkat'>): Promise<RMessage> {
  const dir = ctx.fids.get(m.dirfid);
  return ctx.withFids([[dir, false]], async () => {
    fileFid(dir);
    writable(dir);
    const name = sanitizeName(m.name);
    const ex = dir.export_;
    await ex.backend.unlink(dir.node.livePath(), name, (m.flags & AT_REMOVEDIR) !== 0);
    ex.tree.removed(dir.node, name);
    return { type: 'Runlinkat', tag: m.tag };
  });
}

/** Treadlink: shared on `fid`. */
export async function readlink(ctx: OpContext, m: T<'Treadlink'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    return { type: 'Rreadlink', tag: m.tag, target: await fid.export_.backend.readlink(fid.node.livePath()) };
  });
}

/**
 * Txattrwalk: shared on `fid`; makes `newfid` an extended-attribute reader
 * holding the value (or, for an empty name, the NUL-terminated name list),
 * at most XATTR_SIZE_MAX bytes, read with Tread and released by Tclunk.
 */
export async function xattrwalk(ctx: OpContext, m: T<'Txattrwalk'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  ctx.fids.checkFree(m.newfid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    const backend = fid.export_.backend;
    const path = fid.node.livePath();
    let data: Buffer;
    if (m.name.length === 0) {
      const names = await backend.listxattr(path);
      data = Buffer.concat(names.map((n) => Buffer.from(`${n}\0`)));
    } else data = await backend.getxattr(path, xattrName(m.name));
    if (data.length > MAX_XATTR_SIZE) throw new P9Error(Errno.E2BIG);
    const x = new Fid(m.newfid, fid.export_, fid.node, fid.uid, fid.readOnly);
    x.xattr = { kind: 'read', data };
    ctx.fids.add(x);
    return { type: 'Rxattrwalk', tag: m.tag, size: BigInt(data.length) };
  });
}

/**
 * Txattrcreate: exclusive on `fid` (it becomes an extended-attribute
 * writer). The value comes in Twrites; Tclunk sets it (or removes the
 * attribute when the size is 0).
 */
export async function xattrcreate(ctx: OpContext, m: T<'Txattrcreate'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, true]], async () => {
    unopened(fid);
    writable(fid);
    const name = xattrName(m.name);
    if (name.length === 0) throw new P9Error(Errno.EINVAL);
    if (m.size > BigInt(MAX_XATTR_SIZE)) throw new P9Error(Errno.E2BIG);
    const size = Number(m.size);
    fid.xattr = { kind: 'write', name, size, flags: m.flags, data: Buffer.alloc(size), written: 0 };
    return { type: 'Rxattrcreate', tag: m.tag };
  });
}

/** Tlock: shared on `fid`; the export's lock table changes with no yield. A conflict is BLOCKED at once (the client retries). */
export async function lock(ctx: OpContext, m: T<'Tlock'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    const file = (fid.handle?.qid ?? (await fidAttr(fid)).qid).path;
    const owner = lockOwner(ctx.sessionId, m.clientId, m.procId);
    const status = fid.export_.locks.lock(file, owner, m.lockType, m.start, m.length, m.procId, m.clientId);
    return { type: 'Rlock', tag: m.tag, status };
  });
}

/** Tgetlock: shared on `fid`. Answers the first conflicting lock, or the request with type UNLCK when none. */
export async function getlock(ctx: OpContext, m: T<'Tgetlock'>): Promise<RMessage> {
  const fid = ctx.fids.get(m.fid);
  return ctx.withFids([[fid, false]], async () => {
    fileFid(fid);
    const file = (fid.handle?.qid ?? (await fidAttr(fid)).qid).path;
    const owner = lockOwner(ctx.sessionId, m.clientId, m.procId);
    const conflict = fid.export_.locks.test(file, owner, m.lockType, m.start, m.length);
    if (conflict === null)
      return { type: 'Rgetlock', tag: m.tag, lockType: LockType.UNLCK, start: m.start, length: m.length, procId: m.procId, clientId: m.clientId };
    return {
      type: 'Rgetlock',
      tag: m.tag,
      lockType: conflict.type,
      start: conflict.start,
      length: conflict.length,
      procId: conflict.procId,
      clientId: conflict.clientId,
    };
  });
}
