/*
 * tar.c: the agent's `archive` and `extract` operations (docs/PROTOCOL.md,
 * "Calls"). Both run in the forked, chrooted child of a CALL with the
 * requested user's ids, never in PID 1. Data is streamed in 64 KiB chunks;
 * nothing is held whole in memory.
 *
 * archive (tar_archive): a POSIX pax stream. Every entry gets a ustar header;
 * a pax 'x' header precedes it only when a field does not fit: a name that
 * does not fit name[100] (or prefix[155] + '/' + name[100]), a link target
 * over 100 bytes, a size >= 8 GiB, a uid/gid >= 8^7, an mtime before 1970 or
 * >= 8^11 s. Names are raw bytes (no hdrcharset). uname/gname are left empty
 * (extractors then use the numeric ids). Choices:
 *  - Entries are named basename(path) and basename(path)/rel. When the last
 *    component of `path` is "." or "..", the name of the directory it
 *    denotes is used (realpath), and when that is "/" (or `path` is "/") the
 *    top name is "." (entries "./", "./bin", ...), as `tar -C / -c .` does.
 *  - The walk never follows a symlink (fstatat AT_SYMLINK_NOFOLLOW, openat
 *    O_NOFOLLOW), also for `path` itself; a trailing slash on `path` follows
 *    it, as for every system call. Directories come before their contents,
 *    and a directory's entries are sorted by name (bytewise), so the output
 *    of an unchanged tree is reproducible.
 *  - Hard links: a non-directory with st_nlink > 1 whose (st_dev, st_ino) was
 *    already stored becomes a type '1' entry naming the first one.
 *  - A regular file's size is taken from fstat of the opened file; if it
 *    shrinks while being read the rest is zeros, if it grows it is cut at
 *    that size, so the stream stays valid.
 *  - FIFOs and devices are stored as such; sockets (and unknown types) are
 *    skipped. An entry that vanished or changed type between readdir and
 *    open is skipped, as GNU tar does ("file removed before we read it").
 *  - Any other failure, EACCES on a subdirectory or file included, fails the
 *    whole call: the error record names the path (as the host named `path`,
 *    joined with the entry's relative name) and the host reports the error
 *    (an archive silently missing files would be worse than none). The bytes
 *    already written are then not a complete archive.
 *  - Deep trees hold one directory fd per level, so a tree deeper than the
 *    fd limit allows fails with EMFILE.
 *  - The stream ends with two zero blocks (no padding to a 10 KiB record).
 *  - With `xattrs` (an image builder's layer), the extended attributes of
 *    directories and regular files are stored as pax SCHILY.xattr.<name>
 *    records, names sorted; overlayfs' own (trusted.overlay.*) included,
 *    for the host to turn into OCI's opaque-directory markers.
 *
 * Cancellation (both): fop_cancelled is checked per entry and per 64 KiB
 * chunk. The pipe to or from the host (out_fd, in_fd) is switched to
 * O_NONBLOCK for the call and waited for with ppoll, with SIGTERM unblocked
 * only inside ppoll, so a SIGTERM never leaves the call blocked on a host
 * that stopped reading or sending. The error is then ECANCELED.
 *
 * extract (tar_extract): reads ustar (POSIX and old GNU magic) and v7
 * headers, pax 'x' (path, linkpath, size, uid, gid, mtime; other keys are
 * ignored, an empty value cancels the key), pax 'g' (skipped), GNU 'L'/'K'.
 * Header checksums are verified (unsigned and signed sums accepted);
 * numeric fields may be octal or base-256. Choices:
 *  - Names: leading "/" and every "." or empty component are dropped; an
 *    entry with a ".." component fails with EINVAL naming it. A name that is
 *    empty after this ("./") is skipped for a directory (the target keeps
 *    its own attributes) and EINVAL otherwise.
 *  - Nothing is ever created outside `dir`: the parent of every entry is
 *    opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) relative to
 *    `dir`, so a symlink (from the archive or already there) that stays below
 *    `dir` is followed and one that leads out (absolute, or through "..")
 *    fails with EXDEV. Without openat2 (ENOSYS) parents are walked one
 *    component at a time with O_NOFOLLOW, so any symlink in a parent fails
 *    (ENOTDIR). The final component is never followed. Missing parents are
 *    created (mode 0755).
 *  - Types '0', '\0', '7' (and '0'/'\0' named with a trailing '/', old
 *    directories) are files; '1' hard link, '2' symlink, '5' (and GNU 'D')
 *    directory, '6' FIFO, '3'/'4' devices (as root only; otherwise skipped);
 *    GNU sparse files (pax GNU.sparse.* or type 'S') fail with EOPNOTSUPP;
 *    other types are skipped with their data. Entries of types 1-6 carry no
 *    data, whatever their size field says (as Go's archive/tar reads them).
 *  - An existing non-directory at an entry's name is unlinked first (files
 *    are always created fresh with O_EXCL|O_NOFOLLOW, never written through
 *    an existing file or link); an existing directory stays for a directory
 *    entry, is removed if empty for other entries, and is EISDIR otherwise.
 *    For a directory entry, an existing symlink that resolves below `dir` to
 *    a directory also stays (like GNU tar --keep-directory-symlink, so a
 *    merged-/usr "bin -> usr/bin" survives); any other symlink is replaced.
 *  - A hard link's target is resolved below `dir` with the same name rules
 *    (it may be any existing entry there, as with GNU tar); the link itself
 *    is made with linkat without following, and its attributes are not
 *    changed.
 *  - Modes are applied exactly (the umask does not apply); as non-root the
 *    setuid and setgid bits are dropped (sticky is kept). As root, owners
 *    are restored from the numeric uid/gid (chown before chmod, so setuid
 *    survives); user and group names are not looked up. mtimes are restored
 *    (nanoseconds from pax); atimes are left alone.
 *  - Directories are created 0700 and get their mode, owner and mtime after
 *    their contents (deepest first), so a read-only directory does not block
 *    its children; as non-root, an existing directory of the user's that is
 *    named by a directory entry is made u+rwx until then too. The list of
 *    such directories is bounded: past 1024 entries, those that are not
 *    ancestors of the current entry are applied early (so an archive that
 *    comes back to such a directory later changes its mtime, and as non-root
 *    cannot write into it if it is read-only). For an existing directory the
 *    user does not own, EPERM from chmod or utimensat is ignored (it is left
 *    as it is).
 *  - Devices, FIFOs and symlinks get owner and mtime by name with
 *    AT_SYMLINK_NOFOLLOW; files and directories through their fds.
 *  - On failure (or cancellation) the entry in progress is removed, the
 *    entries completed stay, and the pending directory attributes are
 *    applied. Bytes after the end-of-archive blocks are read and discarded
 *    (so the writer does not get EPIPE). A stream that ends cleanly at a
 *    header boundary without end blocks is accepted; one that ends inside
 *    an entry (its header, extended headers or data) is EIO.
 */
#include "fileops.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define BLK            512
#define IOBUF          (64 * 1024)
#define PAX_MAX        (1024 * 1024) /* largest 'x' header accepted */
#define LONGNAME_MAX   65536         /* largest 'L'/'K' data accepted */
#define DEFER_SOFT_MAX 1024          /* pending directory attributes, see above */

/* <linux/openat2.h> */
struct tar_open_how {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};
#define TAR_RESOLVE_NO_MAGICLINKS 0x02
#define TAR_RESOLVE_BENEATH       0x08
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

#ifdef ROOST_TAR_TEST
/* Tests set this to exercise the component-by-component fallback. */
static bool tar_test_no_openat2;
#endif

/* ustar header field offsets and widths. */
#define H_NAME     0
#define H_MODE     100
#define H_UID      108
#define H_GID      116
#define H_SIZE     124
#define H_MTIME    136
#define H_CHKSUM   148
#define H_TYPE     156
#define H_LINK     157
#define H_MAGIC    257
#define H_VERSION  263
#define H_UNAME    265
#define H_GNAME    297
#define H_DEVMAJOR 329
#define H_DEVMINOR 337
#define H_PREFIX   345

static const unsigned char zero_block[BLK];

static int fail_cancelled(struct fop_err *err, const char *path)
{
	return fop_fail(err, ECANCELED, path, "cancelled");
}

/*
 * Waits until fd is ready for ev or SIGTERM came. SIGTERM is blocked from
 * the check of fop_cancelled until ppoll unblocks it atomically, so a
 * SIGTERM arriving just before the wait is not lost. 0 (ready, or
 * interrupted by another signal), or -1 with errno (ECANCELED).
 */
static int wait_ready(int fd, short ev)
{
	sigset_t term, old;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &term, &old) < 0)
		return -1;
	int rc = 0, e = 0;
	if (fop_cancelled) {
		rc = -1;
		e = ECANCELED;
	} else {
		sigset_t during = old;
		sigdelset(&during, SIGTERM);
		struct pollfd pfd = {.fd = fd, .events = ev};
		if (ppoll(&pfd, 1, NULL, &during) < 0 && errno != EINTR) {
			rc = -1;
			e = errno;
		} else if (fop_cancelled) {
			rc = -1;
			e = ECANCELED;
		}
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return rc;
}

/*
 * The archive's output and the extract's input are pipes to the agent that
 * may stall when the host stops reading or sending; they are switched to
 * O_NONBLOCK (and back at the end) so that waiting happens in wait_ready,
 * where SIGTERM reliably ends it. Returns the old flags, or -1.
 */
static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	return fl;
}

