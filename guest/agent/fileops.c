/*
 * The agent's built-in file operations (docs/PROTOCOL.md, "Calls"): read,
 * write, stat, list, mkdir, remove, rename, watch and mount; archive and
 * extract are in tar.c.
 *
 * fop_run runs in a forked child of the agent, already chrooted, in the
 * request's CWD and with the user's ids. Output: records on fd 1
 * ([u32 BE length][TLV...]) or raw bytes (read); a failure is one error record
 * on fd 2 and exit status 1.
 *
 * Cancellation (SIGTERM from the host): the handler sets fop_cancelled and
 * puts /dev/null in place of fd 0, fd 1 and the watch's inotify fd, so a
 * blocking read that starts after the flag was checked ends at once (end of
 * file) instead of waiting for the host; one already blocked returns EINTR
 * (the handler is installed without SA_RESTART). Every loop checks the flag.
 */
#include "fileops.h"
#include "p9relay.h"
#include "proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

_Static_assert(sizeof(off_t) == 8, "64-bit file offsets");

#ifndef SYS_renameat2
#define SYS_renameat2 316
#endif
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE 1u
#endif

/* 9p mount options: msize is the largest the 6.1 virtio transport takes
 * (PAGE_SIZE * (VIRTQUEUE_NUM - 3)); cache=none so host-side changes are seen
 * at once; access=client: the guest kernel checks permissions against the
 * owner and mode the server reports, for every guest user. */
#define P9_OPTS "trans=virtio,version=9p2000.L,msize=512000,cache=none,access=client"
/* The same over the 9P relay (p9relay.h): the kernel's trans=fd on our end of
 * a socketpair; msize is the relay's frame bound; aname names the host's
 * export for the channel. */
#define P9_RELAY_OPTS                                                                              \
	"trans=fd,rfdno=%d,wfdno=%d,version=9p2000.L,msize=1048576,cache=none,access=client,"      \
	"aname=v%u"

#define IO_BUF           (128u * 1024u)
#define REC_MAX          (4u + ROOST_MAX_PAYLOAD)
#define OUT_CAP          (2u * REC_MAX)
#define MAX_SYMLINK_HOPS 40

volatile sig_atomic_t fop_cancelled;
static int null_fd = -1;                   /* /dev/null for the SIGTERM handler */
static volatile sig_atomic_t term_fd = -1; /* one more fd it replaces (watch) */

static void on_term(int sig)
{
	(void)sig;
	int e = errno;
	fop_cancelled = 1;
	if (null_fd >= 0) {
		dup2(null_fd, 0);
		dup2(null_fd, 1);
		if (term_fd >= 0)
			dup2(null_fd, (int)term_fd);
	}
	errno = e;
}

/* ------------------------------------------------------------------ */
/* errors and output */

int fop_fail(struct fop_err *err, int errnum, const char *path, const char *what)
{
	err->errnum = errnum;
	size_t l = path ? strlen(path) : 0;
	if (l >= sizeof err->path)
		l = sizeof err->path - 1;
	if (l)
		memmove(err->path, path, l); /* path may be err->path itself */
	err->path[l] = 0;
	snprintf(err->msg, sizeof err->msg, "%s: %s", what, strerror(errnum));
	return -1;
}

/* Writes everything, retrying EINTR; `cancellable`: stop with ECANCELED once
 * the host cancelled. A non-blocking fd is waited for with poll. */
static int write_all(int fd, const void *buf, size_t len, bool cancellable)
{
	const uint8_t *p = buf;
	while (len > 0) {
		if (cancellable && fop_cancelled) {
			errno = ECANCELED;
			return -1;
		}
		ssize_t n = write(fd, p, len);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};
			poll(&pfd, 1, -1);
			continue;
		}
		return -1;
	}
	return 0;
}

int fop_write_all(int fd, const void *buf, size_t len)
{
	return write_all(fd, buf, len, true);
}

/* Per-run state: buffered record output and scratch space. */
struct ctx {
	const struct fop_req *r;
	struct fop_err *err;
	uint8_t *out;
	size_t out_len;
	uint8_t *rec; /* REC_MAX */
	uint8_t *io;  /* IO_BUF */
};

static int out_flush(struct ctx *c)
{
	if (c->out_len == 0)
		return 0;
	int rc = fop_write_all(1, c->out, c->out_len);
	c->out_len = 0;
	if (rc < 0)
		return fop_fail(c->err, errno, NULL, "write to the host");
	return 0;
}

/* Starts a record in c->rec: the length is filled in by rec_end. */
static void rec_begin(struct ctx *c, struct roost_buf *b)
{
	roost_buf_init(b, c->rec, REC_MAX);
	roost_buf_put_u32(b, 0);
}

static int rec_end(struct ctx *c, struct roost_buf *b)
{
	if (b->overflow || b->len - 4 > ROOST_MAX_PAYLOAD)
		return fop_fail(c->err, ENAMETOOLONG, NULL, "record too large");
	roost_put_u32(b->data, (uint32_t)(b->len - 4));
	if (c->out_len + b->len > OUT_CAP && out_flush(c) < 0)
		return -1;
	memcpy(c->out + c->out_len, b->data, b->len);
	c->out_len += b->len;
	return 0;
}

