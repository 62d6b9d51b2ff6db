/**
 * The operation of each T-message (Tversion and Tflush are the session's
 * own). Messages the server does not serve get EOPNOTSUPP.
 */
import { Errno } from './constants.js';
import type { OpContext } from './context.js';
import { P9Error } from './errors.js';
import * as files from './ops-files.js';
import * as tree from './ops-tree.js';
import type { MessageOf, RMessage, TMessage } from './wire.js';

type Op<K extends TMessage['type']> = (ctx: OpContext, m: MessageOf<K>) => Promise<RMessage>;
type OpTable = { [K in TMessage['type']]?: Op<K> };

const OPS: OpTable = {
  Tauth: files.auth,
  Tattach: files.attach,
  Twalk: files.walk,
  Tlopen: files.lopen,
  Tlcreate: files.lcreate,
  Tread: files.readOp,
  Twrite: files.writeOp,
  Tclunk: files.clunk,
  Tremove: files.remove,
  Treaddir: files.readdir,
  Tfsync: files.fsyncOp,
  Tgetattr: files.getattr,
  Tsetattr: files.setattr,
  Tstatfs: files.statfs,
  Tmkdir: tree.mkdir,
  Tmknod: tree.mknod,
  Tsymlink: tree.symlink,
  Tlink: tree.link,
  Trename: tree.rename,
  Trenameat: tree.renameat,
  Tunlinkat: tree.unlinkat,
  Treadlink: tree.readlink,
  Txattrwalk: tree.xattrwalk,
  Txattrcreate: tree.xattrcreate,
  Tlock: tree.lock,
  Tgetlock: tree.getlock,
};

/** Runs the operation of `m`. Rejects with P9Error (or a host error) for Rlerror. */
export function runOp(ctx: OpContext, m: TMessage): Promise<RMessage> {
  const op = OPS[m.type] as Op<TMessage['type']> | undefined;
  if (op === undefined) return Promise.reject(new P9Error(Errno.EOPNOTSUPP, `${m.type} is not supported`));
  return op(ctx, m as never);
}