static void restore_flags(int fd, int fl)
{
	if (fl >= 0 && !(fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl);
}

/* Writes all of buf, retrying short writes and EINTR, waiting on EAGAIN.
 * 0, or -1 with errno (ECANCELED when cancelled). */
static int write_full(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	while (len > 0) {
		if (fop_cancelled) {
			errno = ECANCELED;
			return -1;
		}
		ssize_t w = write(fd, p, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN && wait_ready(fd, POLLOUT) == 0)
				continue;
			return -1;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Joins a (host) path and a relative name for error records. */
static void join_path(char *out, size_t size, const char *base, const char *rel)
{
	size_t bl = strlen(base);
	if (rel == NULL || rel[0] == '\0')
		snprintf(out, size, "%s", base);
	else if (bl > 0 && base[bl - 1] == '/')
		snprintf(out, size, "%s%s", base, rel);
	else
		snprintf(out, size, "%s/%s", base, rel);
}

/* ================================================================== */
/* archive                                                             */
/* ================================================================== */

struct link_slot {
	dev_t dev;
	ino_t ino;
	char *name; /* NULL: free slot */
};

struct tw {
	int fd;
	unsigned char *buf; /* IOBUF */
	size_t len;
	struct fop_err *err;
	const char *hostpath; /* `path`, trailing slashes trimmed */
	char *name;           /* current archive name */
	size_t namelen, namecap;
	size_t toplen; /* length of the top name */
	struct link_slot *links;
	size_t nlinks, linkcap; /* linkcap: 0 or a power of two */
	char *pax;
	size_t paxlen, paxcap;
	bool xattrs; /* store extended attributes (SCHILY.xattr.*) */
	int xfd;     /* the open directory or file of the entry emitted next, or -1 */
};

/* Fails naming the current entry as the host would. */
static int tw_fail(struct tw *t, int errnum, const char *what)
{
	char p[PATH_MAX];
	const char *rel = t->name + t->toplen;
	while (*rel == '/')
		rel++;
	join_path(p, sizeof p, t->hostpath, rel);
	if (errnum == ECANCELED)
		return fail_cancelled(t->err, p);
	return fop_fail(t->err, errnum, p, what);
}

static int tw_flush(struct tw *t)
{
	if (t->len > 0 && write_full(t->fd, t->buf, t->len) < 0)
		return tw_fail(t, errno, "writing the archive");
	t->len = 0;
	return 0;
}

static int tw_put(struct tw *t, const void *data, size_t n)
{
	const unsigned char *p = data;
	while (n > 0) {
		if (t->len == IOBUF && tw_flush(t) < 0)
			return -1;
		size_t k = IOBUF - t->len;
		if (k > n)
			k = n;
		memcpy(t->buf + t->len, p, k);
		t->len += k;
		p += k;
		n -= k;
	}
	return 0;
}

static int tw_zeros(struct tw *t, uint64_t n)
{
	while (n > 0) {
		size_t k = n > BLK ? BLK : (size_t)n;
		if (tw_put(t, zero_block, k) < 0)
			return -1;
		n -= k;
	}
	return 0;
}

static int tw_pad(struct tw *t, uint64_t size)
{
	return tw_zeros(t, (BLK - size % BLK) % BLK);
}

/* Sets the name buffer to name[0..len). */
static int tw_name_set(struct tw *t, const char *s, size_t len)
{
	if (len + 1 > t->namecap) {
		size_t cap = t->namecap ? t->namecap : 256;
		while (cap < len + 1)
			cap *= 2;
		char *n = realloc(t->name, cap);
		if (n == NULL)
			return tw_fail(t, ENOMEM, "allocating a name");
		t->name = n;
		t->namecap = cap;
	}
	memmove(t->name, s, len);
	t->name[len] = '\0';
	t->namelen = len;
	return 0;
}

/* Appends "/" + child to the name buffer. */
static int tw_name_push(struct tw *t, const char *child)
{
	size_t cl = strlen(child), need = t->namelen + 1 + cl + 1;
	if (need > t->namecap) {
		size_t cap = t->namecap ? t->namecap : 256;
		while (cap < need)
			cap *= 2;
		char *n = realloc(t->name, cap);
		if (n == NULL)
			return tw_fail(t, ENOMEM, "allocating a name");
		t->name = n;
		t->namecap = cap;
	}
	t->name[t->namelen++] = '/';
	memcpy(t->name + t->namelen, child, cl + 1);
	t->namelen += cl;
	return 0;
}

/* ---- hard link table: (dev, ino) -> first archive name ---- */

static size_t link_hash(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ull ^ (uint64_t)dev * 0xc2b2ae3d27d4eb4full;
	return (size_t)(h ^ (h >> 29));
}

static const char *link_find(struct tw *t, dev_t dev, ino_t ino)
{
	if (t->linkcap == 0)
		return NULL;
	for (size_t i = link_hash(dev, ino) & (t->linkcap - 1);; i = (i + 1) & (t->linkcap - 1)) {
		struct link_slot *s = &t->links[i];
		if (s->name == NULL)
			return NULL;
		if (s->dev == dev && s->ino == ino)
			return s->name;
	}
}

static int link_add(struct tw *t, dev_t dev, ino_t ino, const char *name)
{
	if ((t->nlinks + 1) * 2 > t->linkcap) {
		size_t cap = t->linkcap ? t->linkcap * 2 : 64;
		struct link_slot *n = calloc(cap, sizeof *n);
		if (n == NULL)
			return tw_fail(t, ENOMEM, "remembering a hard link");
		for (size_t j = 0; j < t->linkcap; j++) {
			struct link_slot *s = &t->links[j];
			if (s->name == NULL)
				continue;
			size_t i = link_hash(s->dev, s->ino) & (cap - 1);
			while (n[i].name != NULL)
				i = (i + 1) & (cap - 1);
			n[i] = *s;
		}
		free(t->links);
		t->links = n;
		t->linkcap = cap;
	}
	char *copy = strdup(name);
	if (copy == NULL)
		return tw_fail(t, ENOMEM, "remembering a hard link");
	size_t i = link_hash(dev, ino) & (t->linkcap - 1);
	while (t->links[i].name != NULL)
		i = (i + 1) & (t->linkcap - 1);
	t->links[i] = (struct link_slot){.dev = dev, .ino = ino, .name = copy};
	t->nlinks++;
	return 0;
}

/* ---- headers ---- */

/* Writes v as width-1 octal digits and a NUL. False if it does not fit. */
static bool put_octal(unsigned char *f, size_t width, uint64_t v)
{
	if (width - 1 < 22 && v >> (3 * (width - 1)) != 0)
		return false;
	f[width - 1] = '\0';
	for (size_t i = width - 1; i-- > 0;) {
		f[i] = (unsigned char)('0' + (v & 7));
		v >>= 3;
	}
	return true;
}

static int pax_add(struct tw *t, const char *key, const char *val, size_t vlen)
{
	size_t base = strlen(key) + vlen + 3; /* ' ', '=', '\n' */
	size_t digits = 1;
	for (;;) {
		size_t total = base + digits, d = 1;
		for (size_t x = total; x >= 10; x /= 10)
			d++;
		if (d == digits)
			break;
		digits = d;
	}
	size_t total = base + digits;
	if (t->paxlen + total + 1 > t->paxcap) {
		size_t cap = t->paxcap ? t->paxcap : 1024;
		while (cap < t->paxlen + total + 1)
			cap *= 2;
		char *n = realloc(t->pax, cap);
		if (n == NULL)
			return tw_fail(t, ENOMEM, "building a pax header");
		t->pax = n;
		t->paxcap = cap;
	}
	char *p = t->pax + t->paxlen;
	int k = snprintf(p, t->paxcap - t->paxlen, "%zu %s=", total, key);
	if (k < 0)
		return tw_fail(t, EINVAL, "building a pax header");
	memcpy(p + k, val, vlen);
	p[(size_t)k + vlen] = '\n';
	t->paxlen += total;
	return 0;
}

static int pax_add_num(struct tw *t, const char *key, long long v, bool is_signed)
{
	char s[32];
	int k = is_signed ? snprintf(s, sizeof s, "%lld", v)
			  : snprintf(s, sizeof s, "%llu", (unsigned long long)v);
	return pax_add(t, key, s, (size_t)k);
}

#ifndef XATTR_SIZE_MAX
#define XATTR_SIZE_MAX 65536
#endif
#ifndef XATTR_NAME_MAX
#define XATTR_NAME_MAX 255
#endif

static int cmp_strs(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Adds the extended attributes of the open fd as pax SCHILY.xattr.<name>
 * records, names sorted (the order listxattr gives depends on the
 * filesystem), as GNU tar and Docker write them. */
static int pax_xattrs(struct tw *t, int fd)
{
	ssize_t len = flistxattr(fd, NULL, 0);
	if (len <= 0)
		return len == 0 || errno == ENOTSUP ? 0 : tw_fail(t, errno, "listing attributes");
	char *names = malloc((size_t)len);
	const char **v = NULL;
	char *val = NULL;
	int rc = -1;
	if (names == NULL || (len = flistxattr(fd, names, (size_t)len)) < 0) {
		rc = tw_fail(t, names == NULL ? ENOMEM : errno, "listing attributes");
		goto out;
	}
	size_t n = 0;
	for (ssize_t i = 0; i < len; i += (ssize_t)strlen(names + i) + 1)
		n++;
	v = calloc(n ? n : 1, sizeof *v);
	val = malloc(XATTR_SIZE_MAX);
	if (v == NULL || val == NULL) {
		rc = tw_fail(t, ENOMEM, "reading attributes");
		goto out;
	}
	n = 0;
	for (ssize_t i = 0; i < len; i += (ssize_t)strlen(names + i) + 1)
		v[n++] = names + i;
	qsort(v, n, sizeof *v, cmp_strs);
	for (size_t i = 0; i < n; i++) {
		ssize_t vl = fgetxattr(fd, v[i], val, XATTR_SIZE_MAX);
		if (vl < 0) {
			if (errno == ENODATA)
				continue; /* removed meanwhile */
			rc = tw_fail(t, errno, "reading attributes");
			goto out;
		}
		char key[XATTR_NAME_MAX + 32];
		snprintf(key, sizeof key, "SCHILY.xattr.%s", v[i]);
		if (pax_add(t, key, val, (size_t)vl) < 0)
			goto out;
	}
	rc = 0;
out:
	free(val);
	free(v);
	free(names);
	return rc;
}

static void set_checksum(unsigned char *h)
{
	memset(h + H_CHKSUM, ' ', 8);
	unsigned sum = 0;
	for (size_t i = 0; i < BLK; i++)
		sum += h[i];
	snprintf((char *)h + H_CHKSUM, 8, "%06o", sum & 0777777u);
	h[H_CHKSUM + 7] = ' ';
}

struct hdr_info {
	const char *name;
	size_t namelen;
	const char *link; /* NULL: none */
	size_t linklen;
	char type;
	unsigned mode;
	uint64_t uid, gid;
	uint64_t size;
	int64_t mtime;
	unsigned devmaj, devmin;
};

static void fill_ustar(unsigned char *h, const struct hdr_info *hi, bool *need_pax_mtime)
{
	memset(h, 0, BLK);
	put_octal(h + H_MODE, 8, hi->mode & 07777u);
	bool mt_ok = hi->mtime >= 0 && put_octal(h + H_MTIME, 12, (uint64_t)hi->mtime);
	if (!mt_ok)
		put_octal(h + H_MTIME, 12, 0);
	if (need_pax_mtime)
		*need_pax_mtime = !mt_ok;
	h[H_TYPE] = (unsigned char)hi->type;
	memcpy(h + H_MAGIC, "ustar", 6);
	memcpy(h + H_VERSION, "00", 2);
	put_octal(h + H_DEVMAJOR, 8, hi->devmaj);
	put_octal(h + H_DEVMINOR, 8, hi->devmin);
}

/* Emits the (pax +) ustar header of one entry. */
static int emit_header(struct tw *t, const struct hdr_info *hi)
{
	unsigned char h[BLK];
	bool pax_mtime;
	fill_ustar(h, hi, &pax_mtime);
	t->paxlen = 0;
	int xfd = t->xfd;
	t->xfd = -1;
	if (t->xattrs && xfd >= 0 && hi->type != '1' && pax_xattrs(t, xfd) < 0)
		return -1;

	/* name, or prefix + '/' + name, or pax path */
	if (hi->namelen <= 100) {
		memcpy(h + H_NAME, hi->name, hi->namelen);
	} else {
		size_t split = 0;
		size_t lo = hi->namelen - 101; /* suffix after split must be <= 100 */
		for (size_t i = lo; i <= 155 && i + 1 < hi->namelen; i++) {
			if (hi->name[i] == '/' && i > 0) {
				split = i;
				break;
			}
		}
		if (split > 0) {
			memcpy(h + H_PREFIX, hi->name, split);
			memcpy(h + H_NAME, hi->name + split + 1, hi->namelen - split - 1);
		} else {
			memcpy(h + H_NAME, hi->name, 100);
			if (pax_add(t, "path", hi->name, hi->namelen) < 0)
				return -1;
		}
	}
	if (hi->link != NULL) {
		if (hi->linklen <= 100) {
			memcpy(h + H_LINK, hi->link, hi->linklen);
		} else {
			memcpy(h + H_LINK, hi->link, 100);
			if (pax_add(t, "linkpath", hi->link, hi->linklen) < 0)
				return -1;
		}
	}
	if (!put_octal(h + H_SIZE, 12, hi->size)) {
		put_octal(h + H_SIZE, 12, 0);
		if (pax_add_num(t, "size", (long long)hi->size, false) < 0)
			return -1;
	}
	if (!put_octal(h + H_UID, 8, hi->uid)) {
		put_octal(h + H_UID, 8, 0);
		if (pax_add_num(t, "uid", (long long)hi->uid, false) < 0)
			return -1;
	}
	if (!put_octal(h + H_GID, 8, hi->gid)) {
		put_octal(h + H_GID, 8, 0);
		if (pax_add_num(t, "gid", (long long)hi->gid, false) < 0)
			return -1;
	}
	if (pax_mtime && pax_add_num(t, "mtime", (long long)hi->mtime, true) < 0)
		return -1;

	if (t->paxlen > 0) {
		unsigned char x[BLK];
		struct hdr_info xi = {.type = 'x',
				      .mode = 0644,
				      .size = t->paxlen,
				      .mtime = hi->mtime < 0 ? 0 : hi->mtime};
		fill_ustar(x, &xi, NULL);
		memcpy(x + H_NAME, "././@PaxHeader", 14);
		put_octal(x + H_UID, 8, 0);
		put_octal(x + H_GID, 8, 0);
		put_octal(x + H_SIZE, 12, t->paxlen);
		set_checksum(x);
		if (tw_put(t, x, BLK) < 0 || tw_put(t, t->pax, t->paxlen) < 0 ||
		    tw_pad(t, t->paxlen) < 0)
			return -1;
	}
	set_checksum(h);
	return tw_put(t, h, BLK);
}

static void info_from_stat(struct hdr_info *hi, const struct stat *st, const struct tw *t)
{
	*hi = (struct hdr_info){.name = t->name,
				.namelen = t->namelen,
				.mode = (unsigned)(st->st_mode & 07777),
				.uid = st->st_uid,
				.gid = st->st_gid,
				.mtime = (int64_t)st->st_mtim.tv_sec};
}

/* Streams exactly `size` bytes of fd (zeros if it shrinks, cut if it grows). */
static int stream_file(struct tw *t, int fd, uint64_t size)
{
	uint64_t left = size;
	while (left > 0) {
		if (fop_cancelled)
			return tw_fail(t, ECANCELED, NULL);
		if (t->len == IOBUF && tw_flush(t) < 0)
			return -1;
		size_t room = IOBUF - t->len;
		if (room > left)
			room = (size_t)left;
		ssize_t r = read(fd, t->buf + t->len, room);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return tw_fail(t, errno, "reading");
		}
		if (r == 0) /* shrunk: pad with zeros */
			return tw_zeros(t, left) < 0 ? -1 : tw_pad(t, size);
		t->len += (size_t)r;
		left -= (uint64_t)r;
	}
	return tw_pad(t, size);
}

/* A regular file that reports size 0 may still have contents: procfs and
 * sysfs files make theirs when read. A header needs the size first, so such
 * a file is read whole (up to UNSIZED_MAX) and stored at the size read. One
 * with more than that fails the archive when it is what was asked for, and
 * is stored empty inside a directory (as GNU tar stores it). A file that
 * would block (a FIFO cannot get here; /proc/kmsg can) ends where it would. */
#define UNSIZED_MAX (1u << 20)

static int arch_unsized(struct tw *t, int fd, struct hdr_info *hi, bool top)
{
	char *buf = malloc(UNSIZED_MAX + 1);
	if (buf == NULL)
		return tw_fail(t, ENOMEM, "reading");
	size_t n = 0;
	while (n <= UNSIZED_MAX) {
		if (fop_cancelled) {
			free(buf);
			return tw_fail(t, ECANCELED, NULL);
		}
		ssize_t r = read(fd, buf + n, UNSIZED_MAX + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno != EAGAIN) {
			/* Some of these cannot be read at all (EIO, EINVAL): as empty, unless asked for. */
			if (top) {
				int e = errno;
				free(buf);
				return tw_fail(t, e, "reading");
			}
			n = 0;
			break;
		}
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	if (n > UNSIZED_MAX) {
		free(buf);
		if (top)
			return tw_fail(
				t, EFBIG,
				"reading a file that reports size 0 but has more than 1 MiB");
		n = 0;
		buf = NULL;
	}
	hi->size = n;
	int rc = emit_header(t, hi);
	if (rc == 0 && n > 0)
		rc = tw_put(t, buf, n);
	if (rc == 0)
		rc = tw_pad(t, n);
	free(buf);
	return rc;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int arch_entry(struct tw *t, int dirfd, const char *nm, bool top);

/* The directory at dfd (already stat'ed as st): its header, then its entries. */
static int arch_dir(struct tw *t, int dfd, const struct stat *st)
{
	struct hdr_info hi;
	/* The header's name ends with '/'. */
	size_t saved = t->namelen;
	if (tw_name_push(t, "") < 0)
		return -1;
	info_from_stat(&hi, st, t);
	hi.type = '5';
	t->xfd = dfd;
	int rc = emit_header(t, &hi);
	t->namelen = saved;
	t->name[saved] = '\0';
	if (rc < 0)
		return -1;

	int dup_fd = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
	if (dup_fd < 0)
		return tw_fail(t, errno, "reading directory");
	DIR *d = fdopendir(dup_fd);
	if (d == NULL) {
		int e = errno;
		close(dup_fd);
		return tw_fail(t, e, "reading directory");
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	int e = 0;
	for (;;) {
		if (fop_cancelled) {
			e = ECANCELED;
			break;
		}
		errno = 0;
		struct dirent *de = readdir(d);
		if (de == NULL) {
			e = errno;
			break;
		}
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 32;
			char **nn = realloc(names, nc * sizeof *nn);
			if (nn == NULL) {
				e = ENOMEM;
				break;
			}
			names = nn;
			cap = nc;
		}
		if ((names[n] = strdup(de->d_name)) == NULL) {
			e = ENOMEM;
			break;
		}
		n++;
	}
	closedir(d);
	rc = 0;
	if (e != 0)
		rc = tw_fail(t, e, "reading directory");
	else if (n > 1)
		qsort(names, n, sizeof *names, cmp_names);
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (fop_cancelled) {
			rc = tw_fail(t, ECANCELED, NULL);
			break;
		}
		if (tw_name_push(t, names[i]) < 0) {
			rc = -1;
			break;
		}
		rc = arch_entry(t, dfd, names[i], false);
		t->namelen = saved;
		t->name[saved] = '\0';
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

/* Reads the target of the symlink nm into a malloc'd string. */
static char *read_link(int dirfd, const char *nm, size_t hint, size_t *len)
{
	size_t cap = hint < 256 ? 256 : hint > PATH_MAX ? PATH_MAX : hint + 1;
	for (;;) {
		char *b = malloc(cap);
		if (b == NULL)
			return NULL;
		ssize_t r = readlinkat(dirfd, nm, b, cap);
		if (r < 0) {
			int e = errno;
			free(b);
			errno = e;
			return NULL;
		}
		if ((size_t)r < cap) {
			b[r] = '\0';
			*len = (size_t)r;
			return b;
		}
		free(b);
		if (cap > (1u << 20)) {
			errno = ENAMETOOLONG;
			return NULL;
		}
		cap *= 2;
	}
}

/*
 * One entry: nm relative to dirfd (the host's `path` with AT_FDCWD for the
 * top). t->name holds its archive name. A vanished or changed entry below
 * the top is skipped (0).
 */
static int arch_entry(struct tw *t, int dirfd, const char *nm, bool top)
{
	struct stat st;
	if (fstatat(dirfd, nm, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT && !top)
			return 0;
		return tw_fail(t, errno, "stat");
	}
	struct hdr_info hi;
	info_from_stat(&hi, &st, t);

	if (S_ISDIR(st.st_mode)) {
		int fd = openat(dirfd, nm, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			if (!top && (errno == ENOENT || errno == ENOTDIR || errno == ELOOP))
				return 0;
			return tw_fail(t, errno, "opening directory");
		}
		struct stat fst;
		if (fstat(fd, &fst) < 0) {
			int e = errno;
			close(fd);
			return tw_fail(t, e, "stat");
		}
		if (fst.st_dev != st.st_dev || fst.st_ino != st.st_ino) {
			close(fd);
			return top ? tw_fail(t, EAGAIN, "changed while being archived") : 0;
		}
		int rc = arch_dir(t, fd, &fst);
		close(fd);
		return rc;
	}
	if (S_ISSOCK(st.st_mode))
		return 0;
	if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode) && !S_ISFIFO(st.st_mode) &&
	    !S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode))
		return 0;

	if (st.st_nlink > 1) {
		const char *first = link_find(t, st.st_dev, st.st_ino);
		if (first != NULL) {
			hi.type = '1';
			hi.link = first;
			hi.linklen = strlen(first);
			return emit_header(t, &hi);
		}
	}

	if (S_ISREG(st.st_mode)) {
		int fd = openat(dirfd, nm,
				O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (fd < 0) {
			if (!top && (errno == ENOENT || errno == ELOOP))
				return 0;
			return tw_fail(t, errno, "opening");
		}
		struct stat fst;
		if (fstat(fd, &fst) < 0) {
			int e = errno;
			close(fd);
			return tw_fail(t, e, "stat");
		}
		if (!S_ISREG(fst.st_mode) || fst.st_dev != st.st_dev || fst.st_ino != st.st_ino) {
			close(fd);
			return top ? tw_fail(t, EAGAIN, "changed while being archived") : 0;
		}
		if (fst.st_nlink > 1 && link_add(t, fst.st_dev, fst.st_ino, t->name) < 0) {
			close(fd);
			return -1;
		}
		info_from_stat(&hi, &fst, t);
		hi.type = '0';
		hi.size = (uint64_t)fst.st_size;
		t->xfd = fd;
		if (hi.size == 0) {
			int rc = arch_unsized(t, fd, &hi, top);
			close(fd);
			return rc;
		}
		int rc = emit_header(t, &hi);
		if (rc == 0)
			rc = stream_file(t, fd, hi.size);
		close(fd);
		return rc;
	}

	char *target = NULL;
	if (S_ISLNK(st.st_mode)) {
		size_t tl = 0;
		target = read_link(dirfd, nm, st.st_size > 0 ? (size_t)st.st_size : 0, &tl);
		if (target == NULL) {
			if (!top && (errno == ENOENT || errno == EINVAL))
				return 0;
			return tw_fail(t, errno, "reading link");
		}
		hi.type = '2';
		hi.link = target;
		hi.linklen = tl;
	} else if (S_ISFIFO(st.st_mode)) {
		hi.type = '6';
	} else {
		hi.type = S_ISCHR(st.st_mode) ? '3' : '4';
		hi.devmaj = major(st.st_rdev);
		hi.devmin = minor(st.st_rdev);
	}
	int rc = 0;
	if (st.st_nlink > 1)
		rc = link_add(t, st.st_dev, st.st_ino, t->name);
	if (rc == 0)
		rc = emit_header(t, &hi);
	free(target);
	return rc;
}

/* The top name for `path` (see the comment at the top). 0 or -1 (errno). */
static int top_name(const char *path, size_t trimmed, char **out)
{
	size_t end = trimmed;
	if (end == 1 && path[0] == '/') {
		*out = strdup(".");
		return *out ? 0 : -1;
	}
	size_t start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	size_t bl = end - start;
	if ((bl == 1 && path[start] == '.') ||
	    (bl == 2 && path[start] == '.' && path[start + 1] == '.')) {
		char rp[PATH_MAX];
		if (realpath(path, rp) == NULL)
			return -1;
		const char *b = strrchr(rp, '/');
		b = b ? b + 1 : rp;
		*out = strdup(*b ? b : ".");
		return *out ? 0 : -1;
	}
	*out = strndup(path + start, bl);
	return *out ? 0 : -1;
}

int tar_archive(int out_fd, const char *path, bool xattrs, struct fop_err *err)
{
	struct tw t = {.fd = out_fd, .err = err, .hostpath = path, .xattrs = xattrs, .xfd = -1};
	int rc = -1, out_flags = -1;
	size_t pl = strlen(path);
	size_t trimmed = pl;
	while (trimmed > 1 && path[trimmed - 1] == '/')
		trimmed--;
	char *host = strndup(path, trimmed);
	char *top = NULL;
	if (host == NULL)
		return fop_fail(err, ENOMEM, path, "archiving");
	t.hostpath = host;
	if (pl == 0) {
		fop_fail(err, ENOENT, path, "stat");
		goto out;
	}
	if (top_name(path, trimmed, &top) < 0) {
		fop_fail(err, errno, path, "resolving");
		goto out;
	}
	t.buf = malloc(IOBUF);
	if (t.buf == NULL) {
		fop_fail(err, ENOMEM, path, "archiving");
		goto out;
	}
	if ((out_flags = set_nonblock(out_fd)) < 0) {
		fop_fail(err, errno, path, "writing the archive");
		goto out;
	}
	if (tw_name_set(&t, top, strlen(top)) < 0)
		goto out;
	t.toplen = t.namelen;
	/* The original `path` keeps a trailing slash, which follows a symlink. */
	if (arch_entry(&t, AT_FDCWD, path, true) < 0)
		goto out;
	t.namelen = t.toplen;
	t.name[t.namelen] = '\0';
	if (tw_zeros(&t, 2 * BLK) < 0 || tw_flush(&t) < 0)
		goto out;
	rc = 0;
out:
	for (size_t i = 0; i < t.linkcap; i++)
		free(t.links[i].name);
	free(t.links);
	free(t.pax);
	free(t.name);
	free(t.buf);
	free(top);
	free(host);
	restore_flags(out_fd, out_flags);
	return rc;
}

/* ================================================================== */
/* extract                                                             */
/* ================================================================== */

struct defer_dir {
	char *rel;
	unsigned mode;
	bool own; /* restore uid/gid */
	uid_t uid;
	gid_t gid;
	struct timespec mtime;
	bool existed; /* was there before this entry */
};

struct tx {
	int in;
	unsigned char *buf; /* IOBUF */
	size_t pos, len;
	bool eof;
	int root; /* O_PATH fd of `dir` */
	const char *dir;
	bool as_root;
	struct fop_err *err;
	struct defer_dir *defer;
	size_t ndefer, defercap;
	/* The parent directory of the last entry, open (-1: none). It stays
	 * that directory: every completed entry leaves its own name in it, so
	 * no later entry can remove or replace it. */
	int cache_fd;
	char cache_path[PATH_MAX];
};

/* Fails naming rel below dir. */
static int tx_fail(struct tx *x, int errnum, const char *rel, const char *what)
{
	char p[PATH_MAX];
	join_path(p, sizeof p, x->dir, rel);
	if (errnum == ECANCELED)
		return fail_cancelled(x->err, p);
	return fop_fail(x->err, errnum, p, what);
}

/* Makes at least one byte available (unless at EOF). 1, 0 at EOF, -1 (errno). */
static int tx_fill(struct tx *x)
{
	if (x->pos < x->len)
		return 1;
	if (x->eof)
		return 0;
	x->pos = x->len = 0;
	for (;;) {
		if (fop_cancelled) {
			errno = ECANCELED;
			return -1;
		}
		ssize_t r = read(x->in, x->buf, IOBUF);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN && wait_ready(x->in, POLLIN) == 0)
				continue;
			return -1;
		}
		if (r == 0) {
			x->eof = true;
			return 0;
		}
		x->len = (size_t)r;
		return 1;
	}
}

/* Reads exactly n bytes into dst. 1, 0 if EOF came first (*got set), -1. */
static int tx_read(struct tx *x, void *dst, size_t n, size_t *got)
{
	unsigned char *d = dst;
	size_t done = 0;
	while (done < n) {
		int r = tx_fill(x);
		if (r <= 0) {
			if (got)
				*got = done;
			return r;
		}
		size_t k = x->len - x->pos;
		if (k > n - done)
			k = n - done;
		memcpy(d + done, x->buf + x->pos, k);
		x->pos += k;
		done += k;
	}
	if (got)
		*got = done;
	return 1;
}

/* Skips n bytes. 1, 0 on early EOF, -1. */
static int tx_skip(struct tx *x, uint64_t n)
{
	while (n > 0) {
		int r = tx_fill(x);
		if (r <= 0)
			return r;
		size_t k = x->len - x->pos;
		if (k > n)
			k = (size_t)n;
		x->pos += k;
		n -= k;
	}
	return 1;
}

static uint64_t padded(uint64_t size)
{
	return (BLK - size % BLK) % BLK;
}

/* Maps a tx_read/tx_skip result inside entry rel to 0 or a failure. */
static int tx_check(struct tx *x, int r, const char *rel)
{
	if (r > 0)
		return 0;
	if (r == 0)
		return tx_fail(x, EIO, rel, "the archive ends inside an entry");
	return tx_fail(x, errno, rel, "reading the archive");
}

/* ---- header fields ---- */

/* Parses a numeric field (octal or base-256). 0, or -1 if malformed. */
static int parse_num(const unsigned char *f, size_t w, int64_t *out)
{
	if (f[0] & 0x80) {
		bool neg = (f[0] & 0x40) != 0;
		uint64_t v = (uint64_t)((neg ? ~f[0] : f[0]) & 0x3f);
		for (size_t i = 1; i < w; i++) {
			if (v > (UINT64_MAX >> 8))
				return -1;
			v = v << 8 | (uint64_t)(unsigned char)(neg ? ~f[i] : f[i]);
		}
		if (v > (uint64_t)INT64_MAX)
			return -1;
		*out = neg ? -(int64_t)v - 1 : (int64_t)v;
		return 0;
	}
	size_t i = 0;
	while (i < w && f[i] == ' ')
		i++;
	uint64_t v = 0;
	for (; i < w && f[i] >= '0' && f[i] <= '7'; i++) {
		if (v > (UINT64_MAX >> 3))
			return -1;
		v = v << 3 | (uint64_t)(f[i] - '0');
	}
	if (i < w && f[i] != ' ' && f[i] != '\0')
		return -1;
	if (v > (uint64_t)INT64_MAX)
		return -1;
	*out = (int64_t)v;
	return 0;
}

static bool checksum_ok(const unsigned char *h)
{
	int64_t stored;
	if (parse_num(h + H_CHKSUM, 8, &stored) < 0)
		return false;
	uint64_t usum = 0;
	int64_t ssum = 0;
	for (size_t i = 0; i < BLK; i++) {
		unsigned char c = (i >= H_CHKSUM && i < H_CHKSUM + 8) ? ' ' : h[i];
		usum += c;
		ssum += (signed char)c;
	}
	return (int64_t)usum == stored || ssum == stored;
}

/* Copies a NUL-padded field. */
static char *field_str(const unsigned char *f, size_t w)
{
	return strndup((const char *)f, strnlen((const char *)f, w));
}

/* Values carried by pax 'x' and GNU 'L'/'K' headers to the next entry. */
struct pending {
	char *path, *linkpath; /* pax */
	char *gname, *glink;   /* GNU L, K */
	bool has_size, has_uid, has_gid, has_mtime;
	uint64_t size, uid, gid;
	struct timespec mtime;
	bool sparse; /* GNU.sparse.* keys: a sparse file whose data we cannot lay out */
	bool any;
};

static void pending_clear(struct pending *p)
{
	free(p->path);
	free(p->linkpath);
	free(p->gname);
	free(p->glink);
	*p = (struct pending){0};
}

static bool parse_dec_u64(const char *s, size_t n, uint64_t *out)
{
	if (n == 0)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return true;
}

/* A pax time: [-]seconds[.fraction]. */
static bool parse_pax_time(const char *s, size_t n, struct timespec *ts)
{
	bool neg = n > 0 && s[0] == '-';
	size_t i = neg ? 1 : 0;
	size_t dot = i;
	while (dot < n && s[dot] != '.')
		dot++;
	uint64_t sec;
	if (!parse_dec_u64(s + i, dot - i, &sec) || sec > (uint64_t)INT64_MAX / 2)
		return false;
	long ns = 0;
	if (dot < n) {
		size_t k = 0;
		for (size_t j = dot + 1; j < n; j++, k++) {
			if (s[j] < '0' || s[j] > '9')
				return false;
			if (k < 9)
				ns = ns * 10 + (s[j] - '0');
		}
		for (; k < 9; k++)
			ns *= 10;
	}
	if (neg) {
		ts->tv_sec = -(time_t)sec;
		if (ns > 0) {
			ts->tv_sec -= 1;
			ts->tv_nsec = 1000000000L - ns;
		} else {
			ts->tv_nsec = 0;
		}
	} else {
		ts->tv_sec = (time_t)sec;
		ts->tv_nsec = ns;
	}
	return true;
}

/* Replaces *dst with a copy of val[0..n), or NULL for an empty value. */
static int set_pax_str(char **dst, const char *val, size_t n)
{
	free(*dst);
	*dst = NULL;
	if (n == 0)
		return 0;
	if (memchr(val, '\0', n) != NULL)
		return -1;
	*dst = strndup(val, n);
	return *dst ? 0 : -1;
}

/* Parses pax records into p. 0, or -1 if malformed. */
static int parse_pax(const char *b, size_t n, struct pending *p)
{
	size_t pos = 0;
	while (pos < n) {
		size_t len = 0, i = pos;
		while (i < n && b[i] >= '0' && b[i] <= '9') {
			len = len * 10 + (size_t)(b[i] - '0');
			if (len > n)
				return -1;
			i++;
		}
		if (i == pos || i >= n || b[i] != ' ' || len == 0 || len > n - pos ||
		    b[pos + len - 1] != '\n')
			return -1;
		const char *key = b + i + 1;
		const char *end = b + pos + len - 1; /* the '\n' */
		const char *eq = memchr(key, '=', (size_t)(end - key));
		if (eq == NULL)
			return -1;
		size_t klen = (size_t)(eq - key);
		const char *val = eq + 1;
		size_t vlen = (size_t)(end - val);
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(key, s, klen) == 0)
		if (KEY("path")) {
			if (set_pax_str(&p->path, val, vlen) < 0)
				return -1;
		} else if (KEY("linkpath")) {
			if (set_pax_str(&p->linkpath, val, vlen) < 0)
				return -1;
		} else if (KEY("size")) {
			p->has_size = vlen > 0;
			if (vlen > 0 && (!parse_dec_u64(val, vlen, &p->size) ||
					 p->size > (uint64_t)INT64_MAX - BLK))
				return -1;
		} else if (KEY("uid")) {
			p->has_uid = vlen > 0;
			if (vlen > 0 && !parse_dec_u64(val, vlen, &p->uid))
				return -1;
		} else if (KEY("gid")) {
			p->has_gid = vlen > 0;
			if (vlen > 0 && !parse_dec_u64(val, vlen, &p->gid))
				return -1;
		} else if (KEY("mtime")) {
			p->has_mtime = vlen > 0;
			if (vlen > 0 && !parse_pax_time(val, vlen, &p->mtime))
				return -1;
		} else if (klen > 11 && memcmp(key, "GNU.sparse.", 11) == 0) {
			p->sparse = true;
		}
#undef KEY
		pos += len;
	}
	return 0;
}

/*
 * Normalizes an entry name into out (PATH_MAX): drops leading '/', empty and
 * "." components. 0; -1 with EINVAL for "..", ENAMETOOLONG. *slash: the raw
 * name ended with '/'.
 */
static int norm_name(const char *in, char *out, bool *slash)
{
	size_t o = 0, il = strlen(in);
	if (slash)
		*slash = il > 0 && in[il - 1] == '/';
	const char *p = in;
	while (*p) {
		while (*p == '/')
			p++;
		if (!*p)
			break;
		const char *c = p;
		while (*p && *p != '/')
			p++;
		size_t cl = (size_t)(p - c);
		if (cl == 1 && c[0] == '.')
			continue;
		if (cl == 2 && c[0] == '.' && c[1] == '.') {
			errno = EINVAL;
			return -1;
		}
		if (o + (o > 0) + cl + 1 > PATH_MAX) {
			errno = ENAMETOOLONG;
			return -1;
		}
		if (o > 0)
			out[o++] = '/';
		memcpy(out + o, c, cl);
		o += cl;
	}
	out[o] = '\0';
	return 0;
}

/* ---- resolution below dir ---- */

/* Opens rel (no ".." components) below x->root without leaving it. */
static int open_beneath(struct tx *x, const char *rel, int flags)
{
	bool walk = false;
#ifdef ROOST_TAR_TEST
	walk = tar_test_no_openat2;
#endif
	if (!walk) {
		struct tar_open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC),
					   .resolve =
						   TAR_RESOLVE_BENEATH | TAR_RESOLVE_NO_MAGICLINKS};
		int fd;
		do
			fd = (int)syscall(SYS_openat2, x->root, rel, &how, sizeof how);
		while (fd < 0 && (errno == EAGAIN || errno == EINTR) && !fop_cancelled);
		if (fd >= 0 || errno != ENOSYS)
			return fd;
	}
	/* Fallback: one component at a time, never following a symlink. */
	char buf[PATH_MAX];
	size_t rl = strlen(rel);
	if (rl >= sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, rel, rl + 1);
	int cur = x->root;
	char *p = buf;
	for (;;) {
		char *slash = strchr(p, '/');
		if (slash)
			*slash = '\0';
		int fl = slash ? (O_PATH | O_DIRECTORY) : flags;
		int fd = openat(cur, p, fl | O_NOFOLLOW | O_CLOEXEC);
		int e = errno;
		if (cur != x->root)
			close(cur);
		if (fd < 0) {
			errno = e == ELOOP ? ENOTDIR : e;
			return -1;
		}
		if (!slash)
			return fd;
		cur = fd;
		p = slash + 1;
	}
}