static uint64_t mtime_ns(const struct stat *st)
{
	if (st->st_mtim.tv_sec < 0)
		return 0;
	return (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec;
}

/* An entry record; event < 0: no EVENT field. */
static int emit_entry(struct ctx *c, const char *path, const char *name, const struct stat *st,
		      const char *link, int event)
{
	struct roost_buf b;
	rec_begin(c, &b);
	roost_tlv_put_str(&b, ROOST_TAG_PATH, path);
	roost_tlv_put_str(&b, ROOST_TAG_NAME, name);
	roost_tlv_put_u32(&b, ROOST_TAG_ST_MODE, (uint32_t)st->st_mode);
	roost_tlv_put_u64(&b, ROOST_TAG_SIZE, (uint64_t)(st->st_size < 0 ? 0 : st->st_size));
	roost_tlv_put_u32(&b, ROOST_TAG_UID, (uint32_t)st->st_uid);
	roost_tlv_put_u32(&b, ROOST_TAG_GID, (uint32_t)st->st_gid);
	roost_tlv_put_u64(&b, ROOST_TAG_MTIME_NS, mtime_ns(st));
	if (link)
		roost_tlv_put_str(&b, ROOST_TAG_LINK, link);
	if (event >= 0)
		roost_tlv_put_u32(&b, ROOST_TAG_EVENT, (uint32_t)event);
	return rec_end(c, &b);
}

static int emit_event(struct ctx *c, int event, const char *path, uint32_t type)
{
	struct roost_buf b;
	rec_begin(c, &b);
	roost_tlv_put_u32(&b, ROOST_TAG_EVENT, (uint32_t)event);
	roost_tlv_put_str(&b, ROOST_TAG_PATH, path);
	roost_tlv_put_u32(&b, ROOST_TAG_ST_MODE, type);
	return rec_end(c, &b);
}

static void write_error_record(const struct fop_err *err)
{
	static uint8_t mem[REC_MAX];
	struct roost_buf b;
	roost_buf_init(&b, mem, sizeof mem);
	roost_buf_put_u32(&b, 0);
	roost_tlv_put_u32(&b, ROOST_TAG_ERRNO, (uint32_t)err->errnum);
	roost_tlv_put_str(&b, ROOST_TAG_PATH, err->path);
	roost_tlv_put_str(&b, ROOST_TAG_MESSAGE, err->msg);
	roost_put_u32(b.data, (uint32_t)(b.len - 4));
	(void)write_all(2, b.data, b.len, false);
}

/* ------------------------------------------------------------------ */
/* paths */

static int copy_path(struct fop_err *err, char *dst, const char *src)
{
	size_t l = strlen(src);
	if (l >= PATH_MAX)
		return fop_fail(err, ENAMETOOLONG, src, "path");
	memcpy(dst, src, l + 1);
	return 0;
}

/* Drops trailing slashes ("/" stays). */
static void strip_slashes(char *p)
{
	size_t l = strlen(p);
	while (l > 1 && p[l - 1] == '/')
		p[--l] = 0;
}

/* The last component of a path without trailing slashes ("/" for "/"). */
static const char *base_of(const char *p)
{
	const char *s = strrchr(p, '/');
	if (!s)
		return p;
	if (s[1] == 0)
		return "/"; /* p is "/" */
	return s + 1;
}

/* Splits p (no trailing slashes) into its directory (".", "/" or a prefix)
 * and its last component. */
static void split_path(const char *p, char *dir, char *name)
{
	const char *s = strrchr(p, '/');
	if (!s) {
		strcpy(dir, ".");
		strcpy(name, p);
		return;
	}
	size_t dl = (size_t)(s - p);
	while (dl > 0 && p[dl - 1] == '/')
		dl--;
	if (dl == 0) {
		strcpy(dir, "/");
	} else {
		memcpy(dir, p, dl);
		dir[dl] = 0;
	}
	strcpy(name, s + 1);
}

/* out = a "/" b (no doubled slash). -1 if it does not fit in PATH_MAX. */
static int join(char *out, const char *a, const char *b)
{
	size_t al = strlen(a), bl = strlen(b);
	bool slash = al > 0 && a[al - 1] != '/';
	if (al + slash + bl >= PATH_MAX)
		return -1;
	memmove(out, a, al);
	if (slash)
		out[al++] = '/';
	memcpy(out + al, b, bl + 1);
	return 0;
}

/* mkdir -p (mode 0755 for each missing directory). On failure errno is set. */
static int mkdir_parents(const char *dir)
{
	char tmp[PATH_MAX];
	size_t l = strlen(dir);
	if (l >= sizeof tmp) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(tmp, dir, l + 1);
	for (size_t i = 1; i <= l; i++) {
		if (tmp[i] != '/' && tmp[i] != 0)
			continue;
		if (tmp[i - 1] == '/')
			continue;
		char c = tmp[i];
		tmp[i] = 0;
		int rc = mkdir(tmp, 0755);
		tmp[i] = c;
		if (rc < 0 && errno != EEXIST)
			return -1;
	}
	return 0;
}

/* readlinkat into buf (PATH_MAX + 1 bytes). NULL on failure. */
static const char *read_link(int dfd, const char *name, char *buf)
{
	ssize_t n = readlinkat(dfd, name, buf, PATH_MAX);
	if (n < 0)
		return NULL;
	buf[n] = 0;
	return buf;
}

/* ------------------------------------------------------------------ */
/* read */

/* What a file type is called in messages ("a FIFO"). */
static const char *fop_type_name(mode_t mode)
{
	if (S_ISFIFO(mode))
		return "FIFO";
	if (S_ISCHR(mode))
		return "character device";
	if (S_ISBLK(mode))
		return "block device";
	if (S_ISSOCK(mode))
		return "socket";
	if (S_ISDIR(mode))
		return "directory";
	if (S_ISLNK(mode))
		return "symbolic link";
	return "special file";
}

static int op_read(struct ctx *c, const char *path)
{
	/* A socket cannot be opened (ENXIO): say what it is instead. */
	struct stat pre;
	if (stat(path, &pre) == 0 && S_ISSOCK(pre.st_mode)) {
		fop_fail(c->err, EINVAL, path, "read");
		snprintf(c->err->msg, sizeof c->err->msg,
			 "read: not a regular file but a socket; only regular files can be read");
		return -1;
	}
	/* O_NONBLOCK: opening a FIFO must not wait for a writer. */
	int fd;
	while ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0 &&
	       errno == EINTR && !fop_cancelled)
		;
	if (fd < 0)
		return fop_fail(c->err, errno, path, "open");
	struct stat st;
	if (fstat(fd, &st) < 0) {
		fop_fail(c->err, errno, path, "stat");
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		fop_fail(c->err, EISDIR, path, "read");
		goto fail;
	}
	/* Only regular files are read: a FIFO or a socket has no end to stream
	 * (an empty answer would look like an empty file), a device may have
	 * none. procfs and sysfs files are regular: they stream whatever size
	 * they report. */
	if (!S_ISREG(st.st_mode)) {
		fop_fail(c->err, EINVAL, path, "read");
		snprintf(c->err->msg, sizeof c->err->msg,
			 "read: not a regular file but a %s; only regular files can be read",
			 fop_type_name(st.st_mode));
		goto fail;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	for (;;) {
		if (fop_cancelled) {
			fop_fail(c->err, ECANCELED, path, "read");
			goto fail;
		}
		ssize_t n = read(fd, c->io, IO_BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd pfd = {.fd = fd, .events = POLLIN};
			poll(&pfd, 1, -1);
			continue;
		}
		if (n < 0) {
			fop_fail(c->err, errno, path, "read");
			goto fail;
		}
		if (n == 0)
			break;
		if (fop_write_all(1, c->io, (size_t)n) < 0) {
			fop_fail(c->err, errno, path, "write to the host");
			goto fail;
		}
	}
	close(fd);
	return 0;
fail:
	close(fd);
	return -1;
}

/* ------------------------------------------------------------------ */
/* write */

/* Copies stdin to fd; checks SIZE. From a pipe, splice(2) moves the bytes
 * without a copy through user space (a third less CPU under TCG). */
static int copy_stdin(struct ctx *c, int fd, const char *path)
{
	const struct fop_req *r = c->r;
	uint64_t total = 0;
	bool use_splice = true;
	for (;;) {
		if (fop_cancelled)
			return fop_fail(c->err, ECANCELED, path, "write");
		if (use_splice) {
			size_t want = 1u << 20;
			if (r->has_size && r->size - total < want)
				want = (size_t)(r->size - total) +
				       1; /* one more shows a long stream */
			ssize_t n = splice(0, NULL, fd, NULL, want, SPLICE_F_MOVE);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN) {
				struct pollfd pfd = {.fd = 0, .events = POLLIN};
				poll(&pfd, 1, -1);
				continue;
			}
			if (n < 0 && errno == EINVAL) {
				use_splice = false; /* not a pipe, or a filesystem without splice */
				continue;
			}
			if (n < 0)
				return fop_fail(c->err, errno, path, "write");
			if (n == 0)
				break;
			total += (uint64_t)n;
			if (r->has_size && total > r->size)
				return fop_fail(c->err, EIO, path, "more data than SIZE");
			continue;
		}
		ssize_t n = read(0, c->io, IO_BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd pfd = {.fd = 0, .events = POLLIN};
			poll(&pfd, 1, -1);
			continue;
		}
		if (n < 0)
			return fop_fail(c->err, errno, path, "read the contents");
		if (n == 0)
			break;
		total += (uint64_t)n;
		if (r->has_size && total > r->size)
			return fop_fail(c->err, EIO, path, "more data than SIZE");
		if (fop_write_all(fd, c->io, (size_t)n) < 0)
			return fop_fail(c->err, errno, path, "write");
	}
	if (fop_cancelled)
		return fop_fail(c->err, ECANCELED, path, "write");
	if (r->has_size && total != r->size)
		return fop_fail(c->err, EIO, path, "less data than SIZE");
	return 0;
}

