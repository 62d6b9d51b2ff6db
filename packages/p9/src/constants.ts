/**
 * The numbers of 9P2000.L: message types, qid types, the flag and mask bits
 * the Linux client (fs/9p, net/9p in Linux 6.1) puts on the wire, and the
 * limits this server applies. Values are the protocol's (include/net/9p/9p.h);
 * the names are ours.
 */

/** Message types. T-messages are even, their R-message is the next number. */
export const MsgType = {
  Tlerror: 6,
  Rlerror: 7,
  Tstatfs: 8,
  Rstatfs: 9,
  Tlopen: 12,
  Rlopen: 13,
  Tlcreate: 14,
  Rlcreate: 15,
  Tsymlink: 16,
  Rsymlink: 17,
  Tmknod: 18,
  Rmknod: 19,
  Trename: 20,
  Rrename: 21,
  Treadlink: 22,
  Rreadlink: 23,
  Tgetattr: 24,
  Rgetattr: 25,
  Tsetattr: 26,
  Rsetattr: 27,
  Txattrwalk: 30,
  Rxattrwalk: 31,
  Txattrcreate: 32,
  Rxattrcreate: 33,
  Treaddir: 40,
  Rreaddir: 41,
  Tfsync: 50,
  Rfsync: 51,
  Tlock: 52,
  Rlock: 53,
  Tgetlock: 54,
  Rgetlock: 55,
  Tlink: 70,
  Rlink: 71,
  Tmkdir: 72,
  Rmkdir: 73,
  Trenameat: 74,
  Rrenameat: 75,
  Tunlinkat: 76,
  Runlinkat: 77,
  Tversion: 100,
  Rversion: 101,
  Tauth: 102,
  Rauth: 103,
  Tattach: 104,
  Rattach: 105,
  Tflush: 108,
  Rflush: 109,
  Twalk: 110,
  Rwalk: 111,
  Tread: 116,
  Rread: 117,
  Twrite: 118,
  Rwrite: 119,
  Tclunk: 120,
  Rclunk: 121,
  Tremove: 122,
  Rremove: 123,
} as const;

/** The protocol version this server speaks. */
export const VERSION_9P2000_L = '9P2000.L';
/** The tag of Tversion (and of nothing else). */
export const NOTAG = 0xffff;
/** "No fid" (Tattach's afid when there is no authentication). */
export const NOFID = 0xffffffff;
/** The most names one Twalk may carry (P9_MAXWELEM). */
export const MAX_WALK_ELEMENTS = 16;
/** size[4] type[1] tag[2]. */
export const HEADER_SIZE = 7;
/** Bytes of an Rread/Rreaddir around its data: header + count[4]. */
export const IO_HEADER_SIZE = 11;
/** The largest msize this server agrees to (a client asking more gets this). */
export const MAX_MSIZE = 1 << 20;
/** The smallest msize this server agrees to: below it an Rgetattr or a name might not fit. */
export const MIN_MSIZE = 4096;
/** The largest frame accepted before Tversion has set msize. */
export const PRE_VERSION_MAX_FRAME = 8192;
/** Longest name of one path component (NAME_MAX). */
export const MAX_NAME = 255;
/** Longest symlink target (PATH_MAX - 1). */
export const MAX_SYMLINK = 4095;
/** Largest extended attribute value (XATTR_SIZE_MAX) and name list. */
export const MAX_XATTR_SIZE = 65536;
/** Longest extended attribute name (XATTR_NAME_MAX). */
export const MAX_XATTR_NAME = 255;

/** Qid types (the high bits of a mode in 9P2000). */
export const QidType = {
  DIR: 0x80,
  APPEND: 0x40,
  EXCL: 0x20,
  MOUNT: 0x10,
  AUTH: 0x08,
  TMP: 0x04,
  SYMLINK: 0x02,
  LINK: 0x01,
  FILE: 0x00,
} as const;

/** Tgetattr request_mask / Rgetattr valid bits. */
export const GetattrMask = {
  MODE: 0x1,
  NLINK: 0x2,
  UID: 0x4,
  GID: 0x8,
  RDEV: 0x10,
  ATIME: 0x20,
  MTIME: 0x40,
  CTIME: 0x80,
  INO: 0x100,
  SIZE: 0x200,
  BLOCKS: 0x400,
  BTIME: 0x800,
  GEN: 0x1000,
  DATA_VERSION: 0x2000,
  BASIC: 0x7ff,
  ALL: 0x3fff,
} as const;

/** Tsetattr valid bits. */
export const SetattrMask = {
  MODE: 0x1,
  UID: 0x2,
  GID: 0x4,
  SIZE: 0x8,
  ATIME: 0x10,
  MTIME: 0x20,
  CTIME: 0x40,
  ATIME_SET: 0x80,
  MTIME_SET: 0x100,
} as const;

/** Tlopen/Tlcreate flags: Linux's open(2) flags as the client sends them (the x86/generic values). */
export const OpenFlag = {
  RDONLY: 0o0,
  WRONLY: 0o1,
  RDWR: 0o2,
  NOACCESS: 0o3,
  ACCMODE: 0o3,
  CREATE: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DSYNC: 0o10000,
  FASYNC: 0o20000,
  DIRECT: 0o40000,
  LARGEFILE: 0o100000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
  NOATIME: 0o1000000,
  CLOEXEC: 0o2000000,
  SYNC: 0o4000000,
} as const;

/** Tlock/Tgetlock types. */
export const LockType = { RDLCK: 0, WRLCK: 1, UNLCK: 2 } as const;
/** Rlock status. */
export const LockStatus = { SUCCESS: 0, BLOCKED: 1, ERROR: 2, GRACE: 3 } as const;
/** Tlock flags. */
export const LockFlag = { BLOCK: 1, RECLAIM: 2 } as const;

/** Tunlinkat flags. */
export const AT_REMOVEDIR = 0x200;
/** Txattrcreate flags (setxattr(2)). */
export const XattrFlag = { CREATE: 1, REPLACE: 2 } as const;

/** File type bits of a mode (S_IFMT and its values). */
export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

/** Directory entry types (d_type) in Rreaddir. */
export const DirentType = { UNKNOWN: 0, FIFO: 1, CHR: 2, DIR: 4, BLK: 6, REG: 8, LNK: 10, SOCK: 12 } as const;

/** Linux errno values sent in Rlerror (the guest is Linux; so is the host this runs on). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EPROTO: 71,
  EOVERFLOW: 75,
  EBADMSG: 74,
  EOPNOTSUPP: 95,
  EDQUOT: 122,
  ESTALE: 116,
} as const;