/*
 * Opens the parent directory of rel (O_PATH), creating missing parents
 * (0755). *pfd is x->root for a top-level name (not to be closed). *base
 * points into rel.
 */
static int open_parent(struct tx *x, const char *rel, int *pfd, const char **base)
{
	const char *slash = strrchr(rel, '/');
	if (slash == NULL) {
		*pfd = x->root;
		*base = rel;
		return 0;
	}
	*base = slash + 1;
	char parent[PATH_MAX];
	size_t plen = (size_t)(slash - rel);
	memcpy(parent, rel, plen);
	parent[plen] = '\0';
	int fd = open_beneath(x, parent, O_PATH | O_DIRECTORY);
	if (fd >= 0) {
		*pfd = fd;
		return 0;
	}
	if (errno != ENOENT)
		return -1;
	/* Create the missing ones, from the top. */
	int cur = x->root;
	size_t start = 0;
	for (;;) {
		size_t end = start;
		while (end < plen && parent[end] != '/')
			end++;
		char saved = parent[end];
		parent[end] = '\0';
		fd = open_beneath(x, parent, O_PATH | O_DIRECTORY);
		if (fd < 0 && errno == ENOENT) {
			if (mkdirat(cur, parent + start, 0755) < 0 && errno != EEXIST) {
				int e = errno;
				if (cur != x->root)
					close(cur);
				errno = e;
				return -1;
			}
			fd = open_beneath(x, parent, O_PATH | O_DIRECTORY);
		}
		int e = errno;
		parent[end] = saved;
		if (cur != x->root)
			close(cur);
		if (fd < 0) {
			errno = e;
			return -1;
		}
		cur = fd;
		if (end >= plen)
			break;
		start = end + 1;
	}
	*pfd = cur;
	return 0;
}