static int rename_noreplace(int ofd, const char *from, int nfd, const char *to)
{
	if (syscall(SYS_renameat2, ofd, from, nfd, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -1;
	/* The filesystem has no RENAME_NOREPLACE (9p): check, then rename. A
	 * genuine EINVAL (a directory into itself) comes back from renameat. */
	struct stat st;
	if (fstatat(nfd, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		errno = EEXIST;
		return -1;
	}
	return renameat(ofd, from, nfd, to);
}

static int op_write(struct ctx *c, const char *path)
{
	const struct fop_req *r = c->r;
	char cur[PATH_MAX], dir[PATH_MAX], name[PATH_MAX], tmp[NAME_MAX + 1], lbuf[PATH_MAX + 1];
	int dfd = -1, tfd = -1;
	bool have_tmp = false, exists = false;
	struct stat st;

	if (copy_path(c->err, cur, path) < 0)
		return -1;
	for (int hops = 0;; hops++) {
		size_t l = strlen(cur);
		if (l == 0)
			return fop_fail(c->err, ENOENT, path, "write");
		if (cur[l - 1] == '/')
			return fop_fail(c->err, EISDIR, path, "write");
		split_path(cur, dir, name);
		if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
			return fop_fail(c->err, EISDIR, path, "write");
		if ((r->flags & FOP_PARENTS) && mkdir_parents(dir) < 0)
			return fop_fail(c->err, errno, path, "create parent directories");
		dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return fop_fail(c->err, errno, path, "open the directory");
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			exists = true;
			if (!S_ISLNK(st.st_mode) || (r->flags & FOP_NO_REPLACE))
				break;
			/* Write through a final symlink to its target (as open(2) would). */
			if (hops >= MAX_SYMLINK_HOPS) {
				fop_fail(c->err, ELOOP, path, "write");
				goto fail;
			}
			if (!read_link(dfd, name, lbuf)) {
				fop_fail(c->err, errno, path, "readlink");
				goto fail;
			}
			char next[PATH_MAX];
			if (lbuf[0] == '/' ? copy_path(c->err, next, lbuf) < 0
					   : join(next, dir, lbuf) < 0) {
				fop_fail(c->err, ENAMETOOLONG, path, "write");
				goto fail;
			}
			memcpy(cur, next, strlen(next) + 1);
			close(dfd);
			dfd = -1;
			exists = false;
			continue;
		}
		if (errno != ENOENT) {
			fop_fail(c->err, errno, path, "stat");
			goto fail;
		}
		break;
	}
	if (exists) {
		if (S_ISDIR(st.st_mode)) {
			fop_fail(c->err, EISDIR, path, "write");
			goto fail;
		}
		if (r->flags & FOP_NO_REPLACE) {
			fop_fail(c->err, EEXIST, path, "write");
			goto fail;
		}
		if (faccessat(dfd, name, W_OK, 0) < 0) {
			fop_fail(c->err, errno, path, "write");
			goto fail;
		}
	}

	/* .<name>.roost-<pid>, the name shortened to fit NAME_MAX. */
	char suffix[32];
	int sl = snprintf(suffix, sizeof suffix, ".roost-%ld", (long)getpid());
	size_t keep = strlen(name);
	if (keep > NAME_MAX - 1 - (size_t)sl)
		keep = NAME_MAX - 1 - (size_t)sl;
	snprintf(tmp, sizeof tmp, ".%.*s%s", (int)keep, name, suffix);
	for (int attempt = 0; attempt < 2; attempt++) {
		tfd = openat(dfd, tmp,
			     O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
		if (tfd >= 0 || errno != EEXIST || attempt)
			break;
		/* Left over by an earlier process with the same pid. */
		unlinkat(dfd, tmp, 0);
	}
	if (tfd < 0) {
		fop_fail(c->err, errno, path, "create the temporary file");
		goto fail;
	}
	have_tmp = true;
	if (copy_stdin(c, tfd, path) < 0)
		goto fail;

	mode_t mode = r->has_mode ? (mode_t)(r->mode & 07777)
		      : exists    ? (st.st_mode & 07777)
				  : 0644;
	if (exists && r->is_root && fchown(tfd, st.st_uid, st.st_gid) < 0) {
		fop_fail(c->err, errno, path, "chown");
		goto fail;
	}
	if (fchmod(tfd, mode) < 0) {
		fop_fail(c->err, errno, path, "chmod");
		goto fail;
	}
	if (fsync(tfd) < 0) {
		fop_fail(c->err, errno, path, "fsync");
		goto fail;
	}
	int crc = close(tfd);
	tfd = -1;
	if (crc < 0 && errno != EINTR) {
		fop_fail(c->err, errno, path, "close");
		goto fail;
	}
	if (fop_cancelled) {
		fop_fail(c->err, ECANCELED, path, "write");
		goto fail;
	}
	int rrc = (r->flags & FOP_NO_REPLACE) ? rename_noreplace(dfd, tmp, dfd, name)
					      : renameat(dfd, tmp, dfd, name);
	if (rrc < 0) {
		fop_fail(c->err, errno, path, "rename the temporary file");
		goto fail;
	}
	have_tmp = false;
	int sfd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd >= 0) {
		fsync(sfd); /* the rename, durably; best effort */
		close(sfd);
	}
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		fop_fail(c->err, errno, path, "stat");
		goto fail;
	}
	close(dfd);
	return emit_entry(c, cur, name, &st, NULL, exists ? 0 : 1);

fail:
	if (tfd >= 0)
		close(tfd);
	if (have_tmp)
		unlinkat(dfd, tmp, 0);
	if (dfd >= 0)
		close(dfd);
	return -1;
}

/* ------------------------------------------------------------------ */
/* stat, mkdir */

static int op_stat(struct ctx *c, const char *path)
{
	struct stat st;
	char lbuf[PATH_MAX + 1];
	int flags = (c->r->flags & FOP_FOLLOW) ? 0 : AT_SYMLINK_NOFOLLOW;
	if (fstatat(AT_FDCWD, path, &st, flags) < 0)
		return fop_fail(c->err, errno, path, "stat");
	const char *link = NULL;
	if (S_ISLNK(st.st_mode) && !(link = read_link(AT_FDCWD, path, lbuf)))
		return fop_fail(c->err, errno, path, "readlink");
	char p[PATH_MAX];
	if (copy_path(c->err, p, path) < 0)
		return -1;
	strip_slashes(p);
	return emit_entry(c, path, base_of(p), &st, link, -1);
}

static int op_mkdir(struct ctx *c, const char *path)
{
	const struct fop_req *r = c->r;
	char p[PATH_MAX], dir[PATH_MAX], name[PATH_MAX], lbuf[PATH_MAX + 1];
	if (copy_path(c->err, p, path) < 0)
		return -1;
	strip_slashes(p);
	mode_t mode = r->has_mode ? (mode_t)(r->mode & 07777) : 0755;
	if (r->flags & FOP_PARENTS) {
		split_path(p, dir, name);
		if (mkdir_parents(dir) < 0)
			return fop_fail(c->err, errno, path, "create parent directories");
	}
	int created = 1;
	if (mkdir(p, mode & 01777) == 0) {
		/* mkdir(2) ignores setuid and setgid. */
		if ((mode & 06000) && chmod(p, mode) < 0)
			return fop_fail(c->err, errno, path, "chmod");
	} else {
		int e = errno;
		struct stat st;
		if (e != EEXIST || !(r->flags & FOP_PARENTS))
			return fop_fail(c->err, e, path, "mkdir");
		if (stat(p, &st) < 0 || !S_ISDIR(st.st_mode))
			return fop_fail(c->err, EEXIST, path, "mkdir");
		created = 0;
	}
	struct stat st;
	if (lstat(p, &st) < 0)
		return fop_fail(c->err, errno, path, "stat");
	const char *link = S_ISLNK(st.st_mode) ? read_link(AT_FDCWD, p, lbuf) : NULL;
	return emit_entry(c, p, base_of(p), &st, link, created);
}

/* ------------------------------------------------------------------ */
/* list */

struct lister {
	struct ctx *c;
	uint32_t depth;
	char path[PATH_MAX];
	char lbuf[PATH_MAX + 1];
};

/* Lists the directory open at dfd (consumed) whose path is L->path. Only
 * failures to send, and cancellation, are errors below the top. */
static int list_dir(struct lister *L, int dfd, uint32_t level)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return level == 0 ? fop_fail(L->c->err, errno, L->path, "list") : 0;
	}
	size_t plen = strlen(L->path);
	int rc = 0;
	for (;;) {
		if (fop_cancelled) {
			rc = fop_fail(L->c->err, ECANCELED, L->path, "list");
			break;
		}
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno && level == 0)
				rc = fop_fail(L->c->err, errno, L->path, "read directory");
			break;
		}
		const char *n = de->d_name;
		if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
			continue;
		if (join(L->path, L->path, n) < 0)
			continue; /* beyond PATH_MAX: no operation could use it */
		struct stat st;
		if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			const char *link =
				S_ISLNK(st.st_mode) ? read_link(dirfd(d), n, L->lbuf) : NULL;
			if (emit_entry(L->c, L->path, n, &st, link, -1) < 0) {
				rc = -1;
				break;
			}
			if (S_ISDIR(st.st_mode) && level + 1 < L->depth) {
				int cfd = openat(dirfd(d), n,
						 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
				if (cfd >= 0 && list_dir(L, cfd, level + 1) < 0) {
					rc = -1;
					break;
				}
			}
		}
		L->path[plen] = 0;
	}
	L->path[plen] = 0;
	closedir(d);
	return rc;
}

