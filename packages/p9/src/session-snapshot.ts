/**
 * Saving a session and rebuilding it, in this process or a fresh one: what
 * lets a guest's 9P mounts survive a VM snapshot and restore. The guest's
 * kernel keeps its fids across the restore; the server must know them too.
 *
 * What is saved (plain JSON): the session id and msize; every fid as its
 * export, its path from the export root (names in base64), the guest uid,
 * and for an open fid its open flags and directory cursor; the session's
 * locks; and the bytes that were received but not processed, and replies
 * not yet delivered (so nothing in transit is lost).
 *
 * What is rebuilt: each fid is walked again from its export's root; an open
 * fid is opened again with its flags (without O_CREAT, O_EXCL, O_TRUNC); a
 * directory cursor continues where it was (the next Treaddir's offset is
 * honoured by reopening and skipping). A fid whose file is gone, or whose
 * path could not be saved (removed while open), or an extended-attribute
 * fid, is rebuilt "stale": every operation on it fails with ESTALE and
 * clunk works. Locks are put back as they were.
 *
 * The session must be quiescent when saved: detach it first (which waits
 * for the requests in flight). Save only while the guest is paused or its
 * channel is stopped, or the bytes it sends meanwhile are not in the save.
 */
import { Errno } from './constants.js';
import { Fid } from './fids.js';
import { Session, type SessionHost, type SessionOptions } from './session.js';

/** One saved fid. */
export interface FidSnapshot {
  fid: number;
  /** The export's name (Tattach's aname). */
  export: string;
  /** Names from the export root, base64 each; null when the file had been removed. */
  path: string[] | null;
  uid: number;
  /** Set for an open fid. */
  open?: { flags: number; dirOffset: string };
  /** An extended-attribute or authentication fid (rebuilt stale). */
  xattr?: true;
  /** Attached with a read-only token. */
  readOnly?: true;
}

/** One saved lock range. */
export interface LockSnapshot {
  export: string;
  /** The file's qid path, decimal. */
  file: string;
  owner: string;
  type: number;
  start: string;
  end: string;
  procId: number;
  clientId: string;
}

/** A saved session (JSON-safe). */
export interface SessionSnapshot {
  format: 1;
  id: string;
  msize: number;
  fids: FidSnapshot[];
  locks: LockSnapshot[];
  /** Frames received and not started, base64. */
  pending: string[];
  /** Bytes of an incomplete frame, base64. */
  partial: string;
  /** Replies not yet delivered, base64. */
  replies: string[];
}

/**
 * Saves a session. It must be detached and idle (`await session.detach()`
 * first): throws otherwise. The session stays usable: attach it again to
 * go on.
 */
export function serializeSession(session: Session): SessionSnapshot {
  if (session.attached || session.inflight > 0) throw new Error('detach the session before saving it (requests may be in flight)');
  if (session.closed) throw new Error('the session is closed');
  const fids: FidSnapshot[] = [];
  const exports = new Set<Fid['export_']>();
  for (const fid of session.fids.values()) {
    exports.add(fid.export_);
    const path = fid.stale === undefined ? fid.node.path() : null;
    const snap: FidSnapshot = { fid: fid.id, export: fid.export_.name, path: path === null ? null : path.map((n) => n.toString('base64')), uid: fid.uid };
    if (fid.handle !== undefined && fid.openFlags !== undefined) snap.open = { flags: fid.openFlags, dirOffset: fid.dirOffset.toString() };
    if (fid.xattr !== undefined || fid.auth !== undefined) snap.xattr = true;
    if (fid.readOnly) snap.readOnly = true;
    fids.push(snap);
  }
  const locks: LockSnapshot[] = [];
  for (const ex of exports) {
    for (const l of ex.locks.heldBy(`${session.id}\0`)) {
      locks.push({
        export: ex.name,
        file: l.file.toString(),
        owner: l.owner,
        type: l.type,
        start: l.start.toString(),
        end: l.end.toString(),
        procId: l.procId,
        clientId: l.clientId,
      });
    }
  }
  const held = session.takeUnstarted();
  // Put them straight back: saving does not consume the session.
  session.putUnstarted(session.msize, held.frames, held.partial, held.replies);
  return {
    format: 1,
    id: session.id,
    msize: session.msize,
    fids,
    locks,
    pending: held.frames.map((f) => f.toString('base64')),
    partial: held.partial.toString('base64'),
    replies: held.replies.map((r) => r.toString('base64')),
  };
}

/**
 * Rebuilds a saved session against `host`'s exports (in this process or a
 * new one). Returns it detached: attach it to the guest's new stream. Fids
 * that cannot be rebuilt are stale (ESTALE), never missing, so the guest's
 * clunks still succeed.
 */
export async function restoreSession(host: SessionHost, snapshot: SessionSnapshot, options: SessionOptions = {}): Promise<Session> {
  if (snapshot.format !== 1) throw new Error(`unknown session snapshot format ${String(snapshot.format)}`);
  const session = new Session(host, { ...options, maxFids: Math.max(options.maxFids ?? 65536, snapshot.fids.length) }, snapshot.id);
  for (const s of snapshot.fids) {
    let ex;
    try {
      ex = host.exportFor(s.export);
    } catch {
      continue;
    }
    const names = s.path?.map((n) => Buffer.from(n, 'base64')) ?? null;
    const node = names === null ? ex.tree.root : ex.tree.at(names);
    const fid = new Fid(s.fid, ex, node, s.uid, s.readOnly === true);
    session.fids.add(fid);
    if (names === null || s.xattr) {
      fid.stale = Errno.ESTALE;
      continue;
    }
    try {
      if (s.open !== undefined) {
        fid.handle = await ex.backend.open(names, s.open.flags);
        fid.openFlags = s.open.flags;
        fid.dirOffset = BigInt(s.open.dirOffset);
      } else await ex.backend.getattr(names);
    } catch {
      fid.stale = Errno.ESTALE;
    }
  }
  for (const l of snapshot.locks) {
    let ex;
    try {
      ex = host.exportFor(l.export);
    } catch {
      continue;
    }
    ex.locks.restore(BigInt(l.file), { owner: l.owner, type: l.type, start: BigInt(l.start), end: BigInt(l.end), procId: l.procId, clientId: l.clientId });
  }
  session.putUnstarted(
    snapshot.msize,
    snapshot.pending.map((f) => Buffer.from(f, 'base64')),
    Buffer.from(snapshot.partial, 'base64'),
    snapshot.replies.map((r) => Buffer.from(r, 'base64')),
  );
  return session;
}