static void close_parent(struct tx *x, int pfd)
{
	if (pfd >= 0 && pfd != x->root && pfd != x->cache_fd)
		close(pfd);
}

/* open_parent for an entry, through the one-entry cache. */
static int open_entry_parent(struct tx *x, const char *rel, int *pfd, const char **base)
{
	const char *slash = strrchr(rel, '/');
	size_t plen = slash ? (size_t)(slash - rel) : 0;
	if (slash && x->cache_fd >= 0 && strlen(x->cache_path) == plen &&
	    memcmp(x->cache_path, rel, plen) == 0) {
		*pfd = x->cache_fd;
		*base = slash + 1;
		return 0;
	}
	if (open_parent(x, rel, pfd, base) < 0)
		return -1;
	if (*pfd != x->root) {
		if (x->cache_fd >= 0)
			close(x->cache_fd);
		x->cache_fd = *pfd;
		memcpy(x->cache_path, rel, plen);
		x->cache_path[plen] = '\0';
	}
	return 0;
}

/*
 * Clears the name base in pfd for a new non-directory entry: unlinks a
 * non-directory, removes an empty directory. 0, or -1 (errno; EISDIR for a
 * directory that is not empty).
 */
static int clear_slot(int pfd, const char *base)
{
	struct stat st;
	if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -1;
	if (S_ISDIR(st.st_mode)) {
		if (unlinkat(pfd, base, AT_REMOVEDIR) == 0)
			return 0;
		if (errno == ENOTEMPTY || errno == EEXIST)
			errno = EISDIR;
		return -1;
	}
	if (unlinkat(pfd, base, 0) < 0 && errno != ENOENT)
		return -1;
	return 0;
}