static int op_list(struct ctx *c, const char *path)
{
	struct lister *L = malloc(sizeof *L);
	if (!L)
		return fop_fail(c->err, ENOMEM, path, "list");
	L->c = c;
	L->depth = c->r->depth ? c->r->depth : 1;
	int rc = -1;
	if (copy_path(c->err, L->path, path) < 0)
		goto out;
	strip_slashes(L->path);
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		fop_fail(c->err, errno, path, "open");
		goto out;
	}
	rc = list_dir(L, fd, 0);
out:
	free(L);
	return rc;
}

/* ------------------------------------------------------------------ */
/* remove */

struct names {
	char **v;
	size_t n, cap;
};

static void names_free(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
	ns->v = NULL;
	ns->n = ns->cap = 0;
}

/* Every name in the directory at dfd (read through a fresh descriptor). */
static int read_names(int dfd, struct names *ns)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	int rc = 0;
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno)
				rc = -1;
			break;
		}
		const char *n = de->d_name;
		if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
			continue;
		if (ns->n == ns->cap) {
			size_t nc = ns->cap ? ns->cap * 2 : 64;
			char **nv = realloc(ns->v, nc * sizeof *nv);
			if (!nv) {
				errno = ENOMEM;
				rc = -1;
				break;
			}
			ns->v = nv;
			ns->cap = nc;
		}
		if (!(ns->v[ns->n] = strdup(n))) {
			errno = ENOMEM;
			rc = -1;
			break;
		}
		ns->n++;
	}
	int e = errno;
	closedir(d);
	errno = e;
	return rc;
}