/* ---- deferred directory attributes ---- */

static int apply_dir(struct tx *x, const struct defer_dir *d)
{
	int pfd;
	const char *base;
	if (open_parent(x, d->rel, &pfd, &base) < 0)
		return tx_fail(x, errno, d->rel, "setting directory attributes");
	unsigned mode = d->mode & (x->as_root ? 07777u : 01777u);
	struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, d->mtime};
	int rc = 0;
	int fd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0) {
		if (d->own && fchown(fd, d->uid, d->gid) < 0)
			rc = tx_fail(x, errno, d->rel, "chown");
		else if (fchmod(fd, mode) < 0 && !(d->existed && errno == EPERM))
			rc = tx_fail(x, errno, d->rel, "chmod");
		else if (futimens(fd, ts) < 0 && !(d->existed && errno == EPERM))
			rc = tx_fail(x, errno, d->rel, "setting the modification time");
		close(fd);
	} else if (errno == EACCES && !x->as_root) {
		/* An existing directory we may not read: by name. */
		struct stat st;
		if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
			rc = tx_fail(x, errno ? errno : ENOTDIR, d->rel, "chmod");
		else if (fchmodat(pfd, base, mode, 0) < 0 && !(d->existed && errno == EPERM))
			rc = tx_fail(x, errno, d->rel, "chmod");
		else if (utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0 &&
			 !(d->existed && errno == EPERM))
			rc = tx_fail(x, errno, d->rel, "setting the modification time");
	} else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP) {
		/* (removed or replaced by a later entry: nothing to do) */
		rc = tx_fail(x, errno, d->rel, "opening directory");
	}
	close_parent(x, pfd);
	return rc;
}