/*
 * Removes everything in the directory open at dfd (path: its name, for
 * messages). Only *at calls on descriptors opened with O_NOFOLLOW, so a
 * symlink put in place of a directory is unlinked, never followed. Does not
 * descend into another filesystem (a mount point is EBUSY).
 */
static int rm_tree(struct ctx *c, int dfd, char *path, dev_t dev)
{
	struct names ns = {0};
	if (read_names(dfd, &ns) < 0) {
		names_free(&ns);
		return fop_fail(c->err, errno, path, "read directory");
	}
	size_t plen = strlen(path);
	int rc = 0;
	for (size_t i = 0; i < ns.n && rc == 0; i++) {
		const char *n = ns.v[i];
		if (fop_cancelled) {
			rc = fop_fail(c->err, ECANCELED, path, "remove");
			break;
		}
		if (join(path, path, n) < 0) {
			/* Cannot be named; still removable through the descriptors. */
			path[plen] = 0;
		}
		for (int attempt = 0; attempt < 3; attempt++) {
			if (unlinkat(dfd, n, 0) == 0 || errno == ENOENT)
				break;
			/* Linux: EISDIR for a directory; EPERM may be one too (POSIX). */
			int ue = errno;
			if (ue != EISDIR && ue != EPERM) {
				rc = fop_fail(c->err, ue, path, "unlink");
				break;
			}
			int cfd = openat(dfd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (cfd < 0) {
				int oe = errno;
				if (oe == ENOENT)
					break;
				bool nondir = oe == ELOOP || oe == ENOTDIR;
				if (nondir && ue == EISDIR && attempt < 2)
					continue; /* replaced by a non-directory: unlink again */
				rc = fop_fail(c->err, nondir ? ue : oe, path,
					      nondir ? "unlink" : "open");
				break;
			}
			struct stat st;
			if (fstat(cfd, &st) < 0) {
				rc = fop_fail(c->err, errno, path, "stat");
			} else if (st.st_dev != dev) {
				rc = fop_fail(c->err, EBUSY, path, "remove (a mount point)");
			} else {
				rc = rm_tree(c, cfd, path, dev);
			}
			close(cfd);
			if (rc == 0 && unlinkat(dfd, n, AT_REMOVEDIR) < 0 && errno != ENOENT)
				rc = fop_fail(c->err, errno, path, "rmdir");
			break;
		}
		path[plen] = 0;
	}
	names_free(&ns);
	return rc;
}

static int op_remove(struct ctx *c, const char *path)
{
	char p[PATH_MAX];
	if (copy_path(c->err, p, path) < 0)
		return -1;
	strip_slashes(p);
	struct stat st;
	if (lstat(p, &st) < 0)
		return fop_fail(c->err, errno, path, "stat");
	if (!S_ISDIR(st.st_mode)) {
		if (unlink(p) < 0)
			return fop_fail(c->err, errno, path, "unlink");
		return 0;
	}
	if (!(c->r->flags & FOP_RECURSIVE)) {
		if (rmdir(p) < 0)
			return fop_fail(c->err, errno, path, "rmdir");
		return 0;
	}
	int fd = open(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if ((errno == ELOOP || errno == ENOTDIR) && unlink(p) == 0)
			return 0; /* replaced by a non-directory meanwhile */
		return fop_fail(c->err, errno, path, "open");
	}
	struct stat top, parent;
	if (fstat(fd, &top) < 0 || fstatat(fd, "..", &parent, 0) < 0) {
		fop_fail(c->err, errno, path, "stat");
		close(fd);
		return -1;
	}
	/* Never the root itself (its ".." is itself), nor a mount point. */
	if (top.st_dev != parent.st_dev || top.st_ino == parent.st_ino) {
		close(fd);
		return fop_fail(c->err, EBUSY, path, "remove (the root or a mount point)");
	}
	char *buf = malloc(PATH_MAX);
	if (!buf) {
		close(fd);
		return fop_fail(c->err, ENOMEM, path, "remove");
	}
	memcpy(buf, p, strlen(p) + 1);
	int rc = rm_tree(c, fd, buf, top.st_dev);
	free(buf);
	close(fd);
	if (rc < 0)
		return -1;
	if (rmdir(p) < 0 && errno != ENOENT)
		return fop_fail(c->err, errno, path, "rmdir");
	return 0;
}

/* ------------------------------------------------------------------ */
/* rename */

static int op_rename(struct ctx *c, const char *from_arg, const char *to_arg)
{
	const struct fop_req *r = c->r;
	char from[PATH_MAX], to[PATH_MAX], dir[PATH_MAX], name[PATH_MAX], lbuf[PATH_MAX + 1];
	if (copy_path(c->err, from, from_arg) < 0 || copy_path(c->err, to, to_arg) < 0)
		return -1;
	strip_slashes(from);
	strip_slashes(to);
	if (r->flags & FOP_PARENTS) {
		split_path(to, dir, name);
		if (mkdir_parents(dir) < 0)
			return fop_fail(c->err, errno, to_arg, "create parent directories");
	}
	int rc = (r->flags & FOP_NO_REPLACE) ? rename_noreplace(AT_FDCWD, from, AT_FDCWD, to)
					     : rename(from, to);
	if (rc < 0) {
		int e = errno;
		bool target = e == EEXIST || e == ENOTEMPTY || e == EISDIR;
		return fop_fail(c->err, e, target ? to_arg : from_arg, "rename");
	}
	struct stat st;
	if (lstat(to, &st) < 0)
		return fop_fail(c->err, errno, to_arg, "stat");
	const char *link = S_ISLNK(st.st_mode) ? read_link(AT_FDCWD, to, lbuf) : NULL;
	return emit_entry(c, to, base_of(to), &st, link, -1);
}

/* ------------------------------------------------------------------ */
/* watch */

#define W_DIR_MASK                                                                                 \
	(IN_CREATE | IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO |             \
	 IN_DELETE_SELF | IN_MOVE_SELF)
#define W_FILE_MASK (IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)

struct wentry {
	int wd;
	char *rel; /* below the watched path; "" for it */
};

struct watcher {
	struct ctx *c;
	int fd;
	int root_wd;
	const char *root;
	uint32_t root_type;
	bool recursive;
	struct wentry *v;
	size_t n, cap;
	char path[PATH_MAX];
};

static struct wentry *w_find(struct watcher *W, int wd)
{
	for (size_t i = 0; i < W->n; i++)
		if (W->v[i].wd == wd)
			return &W->v[i];
	return NULL;
}

static int w_set(struct watcher *W, int wd, const char *rel)
{
	char *s = strdup(rel);
	if (!s)
		return -1;
	struct wentry *e = w_find(W, wd);
	if (e) {
		free(e->rel);
		e->rel = s;
		return 0;
	}
	if (W->n == W->cap) {
		size_t nc = W->cap ? W->cap * 2 : 64;
		struct wentry *nv = realloc(W->v, nc * sizeof *nv);
		if (!nv) {
			free(s);
			return -1;
		}
		W->v = nv;
		W->cap = nc;
	}
	W->v[W->n++] = (struct wentry){.wd = wd, .rel = s};
	return 0;
}

static void w_drop(struct watcher *W, struct wentry *e)
{
	free(e->rel);
	*e = W->v[--W->n];
}

/* Stops watching rel and everything below it (a directory moved away). */
static void w_drop_tree(struct watcher *W, const char *rel)
{
	size_t rl = strlen(rel);
	for (size_t i = 0; i < W->n;) {
		const char *s = W->v[i].rel;
		if (W->v[i].wd != W->root_wd && strncmp(s, rel, rl) == 0 &&
		    (s[rl] == 0 || s[rl] == '/')) {
			inotify_rm_watch(W->fd, W->v[i].wd);
			w_drop(W, &W->v[i]);
			continue;
		}
		i++;
	}
}

/* W->path = root[/rel][/name]; -1 if too long. */
static int w_path(struct watcher *W, const char *rel, const char *name)
{
	if (copy_path(W->c->err, W->path, W->root) < 0)
		return -1;
	strip_slashes(W->path);
	if (rel[0] && join(W->path, W->path, rel) < 0)
		return -1;
	if (name && name[0] && join(W->path, W->path, name) < 0)
		return -1;
	return 0;
}

/*
 * Watches the directory rel and (recursive) those below it. emit: also
 * report what is already inside as created (a directory that just appeared
 * may have been filled before its watch was in place). Returns 0, or -1 with
 * c->err set (only for the watched path itself, an inotify limit or a failure
 * to send).
 */
static int w_add_tree(struct watcher *W, const char *rel, bool emit)
{
	struct ctx *c = W->c;
	bool top = rel[0] == 0;
	if (w_path(W, rel, NULL) < 0)
		return top ? fop_fail(c->err, ENAMETOOLONG, W->root, "watch") : 0;
	uint32_t mask = W_DIR_MASK | (top ? 0 : IN_ONLYDIR | IN_DONT_FOLLOW);
	int wd = inotify_add_watch(W->fd, W->path, mask);
	if (wd < 0) {
		if (top || errno == ENOSPC)
			return fop_fail(c->err, errno, top ? W->root : W->path,
					"inotify_add_watch");
		return 0; /* gone, no longer a directory, or not ours to read */
	}
	if (top)
		W->root_wd = wd;
	if (w_set(W, wd, rel) < 0)
		return fop_fail(c->err, ENOMEM, W->path, "watch");
	if (!W->recursive)
		return 0;
	int dfd = open(W->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (top ? 0 : O_NOFOLLOW));
	if (dfd < 0)
		return 0;
	struct names ns = {0};
	int rrc = read_names(dfd, &ns);
	int rc = 0;
	for (size_t i = 0; rrc == 0 && i < ns.n && rc == 0; i++) {
		if (fop_cancelled)
			break;
		struct stat st;
		if (fstatat(dfd, ns.v[i], &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		char sub[PATH_MAX];
		if (rel[0] ? join(sub, rel, ns.v[i]) < 0 : copy_path(c->err, sub, ns.v[i]) < 0)
			continue;
		if (emit && w_path(W, sub, NULL) == 0 &&
		    emit_event(c, FOP_EV_CREATE, W->path, S_ISDIR(st.st_mode) ? S_IFDIR : S_IFREG) <
			    0)
			rc = -1;
		if (rc == 0 && S_ISDIR(st.st_mode))
			rc = w_add_tree(W, sub, emit);
	}
	names_free(&ns);
	close(dfd);
	return rc;
}

/* Handles one inotify event. 1: the watched path is gone (stop). */
static int w_event(struct watcher *W, const struct inotify_event *ev)
{
	struct ctx *c = W->c;
	if (ev->mask & IN_Q_OVERFLOW) {
		if (w_path(W, "", NULL) < 0 ||
		    emit_event(c, FOP_EV_OVERFLOW, W->path, W->root_type) < 0)
			return -1;
		/* Directories created meanwhile have no watch yet. A failure here
		 * (the path just deleted) shows in the events that follow. */
		if (W->recursive)
			(void)w_add_tree(W, "", false);
		return 0;
	}
	struct wentry *e = w_find(W, ev->wd);
	if (!e)
		return 0; /* a watch already dropped */
	bool is_root = ev->wd == W->root_wd;
	if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
		if (!is_root) {
			if (ev->mask & IN_IGNORED)
				w_drop(W, e);
			return 0; /* the parent's watch reports it */
		}
		if (w_path(W, "", NULL) < 0 ||
		    emit_event(c, FOP_EV_REMOVE, W->path, W->root_type) < 0)
			return -1;
		return 1;
	}
	char rel[PATH_MAX];
	const char *name = ev->len ? ev->name : NULL;
	if (copy_path(c->err, rel, e->rel) < 0)
		return 0;
	if (w_path(W, rel, name) < 0)
		return 0;
	if (!name && !is_root)
		return 0; /* a watched subdirectory itself: its parent's watch reports it */
	uint32_t type = !name ? W->root_type : (ev->mask & IN_ISDIR) ? S_IFDIR : S_IFREG;
	static const struct {
		uint32_t bit;
		int event;
	} map[] = {
		{IN_CREATE, FOP_EV_CREATE},      {IN_MOVED_FROM, FOP_EV_RENAME_FROM},
		{IN_MOVED_TO, FOP_EV_RENAME_TO}, {IN_MODIFY, FOP_EV_WRITE},
		{IN_ATTRIB, FOP_EV_CHMOD},       {IN_DELETE, FOP_EV_REMOVE},
	};
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
		if (!(ev->mask & map[i].bit))
			continue;
		if (w_path(W, rel, name) < 0 || emit_event(c, map[i].event, W->path, type) < 0)
			return -1;
		if (!W->recursive || !(ev->mask & IN_ISDIR) || !name)
			continue;
		char sub[PATH_MAX];
		if (rel[0] ? join(sub, rel, name) < 0 : copy_path(c->err, sub, name) < 0)
			continue;
		if (map[i].bit == IN_MOVED_FROM) {
			w_drop_tree(W, sub);
		} else if (map[i].bit == IN_CREATE || map[i].bit == IN_MOVED_TO) {
			if (w_add_tree(W, sub, map[i].bit == IN_CREATE) < 0) {
				if (c->err->errnum != ENOSPC)
					return -1;
				/* Out of watches: say events will be missed. */
				if (w_path(W, "", NULL) < 0 ||
				    emit_event(c, FOP_EV_OVERFLOW, W->path, W->root_type) < 0)
					return -1;
			}
		}
	}
	return 0;
}

static int op_watch(struct ctx *c, const char *path)
{
	struct watcher *W = calloc(1, sizeof *W);
	if (!W)
		return fop_fail(c->err, ENOMEM, path, "watch");
	W->c = c;
	W->root = path;
	W->recursive = (c->r->flags & FOP_RECURSIVE) != 0;
	W->root_wd = -1;
	int rc = -1;
	/* An aligned buffer for whole events. */
	size_t evcap = IO_BUF;
	uint8_t *evbuf = c->io;

	W->fd = inotify_init1(IN_CLOEXEC);
	if (W->fd < 0) {
		fop_fail(c->err, errno, path, "inotify_init");
		goto out;
	}
	struct stat st;
	if (stat(path, &st) < 0) {
		fop_fail(c->err, errno, path, "stat");
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		W->root_type = S_IFDIR;
		if (w_add_tree(W, "", false) < 0)
			goto out;
	} else {
		W->root_type = S_IFREG;
		W->recursive = false;
		int wd = inotify_add_watch(W->fd, path, W_FILE_MASK);
		if (wd < 0 || w_set(W, wd, "") < 0) {
			fop_fail(c->err, wd < 0 ? errno : ENOMEM, path, "inotify_add_watch");
			goto out;
		}
		W->root_wd = wd;
	}
	if (w_path(W, "", NULL) < 0 || emit_event(c, FOP_EV_READY, W->path, W->root_type) < 0 ||
	    out_flush(c) < 0)
		goto out;

	term_fd = W->fd;
	if (fop_cancelled) /* before term_fd was set: do not wait */
		goto done;
	for (;;) {
		ssize_t n = read(W->fd, evbuf, evcap);
		if (fop_cancelled)
			break;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fop_fail(c->err, n < 0 ? errno : EIO, path, "read inotify events");
			goto out;
		}
		for (size_t off = 0; off + sizeof(struct inotify_event) <= (size_t)n;) {
			struct inotify_event ev;
			memcpy(&ev, evbuf + off, sizeof ev);
			size_t total = sizeof ev + ev.len;
			if (off + total > (size_t)n)
				break;
			/* The name follows the header; evbuf is malloc-aligned and
			 * every record is a multiple of the header's alignment. */
			const struct inotify_event *evp =
				(const struct inotify_event *)(void *)(evbuf + off);
			int r = w_event(W, evp);
			if (r < 0)
				goto out;
			if (r == 1) {
				if (out_flush(c) < 0)
					goto out;
				goto done;
			}
			off += total;
		}
		if (out_flush(c) < 0)
			goto out;
	}
done:
	rc = 0;
out:
	term_fd = -1;
	if (W->fd >= 0)
		close(W->fd);
	for (size_t i = 0; i < W->n; i++)
		free(W->v[i].rel);
	free(W->v);
	free(W);
	return rc;
}

/* ------------------------------------------------------------------ */
/* mount */

/* Hands `fd` (the relay's end of the channel) to the relay for channel ch
 * and waits for its answer: 0, or -1 with *err filled. */
static int relay_add(struct ctx *c, uint16_t ch, int fd, const char *target)
{
	int rp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rp) < 0)
		return fop_fail(c->err, errno, target, "mount: socketpair");
	uint32_t req[2] = {P9R_REQ_ADD, ch};
	int fds[2] = {fd, rp[1]};
	union {
		struct cmsghdr h;
		uint8_t b[CMSG_SPACE(sizeof fds)];
	} cbuf;
	memset(&cbuf, 0, sizeof cbuf);
	struct iovec iov = {.iov_base = req, .iov_len = sizeof req};
	struct msghdr m = {.msg_iov = &iov,
			   .msg_iovlen = 1,
			   .msg_control = cbuf.b,
			   .msg_controllen = sizeof cbuf.b};
	struct cmsghdr *h = CMSG_FIRSTHDR(&m);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof fds);
	memcpy(CMSG_DATA(h), fds, sizeof fds);
	ssize_t n;
	do
		n = sendmsg(c->r->relay_fd, &m, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR && !fop_cancelled);
	int e = errno;
	close(rp[1]);
	if (n != (ssize_t)sizeof req) {
		close(rp[0]);
		return fop_fail(c->err, n < 0 ? e : EIO, target,
				"mount: the 9P relay is gone (the next mount starts a new one)");
	}
	int answer = 0;
	do
		n = recv(rp[0], &answer, sizeof answer, 0);
	while (n < 0 && errno == EINTR && !fop_cancelled);
	e = errno;
	close(rp[0]);
	if (n < 0 && fop_cancelled)
		return fop_fail(c->err, ECANCELED, target, "mount");
	if (n != (ssize_t)sizeof answer)
		return fop_fail(c->err, n < 0 ? e : ECONNRESET, target,
				"mount: the 9P relay is gone (the next mount starts a new one)");
	if (answer == 0)
		return 0;
	char what[160];
	if (answer == ENODEV)
		snprintf(what, sizeof what,
			 "mount: this VM has no %s port (its host gave it no 9P relay channel)",
			 P9R_PORT_NAME);
	else if (answer == EEXIST)
		snprintf(what, sizeof what, "mount: 9P relay channel %u is in use", ch);
	else
		snprintf(what, sizeof what, "mount: the 9P relay refused channel %u", ch);
	return fop_fail(c->err, answer > 0 && answer < 4096 ? answer : EIO, target, what);
}