static int cmp_defer_desc(const void *a, const void *b)
{
	return strcmp(((const struct defer_dir *)b)->rel, ((const struct defer_dir *)a)->rel);
}

/* True if dir is rel or one of its ancestors. */
static bool is_ancestor(const char *dir, const char *rel)
{
	size_t dl = strlen(dir);
	return strncmp(dir, rel, dl) == 0 && (rel[dl] == '\0' || rel[dl] == '/');
}

/*
 * Applies pending directory attributes, deepest first: all of them
 * (keep == NULL), or those that are not ancestors of keep. Keeps going after
 * a failure and returns the first one (-1) or 0.
 */
static int apply_defer(struct tx *x, const char *keep)
{
	int rc = 0;
	if (x->ndefer > 1)
		qsort(x->defer, x->ndefer, sizeof *x->defer, cmp_defer_desc);
	size_t o = 0;
	for (size_t i = 0; i < x->ndefer; i++) {
		struct defer_dir *d = &x->defer[i];
		if (keep != NULL && is_ancestor(d->rel, keep)) {
			x->defer[o++] = *d;
			continue;
		}
		if (rc == 0) {
			rc = apply_dir(x, d);
		} else {
			/* Later failures must not overwrite the first error. */
			struct fop_err *first = x->err, scratch;
			x->err = &scratch;
			apply_dir(x, d);
			x->err = first;
		}
		free(d->rel);
	}
	x->ndefer = o;
	return rc;
}

static int defer_add(struct tx *x, const char *rel, const struct defer_dir *tmpl)
{
	for (size_t i = 0; i < x->ndefer; i++) {
		if (strcmp(x->defer[i].rel, rel) == 0) {
			bool existed = x->defer[i].existed;
			char *r = x->defer[i].rel;
			x->defer[i] = *tmpl;
			x->defer[i].rel = r;
			x->defer[i].existed = existed;
			return 0;
		}
	}
	if (x->ndefer >= DEFER_SOFT_MAX && apply_defer(x, rel) < 0)
		return -1;
	if (x->ndefer == x->defercap) {
		size_t cap = x->defercap ? x->defercap * 2 : 64;
		struct defer_dir *n = realloc(x->defer, cap * sizeof *n);
		if (n == NULL)
			return tx_fail(x, ENOMEM, rel, "remembering a directory");
		x->defer = n;
		x->defercap = cap;
	}
	char *r = strdup(rel);
	if (r == NULL)
		return tx_fail(x, ENOMEM, rel, "remembering a directory");
	x->defer[x->ndefer] = *tmpl;
	x->defer[x->ndefer].rel = r;
	x->ndefer++;
	return 0;
}

/* ---- entries ---- */

struct entry {
	char type;
	char rel[PATH_MAX]; /* normalized name */
	bool slash;         /* raw name ended with '/' */
	const char *link;   /* raw link target, or NULL */
	uint64_t size;      /* data bytes that follow */
	unsigned mode;
	bool own;
	uid_t uid;
	gid_t gid;
	struct timespec mtime;
	unsigned devmaj, devmin;
};

static int write_data(struct tx *x, int fd, const struct entry *e)
{
	uint64_t left = e->size;
	while (left > 0) {
		if (fop_cancelled)
			return tx_fail(x, ECANCELED, e->rel, NULL);
		int r = tx_fill(x);
		if (r <= 0)
			return tx_check(x, r, e->rel);
		size_t k = x->len - x->pos;
		if (k > left)
			k = (size_t)left;
		if (write_full(fd, x->buf + x->pos, k) < 0)
			return tx_fail(x, errno, e->rel, "writing");
		x->pos += k;
		left -= k;
	}
	return tx_check(x, tx_skip(x, padded(e->size)), e->rel);
}