/* mount with FOP_RELAY: channel `chan` of the relay on `target`. */
static int relay_mount(struct ctx *c, const char *chan, const char *target, unsigned long flags)
{
	uint16_t ch;
	if (p9r_parse_channel(chan, &ch) < 0)
		return fop_fail(c->err, EINVAL, chan,
				"mount: the channel must be a decimal number 0..65535");
	if (c->r->relay_fd < 0)
		return fop_fail(c->err, c->r->relay_err ? c->r->relay_err : ENODEV, target,
				"mount: start the 9P relay");
	if (mkdir_parents(target) < 0)
		return fop_fail(c->err, errno, target, "create the mount point");
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return fop_fail(c->err, errno, target, "mount: socketpair");
	int rc = relay_add(c, ch, sv[1], target);
	close(sv[1]);
	if (rc == 0) {
		char src[32], opts[200];
		snprintf(src, sizeof src, "roost.v%u", ch);
		snprintf(opts, sizeof opts, P9_RELAY_OPTS, sv[0], sv[0], ch);
		/* Tversion and Tattach go through the relay before this returns. */
		if (mount(src, target, "9p", flags, opts) < 0)
			rc = fop_fail(c->err, errno, target, "mount 9p (relay)");
	}
	/* The kernel holds its own reference; a failed mount's end closes here
	 * and the relay sees the channel end. */
	close(sv[0]);
	return rc;
}