/*
 * The creation calls below try first and clear an existing entry only on
 * EEXIST (then try once more): one system call per entry in the common case.
 */

static int ex_file(struct tx *x, const struct entry *e, int pfd, const char *base)
{
	/* Created with its permission bits (the umask is 0 here); the special
	 * bits are set after fchown, which clears them. */
	const int oflags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
	int fd = openat(pfd, base, oflags, e->mode & 0777);
	if (fd < 0 && errno == EEXIST) {
		if (clear_slot(pfd, base) < 0)
			return tx_fail(x, errno, e->rel, "replacing");
		fd = openat(pfd, base, oflags, e->mode & 0777);
	}
	if (fd < 0)
		return tx_fail(x, errno, e->rel, "creating");
	int rc = write_data(x, fd, e);
	struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, e->mtime};
	if (rc == 0 && e->own && fchown(fd, e->uid, e->gid) < 0)
		rc = tx_fail(x, errno, e->rel, "chown");
	if (rc == 0 && (e->mode & 07000) && fchmod(fd, e->mode) < 0)
		rc = tx_fail(x, errno, e->rel, "chmod");
	if (rc == 0 && futimens(fd, ts) < 0)
		rc = tx_fail(x, errno, e->rel, "setting the modification time");
	if (close(fd) < 0 && rc == 0 && errno != EINTR)
		rc = tx_fail(x, errno, e->rel, "writing");
	if (rc < 0)
		unlinkat(pfd, base, 0); /* the entry in progress */
	return rc;
}

/* Owner and mtime of a non-file by name (never following). */
static int set_attrs_by_name(struct tx *x, const struct entry *e, int pfd, const char *base)
{
	if (e->own && fchownat(pfd, base, e->uid, e->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return tx_fail(x, errno, e->rel, "chown");
	struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, e->mtime};
	if (utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return tx_fail(x, errno, e->rel, "setting the modification time");
	return 0;
}

static int ex_dir(struct tx *x, const struct entry *e, int pfd, const char *base)
{
	bool existed = false;
	if (mkdirat(pfd, base, 0700) < 0) {
		if (errno != EEXIST)
			return tx_fail(x, errno, e->rel, "mkdir");
		struct stat st;
		if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return tx_fail(x, errno, e->rel, "mkdir");
		if (S_ISDIR(st.st_mode)) {
			existed = true;
			/* As non-root, an existing directory of ours (an earlier
			 * extraction of a read-only one) is writable until its
			 * attributes are applied. */
			if (!x->as_root && st.st_uid == geteuid() && (st.st_mode & 0700) != 0700)
				(void)fchmodat(pfd, base, (st.st_mode & 07777) | 0700, 0);
		} else {
			if (S_ISLNK(st.st_mode)) {
				/* A symlink to a directory below dir stays (its target
				 * keeps its attributes), as with GNU tar
				 * --keep-directory-symlink. */
				int fd = open_beneath(x, e->rel, O_PATH | O_DIRECTORY);
				if (fd >= 0) {
					close(fd);
					return 0;
				}
			}
			if (unlinkat(pfd, base, 0) < 0 && errno != ENOENT)
				return tx_fail(x, errno, e->rel, "replacing");
			if (mkdirat(pfd, base, 0700) < 0)
				return tx_fail(x, errno, e->rel, "mkdir");
		}
	}
	struct defer_dir d = {.mode = e->mode,
			      .own = e->own,
			      .uid = e->uid,
			      .gid = e->gid,
			      .mtime = e->mtime,
			      .existed = existed};
	return defer_add(x, e->rel, &d);
}

static int ex_symlink(struct tx *x, const struct entry *e, int pfd, const char *base)
{
	int r = symlinkat(e->link, pfd, base);
	if (r < 0 && errno == EEXIST) {
		if (clear_slot(pfd, base) < 0)
			return tx_fail(x, errno, e->rel, "replacing");
		r = symlinkat(e->link, pfd, base);
	}
	if (r < 0)
		return tx_fail(x, errno, e->rel, "symlink");
	return set_attrs_by_name(x, e, pfd, base);
}

static int ex_hardlink(struct tx *x, const struct entry *e, int pfd, const char *base)
{
	char target[PATH_MAX];
	if (norm_name(e->link, target, NULL) < 0 || target[0] == '\0')
		return tx_fail(x, errno == ENAMETOOLONG ? ENAMETOOLONG : EINVAL, e->rel,
			       "unsafe hard link target");
	if (strcmp(target, e->rel) == 0) { /* a link to itself: must be there */
		struct stat st;
		if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return tx_fail(x, errno, e->rel, "link");
		return 0;
	}
	int tpfd;
	const char *tbase;
	if (open_parent(x, target, &tpfd, &tbase) < 0)
		return tx_fail(x, errno, target, "opening the hard link target");
	struct stat st;
	int rc = 0;
	if (fstatat(tpfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		rc = tx_fail(x, errno, target, "opening the hard link target");
	} else if (S_ISDIR(st.st_mode)) {
		rc = tx_fail(x, EPERM, target, "hard link to a directory");
	} else {
		int r = linkat(tpfd, tbase, pfd, base, 0);
		if (r < 0 && errno == EEXIST) {
			if (clear_slot(pfd, base) < 0)
				rc = tx_fail(x, errno, e->rel, "replacing");
			else
				r = linkat(tpfd, tbase, pfd, base, 0);
		}
		if (rc == 0 && r < 0)
			rc = tx_fail(x, errno, e->rel, "link");
	}
	close_parent(x, tpfd);
	return rc;
}

static int ex_node(struct tx *x, const struct entry *e, int pfd, const char *base)
{
	mode_t type = e->type == '6' ? S_IFIFO : e->type == '3' ? S_IFCHR : S_IFBLK;
	dev_t dev = type == S_IFIFO ? 0 : makedev(e->devmaj, e->devmin);
	int r = mknodat(pfd, base, type | (e->mode & 07777), dev);
	if (r < 0 && errno == EEXIST) {
		if (clear_slot(pfd, base) < 0)
			return tx_fail(x, errno, e->rel, "replacing");
		r = mknodat(pfd, base, type | (e->mode & 07777), dev);
	}
	if (r < 0)
		return tx_fail(x, errno, e->rel, "mknod");
	int rc = set_attrs_by_name(x, e, pfd, base);
	if (rc < 0)
		unlinkat(pfd, base, 0);
	return rc;
}

/* Reads and creates the entry whose header is h. */
static int ex_entry(struct tx *x, const unsigned char *h, struct pending *pd, struct entry *e)
{
	char type = (char)h[H_TYPE];
	bool posix = memcmp(h + H_MAGIC, "ustar\0", 6) == 0;
	bool gnu = memcmp(h + H_MAGIC, "ustar  \0", 8) == 0;
	int64_t v;

	/* Name. */
	char *raw;
	if (pd->path)
		raw = strdup(pd->path);
	else if (pd->gname)
		raw = strdup(pd->gname);
	else if (posix && h[H_PREFIX] != '\0') {
		size_t pl = strnlen((const char *)h + H_PREFIX, 155);
		size_t nl = strnlen((const char *)h + H_NAME, 100);
		raw = malloc(pl + 1 + nl + 1);
		if (raw) {
			memcpy(raw, h + H_PREFIX, pl);
			raw[pl] = '/';
			memcpy(raw + pl + 1, h + H_NAME, nl);
			raw[pl + 1 + nl] = '\0';
		}
	} else {
		raw = field_str(h + H_NAME, 100);
	}
	if (raw == NULL)
		return tx_fail(x, ENOMEM, NULL, "reading the archive");
	*e = (struct entry){.type = type};
	if (norm_name(raw, e->rel, &e->slash) < 0) {
		int err = errno;
		snprintf(e->rel, sizeof e->rel, "%s", raw);
		free(raw);
		return tx_fail(x, err, e->rel, err == EINVAL ? "unsafe entry name" : "entry name");
	}
	free(raw);

	/* Other fields. */
	if (parse_num(h + H_MODE, 8, &v) < 0)
		return tx_fail(x, EIO, e->rel, "bad header (mode)");
	e->mode = (unsigned)v & (x->as_root ? 07777u : 01777u);
	if (pd->has_size) {
		e->size = pd->size;
	} else {
		if (parse_num(h + H_SIZE, 12, &v) < 0 || v > INT64_MAX - BLK)
			return tx_fail(x, EIO, e->rel, "bad header (size)");
		e->size = (uint64_t)v;
	}
	uint64_t uid, gid;
	if (pd->has_uid) {
		uid = pd->uid;
	} else {
		if (parse_num(h + H_UID, 8, &v) < 0)
			return tx_fail(x, EIO, e->rel, "bad header (uid)");
		uid = (uint64_t)v;
	}
	if (pd->has_gid) {
		gid = pd->gid;
	} else {
		if (parse_num(h + H_GID, 8, &v) < 0)
			return tx_fail(x, EIO, e->rel, "bad header (gid)");
		gid = (uint64_t)v;
	}
	e->own = x->as_root && uid < (uid_t)-1 && gid < (gid_t)-1;
	e->uid = (uid_t)uid;
	e->gid = (gid_t)gid;
	if (pd->has_mtime) {
		e->mtime = pd->mtime;
	} else {
		if (parse_num(h + H_MTIME, 12, &v) < 0)
			return tx_fail(x, EIO, e->rel, "bad header (mtime)");
		e->mtime = (struct timespec){.tv_sec = (time_t)v};
	}
	char *lraw = NULL;
	if (pd->linkpath)
		e->link = pd->linkpath;
	else if (pd->glink)
		e->link = pd->glink;
	else
		e->link = lraw = field_str(h + H_LINK, 100);
	if (e->link == NULL)
		return tx_fail(x, ENOMEM, e->rel, "reading the archive");
	if ((posix || gnu) && (type == '3' || type == '4')) {
		if (parse_num(h + H_DEVMAJOR, 8, &v) < 0 || v > 0xfff)
			goto bad_dev;
		e->devmaj = (unsigned)v;
		if (parse_num(h + H_DEVMINOR, 8, &v) < 0 || v > 0xfffff)
			goto bad_dev;
		e->devmin = (unsigned)v;
	}

	/* What it is, and how much data follows. */
	enum { K_FILE, K_DIR, K_LINK, K_SYMLINK, K_NODE, K_SKIP } kind;
	uint64_t data = 0;
	switch (type) {
	case '0':
	case '\0':
		kind = e->slash ? K_DIR : K_FILE;
		data = e->size;
		break;
	case '7':
		kind = K_FILE;
		data = e->size;
		break;
	case '1':
		kind = K_LINK;
		break;
	case '2':
		kind = K_SYMLINK;
		break;
	case '3':
	case '4':
		kind = x->as_root ? K_NODE : K_SKIP;
		break;
	case '5':
		kind = K_DIR;
		break;
	case 'D': /* GNU dumpdir: a directory and a listing */
		kind = K_DIR;
		data = e->size;
		break;
	case '6':
		kind = K_NODE;
		break;
	default:
		kind = K_SKIP;
		data = e->size;
		break;
	}

	/* A GNU sparse file (pax GNU.sparse.* keys or old type 'S') stores a
	 * map and only the non-hole data: written out as it comes it would be
	 * silently wrong, and skipping it would silently lose it. */
	int rc = 0;
	if (pd->sparse || type == 'S') {
		rc = tx_fail(x, EOPNOTSUPP, e->rel,
			     "GNU sparse files are not supported (archive without --sparse)");
		goto out;
	}
	if (kind == K_SKIP || (kind == K_DIR && e->rel[0] == '\0')) {
		rc = tx_check(x, tx_skip(x, data + padded(data)), e->rel);
		goto out;
	}
	if (e->rel[0] == '\0') {
		rc = tx_fail(x, EINVAL, e->rel, "empty entry name");
		goto out;
	}
	if (kind == K_SYMLINK && e->link[0] == '\0') {
		rc = tx_fail(x, EINVAL, e->rel, "empty symlink target");
		goto out;
	}
	if (x->ndefer >= DEFER_SOFT_MAX && apply_defer(x, e->rel) < 0) {
		rc = -1;
		goto out;
	}
	int pfd;
	const char *base;
	if (open_entry_parent(x, e->rel, &pfd, &base) < 0) {
		rc = tx_fail(x, errno, e->rel, "opening the parent directory");
		goto out;
	}
	switch (kind) {
	case K_FILE:
		e->size = data;
		rc = ex_file(x, e, pfd, base);
		data = 0; /* consumed */
		break;
	case K_DIR:
		rc = ex_dir(x, e, pfd, base);
		break;
	case K_LINK:
		rc = ex_hardlink(x, e, pfd, base);
		break;
	case K_SYMLINK:
		rc = ex_symlink(x, e, pfd, base);
		break;
	case K_NODE:
		rc = ex_node(x, e, pfd, base);
		break;
	case K_SKIP:
		break;
	}
	close_parent(x, pfd);
	if (rc == 0 && data > 0)
		rc = tx_check(x, tx_skip(x, data + padded(data)), e->rel);
out:
	free(lraw);
	return rc;
bad_dev:
	free(lraw);
	return tx_fail(x, EIO, e->rel, "bad header (device)");
}

/* mkdir -p dir (0755). 0 or -1 (errno). */
static int mkdir_parents(const char *dir)
{
	size_t n = strlen(dir);
	if (n == 0 || n >= PATH_MAX) {
		errno = n ? ENAMETOOLONG : ENOENT;
		return -1;
	}
	char p[PATH_MAX];
	memcpy(p, dir, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (p[i] != '/' && p[i] != '\0')
			continue;
		if (p[i - 1] == '/')
			continue;
		char c = p[i];
		p[i] = '\0';
		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			return -1;
		p[i] = c;
	}
	return 0;
}

/* Reads the data of an 'x', 'L' or 'K' header into a NUL-terminated buffer. */
static char *read_meta(struct tx *x, uint64_t size, size_t max, const char *what, int *rc)
{
	if (size > max) {
		*rc = tx_fail(x, EINVAL, NULL, what);
		return NULL;
	}
	char *b = malloc((size_t)size + 1);
	if (b == NULL) {
		*rc = tx_fail(x, ENOMEM, NULL, "reading the archive");
		return NULL;
	}
	int r = tx_read(x, b, (size_t)size, NULL);
	if (r > 0)
		r = tx_skip(x, padded(size));
	if (r <= 0) {
		*rc = tx_check(x, r, NULL);
		free(b);
		return NULL;
	}
	b[size] = '\0';
	*rc = 0;
	return b;
}

static int extract_loop(struct tx *x)
{
	struct pending pd = {0};
	struct entry *e = malloc(sizeof *e);
	unsigned char h[BLK];
	int rc = 0;
	if (e == NULL)
		return tx_fail(x, ENOMEM, NULL, "extracting");
	for (;;) {
		if (fop_cancelled) {
			rc = tx_fail(x, ECANCELED, NULL, NULL);
			break;
		}
		size_t got = 0;
		int r = tx_read(x, h, BLK, &got);
		if (r < 0) {
			rc = tx_fail(x, errno, NULL, "reading the archive");
			break;
		}
		if (r == 0) {
			if (got > 0 || pd.any)
				rc = tx_fail(x, EIO, pd.path ? pd.path : pd.gname,
					     "the archive ends inside an entry");
			break;
		}
		if (memcmp(h, zero_block, BLK) == 0) {
			if (pd.any) {
				rc = tx_fail(x, EIO, pd.path ? pd.path : pd.gname,
					     "the archive ends inside an entry");
				break;
			}
			/* End of archive: discard the rest of the stream. */
			while ((r = tx_fill(x)) > 0)
				x->pos = x->len;
			if (r < 0)
				rc = tx_fail(x, errno, NULL, "reading the archive");
			break;
		}
		if (!checksum_ok(h)) {
			rc = tx_fail(x, EIO, NULL, "bad header checksum");
			break;
		}
		char type = (char)h[H_TYPE];
		if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
			int64_t size;
			if (parse_num(h + H_SIZE, 12, &size) < 0 || size > INT64_MAX - BLK) {
				rc = tx_fail(x, EIO, NULL, "bad header (size)");
				break;
			}
			if (type == 'g') {
				rc = tx_check(x,
					      tx_skip(x, (uint64_t)size + padded((uint64_t)size)),
					      NULL);
				if (rc < 0)
					break;
				continue;
			}
			char *b = read_meta(
				x, (uint64_t)size, type == 'x' ? PAX_MAX : LONGNAME_MAX,
				type == 'x' ? "pax header too large" : "long name too large", &rc);
			if (b == NULL)
				break;
			pd.any = true;
			if (type == 'x') {
				if (parse_pax(b, (size_t)size, &pd) < 0)
					rc = tx_fail(x, EIO, NULL, "malformed pax header");
				free(b);
			} else {
				/* The name ends at the first NUL. */
				char **dst = type == 'L' ? &pd.gname : &pd.glink;
				free(*dst);
				*dst = b;
			}
			if (rc < 0)
				break;
			continue;
		}
		rc = ex_entry(x, h, &pd, e);
		pending_clear(&pd);
		if (rc < 0)
			break;
	}
	pending_clear(&pd);
	free(e);
	return rc;
}

int tar_extract(int in_fd, const char *dir, uint32_t flags, bool as_root, struct fop_err *err)
{
	struct tx x = {.in = in_fd,
		       .root = -1,
		       .dir = dir,
		       .as_root = as_root,
		       .err = err,
		       .cache_fd = -1};
	mode_t old_umask = umask(0);
	int rc = -1, in_flags = -1;
	if ((flags & FOP_PARENTS) && mkdir_parents(dir) < 0) {
		fop_fail(err, errno, dir, "mkdir");
		goto out;
	}
	x.root = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (x.root < 0) {
		fop_fail(err, errno, dir, "opening directory");
		goto out;
	}
	x.buf = malloc(IOBUF);
	if (x.buf == NULL) {
		fop_fail(err, ENOMEM, dir, "extracting");
		goto out;
	}
	if ((in_flags = set_nonblock(in_fd)) < 0) {
		fop_fail(err, errno, dir, "reading the archive");
		goto out;
	}
	rc = extract_loop(&x);
	if (rc == 0) {
		rc = apply_defer(&x, NULL);
	} else {
		/* Keep the first error: apply with a scratch record. */
		struct fop_err scratch;
		x.err = &scratch;
		apply_defer(&x, NULL);
		x.err = err;
	}
out:
	for (size_t i = 0; i < x.ndefer; i++)
		free(x.defer[i].rel);
	free(x.defer);
	free(x.buf);
	if (x.cache_fd >= 0)
		close(x.cache_fd);
	if (x.root >= 0)
		close(x.root);
	restore_flags(in_fd, in_flags);
	umask(old_umask);
	return rc;
}