static int op_mount(struct ctx *c, const char *tag, const char *target)
{
	if (!c->r->is_root)
		return fop_fail(c->err, EPERM, target, "mount (root only)");
	unsigned long flags = MS_NOSUID | MS_NODEV;
	if (c->r->flags & FOP_READ_ONLY)
		flags |= MS_RDONLY;
	if (c->r->flags & FOP_RELAY)
		return relay_mount(c, tag, target, flags);
	if (mkdir_parents(target) < 0)
		return fop_fail(c->err, errno, target, "create the mount point");
	if (mount(tag, target, "9p", flags, P9_OPTS) < 0)
		return fop_fail(c->err, errno, target, "mount 9p");
	return 0;
}

/* ------------------------------------------------------------------ */

static const struct {
	const char *name;
	unsigned nargs;
} op_table[] = {
	{"read", 1},   {"write", 1}, {"stat", 1},    {"list", 1},    {"mkdir", 1}, {"remove", 1},
	{"rename", 2}, {"watch", 1}, {"archive", 1}, {"extract", 1}, {"mount", 2}, {"commit", 0},
};

bool fop_outside_root(const struct fop_req *r)
{
	return r->op != NULL && (strcmp(r->op, "commit") == 0 ||
				 (strcmp(r->op, "archive") == 0 && (r->flags & FOP_LAYER)));
}

int fop_check(const struct fop_req *r, char *msg, size_t msglen)
{
	if (!r->op) {
		snprintf(msg, msglen, "CALL without OP");
		return -1;
	}
	for (size_t i = 0; i < sizeof op_table / sizeof op_table[0]; i++) {
		if (strcmp(r->op, op_table[i].name) != 0)
			continue;
		if (r->nargs != op_table[i].nargs) {
			snprintf(msg, msglen, "%s takes %u operand%s, not %u", r->op,
				 op_table[i].nargs, op_table[i].nargs == 1 ? "" : "s", r->nargs);
			return -1;
		}
		return 0;
	}
	snprintf(msg, msglen, "unknown operation %.64s", r->op);
	return -1;
}

int fop_run(const struct fop_req *r)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL); /* a host gone away is EPIPE, not death */
	if (null_fd < 0)
		null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	sa.sa_handler = on_term; /* no SA_RESTART: blocking calls return EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_UNBLOCK, &term, NULL);
	umask(0); /* modes are exactly the requested ones */
	/* Deep trees hold one descriptor per level. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	struct fop_err *err = calloc(1, sizeof *err);
	struct ctx c = {.r = r, .err = err};
	c.out = malloc(OUT_CAP);
	c.rec = malloc(REC_MAX);
	c.io = malloc(IO_BUF);
	int rc = -1;
	char msg[256];
	if (!err || !c.out || !c.rec || !c.io) {
		static struct fop_err oom;
		c.err = err ? err : &oom;
		fop_fail(c.err, ENOMEM, "", "start");
	} else if (fop_check(r, msg, sizeof msg) < 0) {
		fop_fail(c.err, EINVAL, r->nargs ? r->args[0] : "", msg);
	} else {
		const char *a = r->nargs > 0 ? r->args[0] : "",
			   *b = r->nargs > 1 ? r->args[1] : NULL;
		const char *op = r->op;
		if (strcmp(op, "read") == 0)
			rc = op_read(&c, a);
		else if (strcmp(op, "write") == 0)
			rc = op_write(&c, a);
		else if (strcmp(op, "stat") == 0)
			rc = op_stat(&c, a);
		else if (strcmp(op, "list") == 0)
			rc = op_list(&c, a);
		else if (strcmp(op, "mkdir") == 0)
			rc = op_mkdir(&c, a);
		else if (strcmp(op, "remove") == 0)
			rc = op_remove(&c, a);
		else if (strcmp(op, "rename") == 0)
			rc = op_rename(&c, a, b);
		else if (strcmp(op, "watch") == 0)
			rc = op_watch(&c, a);
		else if (strcmp(op, "archive") == 0 && (r->flags & FOP_LAYER)) {
			char layer[PATH_MAX];
			if (!r->is_root)
				rc = fop_fail(c.err, EPERM, a, "archive of a layer (root only)");
			else if (layer_path(a, layer, sizeof layer, c.err) == 0)
				rc = tar_archive(1, layer, true, c.err);
		} else if (strcmp(op, "archive") == 0)
			rc = tar_archive(1, a, false, c.err);
		else if (strcmp(op, "commit") == 0)
			rc = r->is_root ? layer_commit(1, r->remount_root, c.err)
					: fop_fail(c.err, EPERM, "", "commit (root only)");
		else if (strcmp(op, "extract") == 0)
			rc = tar_extract(0, a, r->flags, r->is_root, c.err);
		else if (strcmp(op, "mount") == 0)
			rc = op_mount(&c, a, b);
		if (rc == 0)
			rc = out_flush(&c);
		/* A cancelled watch ends normally (even before READY); anything
		 * else cancelled says so. */
		if (fop_cancelled && rc < 0) {
			if (strcmp(op, "watch") == 0)
				rc = 0;
			else if (c.err->errnum != ECANCELED)
				fop_fail(c.err, ECANCELED, c.err->path, op);
		}
	}
	if (rc < 0)
		write_error_record(c.err);
	free(c.out);
	free(c.rec);
	free(c.io);
	free(err);
	return rc < 0 ? 1 : 0;
}
