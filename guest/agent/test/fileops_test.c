/*
 * Tests of the agent's file operations (fileops.c): each runs fop_run in a
 * forked child, as the agent does (without the chroot), on a fresh temporary
 * directory, with stdin, stdout and stderr on pipes; the records and error
 * records are decoded as the host would. Built with ASan/UBSan by
 * `make test`. Prints "N passed, M failed" and exits non-zero on failure.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static char root[64]; /* the temporary directory */
static char pbuf[64][PATH_MAX];
static int pnext;

/* root/rel, in one of 64 rotating buffers (requests keep pointers to them). */
static const char *P(const char *rel)
{
	char *b = pbuf[pnext++ % 64];
	size_t rl = strlen(root), l = strlen(rel);
	if (rl + 1 + l >= PATH_MAX)
		exit(2);
	memcpy(b, root, rl);
	b[rl] = '/';
	memcpy(b + rl + 1, rel, l + 1);
	return b;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void put_file(const char *path, const char *data, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
	if (fd < 0) {
		perror(path);
		exit(2);
	}
	if (write(fd, data, strlen(data)) != (ssize_t)strlen(data))
		exit(2);
	close(fd);
	chmod(path, mode);
}

/* Reads a whole small file; -1 if missing. */
static ssize_t get_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, cap - 1);
	close(fd);
	if (n >= 0)
		buf[n] = 0;
	return n;
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* True if a directory holds a leftover ".<name>.roost-<pid>" file. */
static bool has_temp(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return false;
	bool found = false;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strstr(de->d_name, ".roost-"))
			found = true;
	closedir(d);
	return found;
}

static int rm_rf(const char *path)
{
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
	return system(cmd);
}

/* ------------------------------------------------------------------ */
/* running operations */

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : 4096;
		while (nc < b->len + n + 1)
			nc *= 2;
		b->p = realloc(b->p, nc);
		if (!b->p)
			exit(2);
		b->cap = nc;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = 0;
}

struct result {
	int status; /* exit status, or 128 + signal */
	struct buf out, err;
};

static void result_free(struct result *r)
{
	free(r->out.p);
	free(r->err.p);
	memset(r, 0, sizeof *r);
}

/* A running operation. */
struct child {
	pid_t pid;
	int in, out, err; /* our ends; in = -1 once closed */
};

static int as_uid = -1; /* run operations as this uid (root only), -1: as we are */

static void spawn_op(const struct fop_req *r, bool with_stdin, struct child *c)
{
	int in[2], out[2], err[2];
	if (pipe(in) < 0 || pipe(out) < 0 || pipe(err) < 0)
		exit(2);
	pid_t pid = fork();
	if (pid < 0)
		exit(2);
	if (pid == 0) {
		int nul = open("/dev/null", O_RDONLY);
		dup2(with_stdin ? in[0] : nul, 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		for (int fd = 3; fd < 64; fd++)
			close(fd);
		if (as_uid >= 0 && (setgid((gid_t)as_uid) < 0 || setuid((uid_t)as_uid) < 0))
			_exit(99);
		struct fop_req req = *r;
		req.is_root = geteuid() == 0 && r->is_root;
		_exit(fop_run(&req));
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	c->pid = pid;
	c->in = in[1];
	c->out = out[0];
	c->err = err[0];
	if (!with_stdin) {
		close(c->in);
		c->in = -1;
	}
}

static int wait_status(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Feeds `in` (if not NULL: stdin; then EOF), collects both outputs, waits. */
static void finish_op(struct child *c, const void *in, size_t in_len, struct result *res)
{
	memset(res, 0, sizeof *res);
	size_t in_off = 0;
	if (c->in >= 0)
		fcntl(c->in, F_SETFL, O_NONBLOCK);
	while (c->out >= 0 || c->err >= 0) {
		struct pollfd pfd[3];
		int n = 0, iin = -1, iout = -1, ierr = -1;
		if (c->in >= 0) {
			pfd[n] = (struct pollfd){.fd = c->in, .events = POLLOUT};
			iin = n++;
		}
		if (c->out >= 0) {
			pfd[n] = (struct pollfd){.fd = c->out, .events = POLLIN};
			iout = n++;
		}
		if (c->err >= 0) {
			pfd[n] = (struct pollfd){.fd = c->err, .events = POLLIN};
			ierr = n++;
		}
		if (poll(pfd, (nfds_t)n, 10000) <= 0) {
			fprintf(stderr, "finish_op: timed out\n");
			kill(c->pid, SIGKILL);
			break;
		}
		if (iin >= 0 && pfd[iin].revents) {
			ssize_t w = in_len > in_off ? write(c->in, (const char *)in + in_off,
							    in_len - in_off)
						    : 0;
			if (w > 0)
				in_off += (size_t)w;
			if (w < 0 || in_off >= in_len) {
				close(c->in);
				c->in = -1;
			}
		}
		uint8_t tmp[65536];
		if (iout >= 0 && pfd[iout].revents) {
			ssize_t r = read(c->out, tmp, sizeof tmp);
			if (r > 0)
				buf_add(&res->out, tmp, (size_t)r);
			else {
				close(c->out);
				c->out = -1;
			}
		}
		if (ierr >= 0 && pfd[ierr].revents) {
			ssize_t r = read(c->err, tmp, sizeof tmp);
			if (r > 0)
				buf_add(&res->err, tmp, (size_t)r);
			else {
				close(c->err);
				c->err = -1;
			}
		}
	}
	if (c->in >= 0)
		close(c->in);
	c->in = -1;
	res->status = wait_status(c->pid);
}

static void run(const struct fop_req *r, const void *in, size_t in_len, struct result *res)
{
	struct child c;
	spawn_op(r, in != NULL, &c);
	finish_op(&c, in, in_len, res);
}

/* ------------------------------------------------------------------ */
/* records */

struct rec {
	char path[PATH_MAX];
	char name[NAME_MAX + 1];
	char link[PATH_MAX];
	char msg[512];
	bool has_link, has_event, has_errno, has_size;
	uint32_t mode, uid, gid, event, err;
	uint64_t size, mtime;
};

static void tlv_str(const struct roost_tlv *t, char *dst, size_t cap)
{
	size_t l = t->len < cap - 1 ? t->len : cap - 1;
	memcpy(dst, t->value, l);
	dst[l] = 0;
}

/* Decodes records; returns their number, or -1 if malformed. Consumes whole
 * records only (*used: bytes consumed). */
static int decode(const uint8_t *p, size_t len, struct rec *out, int max, size_t *used)
{
	size_t off = 0;
	int n = 0;
	while (off + 4 <= len && n < max) {
		uint32_t rl = roost_get_u32(p + off);
		if (rl > ROOST_MAX_PAYLOAD)
			return -1;
		if (off + 4 + rl > len)
			break;
		if (roost_tlv_validate(p + off + 4, rl) < 0)
			return -1;
		struct rec *r = &out[n++];
		memset(r, 0, sizeof *r);
		struct roost_tlv_iter it;
		struct roost_tlv t;
		roost_tlv_iter_init(&it, p + off + 4, rl);
		while (roost_tlv_next(&it, &t) == 1) {
			switch (t.tag) {
			case ROOST_TAG_PATH:
				tlv_str(&t, r->path, sizeof r->path);
				break;
			case ROOST_TAG_NAME:
				tlv_str(&t, r->name, sizeof r->name);
				break;
			case ROOST_TAG_LINK:
				tlv_str(&t, r->link, sizeof r->link);
				r->has_link = true;
				break;
			case ROOST_TAG_MESSAGE:
				tlv_str(&t, r->msg, sizeof r->msg);
				break;
			case ROOST_TAG_ST_MODE:
				roost_tlv_u32(&t, &r->mode);
				break;
			case ROOST_TAG_UID:
				roost_tlv_u32(&t, &r->uid);
				break;
			case ROOST_TAG_GID:
				roost_tlv_u32(&t, &r->gid);
				break;
			case ROOST_TAG_EVENT:
				r->has_event = roost_tlv_u32(&t, &r->event) == 0;
				break;
			case ROOST_TAG_ERRNO:
				r->has_errno = roost_tlv_u32(&t, &r->err) == 0;
				break;
			case ROOST_TAG_SIZE:
				r->has_size = roost_tlv_u64(&t, &r->size) == 0;
				break;
			case ROOST_TAG_MTIME_NS:
				roost_tlv_u64(&t, &r->mtime);
				break;
			default:
				break;
			}
		}
		off += 4 + rl;
	}
	if (used)
		*used = off;
	return n;
}

#define MAXREC 64
static struct rec recs[MAXREC];

/* The result's records on fd 1 (exactly, no trailing bytes). */
static int out_records(const struct result *res)
{
	size_t used = 0;
	int n = decode(res->out.p, res->out.len, recs, MAXREC, &used);
	return used == res->out.len ? n : -1;
}

/* Status 1 with exactly one error record of errno e. */
static bool failed_with(const struct result *res, int e)
{
	struct rec r;
	size_t used = 0;
	if (res->status != 1 || decode(res->err.p, res->err.len, &r, 1, &used) != 1 ||
	    used != res->err.len || !r.has_errno) {
		fprintf(stderr, "  expected errno %d (%s): status %d, %zu bytes on fd 2\n", e,
			strerror(e), res->status, res->err.len);
		return false;
	}
	if ((int)r.err != e)
		fprintf(stderr, "  expected errno %d (%s), got %u: %s (path %s)\n", e, strerror(e),
			r.err, r.msg, r.path);
	return (int)r.err == e;
}

static bool ok(const struct result *res)
{
	if (res->status != 0) {
		struct rec r;
		if (decode(res->err.p, res->err.len, &r, 1, NULL) == 1)
			fprintf(stderr, "  status %d: errno %u: %s (path %s)\n", res->status, r.err,
				r.msg, r.path);
		else
			fprintf(stderr, "  status %d\n", res->status);
	}
	return res->status == 0 && res->err.len == 0;
}

static struct rec *find_rec(int n, const char *path)
{
	for (int i = 0; i < n; i++)
		if (strcmp(recs[i].path, path) == 0)
			return &recs[i];
	return NULL;
}

static struct fop_req req1(const char *op, const char *a)
{
	return (struct fop_req){.op = op, .args = {a}, .nargs = 1, .is_root = true};
}

/* ------------------------------------------------------------------ */

static void test_check(void)
{
	char msg[128];
	struct fop_req r = req1("read", "x");
	CHECK(fop_check(&r, msg, sizeof msg) == 0);
	r.op = "nope";
	CHECK(fop_check(&r, msg, sizeof msg) < 0 && strstr(msg, "unknown"));
	r = req1("rename", "x");
	CHECK(fop_check(&r, msg, sizeof msg) < 0);
	r.nargs = 2;
	r.args[1] = "y";
	CHECK(fop_check(&r, msg, sizeof msg) == 0);
	r = req1("mount", "tag");
	CHECK(fop_check(&r, msg, sizeof msg) < 0);
	r = (struct fop_req){.op = "stat"};
	CHECK(fop_check(&r, msg, sizeof msg) < 0);
	r = (struct fop_req){.op = NULL};
	CHECK(fop_check(&r, msg, sizeof msg) < 0);
	const char *all[] = {"read",   "write", "stat",    "list",   "mkdir",
			     "remove", "watch", "archive", "extract"};
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
		r = req1(all[i], "x");
		CHECK(fop_check(&r, msg, sizeof msg) == 0);
	}

	/* fop_run refuses what fop_check refuses, with an error record. */
	struct result res;
	r = (struct fop_req){.op = "bogus", .args = {"x"}, .nargs = 1};
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EINVAL));
	result_free(&res);
}

static void test_write(void)
{
	struct result res;
	char got[256];

	/* A new file: 0644, the record describes it. */
	struct fop_req r = req1("write", P("a.txt"));
	r.has_size = true;
	r.size = 5;
	run(&r, "hello", 5, &res);
	CHECK(ok(&res));
	CHECK(out_records(&res) == 1);
	CHECK(strcmp(recs[0].path, P("a.txt")) == 0 && strcmp(recs[0].name, "a.txt") == 0);
	CHECK(recs[0].size == 5 && recs[0].mode == (S_IFREG | 0644));
	CHECK(recs[0].uid == geteuid() && recs[0].mtime > 0);
	CHECK(recs[0].has_event && recs[0].event == 1); /* created */
	CHECK(get_file(P("a.txt"), got, sizeof got) == 5 && strcmp(got, "hello") == 0);
	CHECK(!has_temp(root));
	result_free(&res);

	/* Without SIZE; MODE exactly (no umask). */
	r = req1("write", P("b.txt"));
	r.has_mode = true;
	r.mode = 0607;
	run(&r, "xyz", 3, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].mode == (S_IFREG | 0607));
	result_free(&res);

	/* Replacing keeps the old mode. */
	chmod(P("a.txt"), 0640);
	r = req1("write", P("a.txt"));
	run(&r, "again!", 6, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].mode == (S_IFREG | 0640) &&
	      recs[0].size == 6);
	CHECK(recs[0].has_event && recs[0].event == 0); /* replaced */
	CHECK(get_file(P("a.txt"), got, sizeof got) == 6 && strcmp(got, "again!") == 0);
	result_free(&res);

	/* Empty contents (stdin /dev/null). */
	r = req1("write", P("empty"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].size == 0);
	result_free(&res);

	/* Missing parents: ENOENT, or created with PARENTS. */
	r = req1("write", P("p/q/r.txt"));
	run(&r, "1", 1, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);
	r.flags = FOP_PARENTS;
	run(&r, "1", 1, &res);
	CHECK(ok(&res));
	struct stat st;
	CHECK(stat(P("p/q"), &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0755);
	CHECK(get_file(P("p/q/r.txt"), got, sizeof got) == 1);
	result_free(&res);

	/* A directory is EISDIR, so is a trailing slash. */
	r = req1("write", P("p"));
	run(&r, "1", 1, &res);
	CHECK(failed_with(&res, EISDIR));
	result_free(&res);
	r = req1("write", P("new/"));
	run(&r, "1", 1, &res);
	CHECK(failed_with(&res, EISDIR));
	result_free(&res);

	/* NO_REPLACE: EEXIST and the old contents stay; a new name works. */
	r = req1("write", P("a.txt"));
	r.flags = FOP_NO_REPLACE;
	run(&r, "zzz", 3, &res);
	CHECK(failed_with(&res, EEXIST));
	CHECK(get_file(P("a.txt"), got, sizeof got) == 6);
	CHECK(!has_temp(root));
	result_free(&res);
	r = req1("write", P("c.txt"));
	r.flags = FOP_NO_REPLACE;
	run(&r, "c", 1, &res);
	CHECK(ok(&res) && get_file(P("c.txt"), got, sizeof got) == 1);
	result_free(&res);

	/* SIZE mismatch: EIO, no file, no temporary file. */
	r = req1("write", P("short"));
	r.has_size = true;
	r.size = 5;
	run(&r, "abc", 3, &res);
	CHECK(failed_with(&res, EIO));
	CHECK(!exists(P("short")) && !has_temp(root));
	result_free(&res);
	r = req1("write", P("long"));
	r.has_size = true;
	r.size = 5;
	run(&r, "abcdef", 6, &res);
	CHECK(failed_with(&res, EIO));
	CHECK(!exists(P("long")) && !has_temp(root));
	result_free(&res);
	/* 64-bit SIZE: 4 GiB + 5 is not 5. */
	r = req1("write", P("big"));
	r.has_size = true;
	r.size = (1ull << 32) + 5;
	run(&r, "abcde", 5, &res);
	CHECK(failed_with(&res, EIO));
	CHECK(!exists(P("big")) && !has_temp(root));
	result_free(&res);
	/* A failed replace keeps the old file. */
	r = req1("write", P("a.txt"));
	r.has_size = true;
	r.size = 100;
	run(&r, "abc", 3, &res);
	CHECK(failed_with(&res, EIO) && get_file(P("a.txt"), got, sizeof got) == 6);
	result_free(&res);

	/* Through a symlink: the target is written, the link stays. */
	put_file(P("target"), "old", 0600);
	CHECK(symlink("target", P("link")) == 0);
	r = req1("write", P("link"));
	run(&r, "new!", 4, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && strcmp(recs[0].name, "target") == 0);
	CHECK(get_file(P("target"), got, sizeof got) == 4 && strcmp(got, "new!") == 0);
	CHECK(lstat(P("link"), &st) == 0 && S_ISLNK(st.st_mode) &&
	      (stat(P("target"), &st), (st.st_mode & 0777) == 0600));
	result_free(&res);
	/* A dangling link: its target is created. */
	CHECK(symlink("p/created", P("dangling")) == 0);
	r = req1("write", P("dangling"));
	run(&r, "d", 1, &res);
	CHECK(ok(&res) && get_file(P("p/created"), got, sizeof got) == 1);
	result_free(&res);

	/* Names with odd bytes, and a name near NAME_MAX (the temporary name is shortened). */
	r = req1("write", P("odd \n\xff name"));
	run(&r, "o", 1, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && strcmp(recs[0].name, "odd \n\xff name") == 0);
	result_free(&res);
	char longname[NAME_MAX + 1];
	memset(longname, 'n', NAME_MAX);
	longname[NAME_MAX] = 0;
	r = req1("write", P(longname));
	run(&r, "l", 1, &res);
	CHECK(ok(&res) && exists(P(longname)));
	result_free(&res);

	/* Beyond PATH_MAX. */
	char *huge = malloc(PATH_MAX + 100);
	memset(huge, 'a', PATH_MAX + 99);
	huge[0] = '/';
	huge[PATH_MAX + 99] = 0;
	r = req1("write", huge);
	run(&r, "x", 1, &res);
	CHECK(failed_with(&res, ENAMETOOLONG));
	result_free(&res);
	r = req1("stat", huge);
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENAMETOOLONG));
	result_free(&res);
	free(huge);

	/* Several MiB through the pipe (short reads and writes). */
	size_t big = 6u << 20;
	char *data = malloc(big);
	for (size_t i = 0; i < big; i++)
		data[i] = (char)(i * 7 + (i >> 13));
	r = req1("write", P("large"));
	r.has_size = true;
	r.size = big;
	run(&r, data, big, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].size == big);
	result_free(&res);
	/* ... and read back. */
	r = req1("read", P("large"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && res.out.len == big && memcmp(res.out.p, data, big) == 0);
	result_free(&res);
	free(data);
}

/* SIGTERM while the contents are still arriving: no temporary file, no
 * target, the old file intact, ECANCELED. */
static void test_write_cancel(void)
{
	for (int existing = 0; existing < 2; existing++) {
		const char *target = P(existing ? "cancel-old" : "cancel-new");
		if (existing)
			put_file(target, "keep", 0644);
		struct fop_req r = req1("write", target);
		r.has_size = true;
		r.size = 1 << 20;
		struct child c;
		spawn_op(&r, true, &c);
		CHECK(write(c.in, "partial", 7) == 7);
		uint64_t end = now_ms() + 5000;
		while (!has_temp(root) && now_ms() < end)
			usleep(1000);
		CHECK(has_temp(root));
		usleep(20000); /* likely blocked in read(0) now */
		kill(c.pid, SIGTERM);
		struct result res;
		finish_op(&c, NULL, 0, &res); /* stdin stays open: only the signal ends it */
		CHECK(failed_with(&res, ECANCELED));
		CHECK(!has_temp(root));
		char got[64];
		if (existing)
			CHECK(get_file(target, got, sizeof got) == 4 && strcmp(got, "keep") == 0);
		else
			CHECK(!exists(target));
		result_free(&res);
	}
}

static void test_read_stat(void)
{
	struct result res;
	put_file(P("r.txt"), "contents", 0640);
	struct fop_req r = req1("read", P("r.txt"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && res.out.len == 8 && memcmp(res.out.p, "contents", 8) == 0);
	result_free(&res);
	r = req1("read", P("nothing"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT) && res.out.len == 0);
	result_free(&res);
	mkdir(P("rdir"), 0755);
	r = req1("read", P("rdir"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EISDIR));
	result_free(&res);
	/* A FIFO is refused at once (not read as empty, not waited on). */
	CHECK(mkfifo(P("fifo"), 0644) == 0);
	r = req1("read", P("fifo"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EINVAL) && res.out.len == 0 &&
	      memmem(res.err.p, res.err.len, "FIFO", 4) != NULL);
	result_free(&res);
	/* So is a device. */
	r = req1("read", "/dev/null");
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EINVAL) &&
	      memmem(res.err.p, res.err.len, "character device", 16) != NULL);
	result_free(&res);
	/* A procfs file reports size 0 and streams its contents. */
	r = req1("read", "/proc/self/status");
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && res.out.len > 0 && memcmp(res.out.p, "Name:", 5) == 0);
	result_free(&res);

	r = req1("stat", P("r.txt"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1);
	CHECK(recs[0].mode == (S_IFREG | 0640) && recs[0].size == 8 && !recs[0].has_link);
	CHECK(strcmp(recs[0].name, "r.txt") == 0 && strcmp(recs[0].path, P("r.txt")) == 0);
	struct stat st;
	stat(P("r.txt"), &st);
	CHECK(recs[0].mtime ==
	      (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec);
	CHECK(recs[0].uid == st.st_uid && recs[0].gid == st.st_gid);
	result_free(&res);

	CHECK(symlink("r.txt", P("rlink")) == 0);
	r = req1("stat", P("rlink"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && S_ISLNK(recs[0].mode) && recs[0].has_link &&
	      strcmp(recs[0].link, "r.txt") == 0 && recs[0].size == 5);
	result_free(&res);
	r.flags = FOP_FOLLOW;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && S_ISREG(recs[0].mode) && !recs[0].has_link &&
	      strcmp(recs[0].name, "rlink") == 0);
	result_free(&res);

	r = req1("stat", P("rdir/"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && S_ISDIR(recs[0].mode) &&
	      strcmp(recs[0].name, "rdir") == 0);
	result_free(&res);
	r = req1("stat", "/");
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && strcmp(recs[0].name, "/") == 0);
	result_free(&res);
	r = req1("stat", P("nothing"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);

	/* Beyond 4 GiB (a sparse file). */
	int fd = open(P("sparse"), O_WRONLY | O_CREAT, 0644);
	CHECK(fd >= 0 && ftruncate(fd, (off_t)5 << 30) == 0);
	close(fd);
	r = req1("stat", P("sparse"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].size == 5ull << 30);
	result_free(&res);
	unlink(P("sparse"));
}

static void test_list(void)
{
	struct result res;
	mkdir(P("L"), 0755);
	mkdir(P("L/a"), 0755);
	mkdir(P("L/a/b"), 0755);
	put_file(P("L/a/b/c.txt"), "c", 0644);
	put_file(P("L/a/f.txt"), "ff", 0644);
	CHECK(symlink("a", P("L/link")) == 0);

	struct fop_req r = req1("list", P("L"));
	run(&r, NULL, 0, &res);
	int n = out_records(&res);
	CHECK(ok(&res) && n == 2);
	struct rec *a = find_rec(n, P("L/a")), *l = find_rec(n, P("L/link"));
	CHECK(a && S_ISDIR(a->mode) && strcmp(a->name, "a") == 0);
	CHECK(l && S_ISLNK(l->mode) && l->has_link && strcmp(l->link, "a") == 0);
	result_free(&res);

	r.depth = 2;
	run(&r, NULL, 0, &res);
	n = out_records(&res);
	CHECK(ok(&res) && n == 4 && find_rec(n, P("L/a/b")) && find_rec(n, P("L/a/f.txt")));
	CHECK(!find_rec(n, P("L/link/b"))); /* symlinks are not followed */
	result_free(&res);

	r.depth = 0xffffffffu;
	run(&r, NULL, 0, &res);
	n = out_records(&res);
	struct rec *c = find_rec(n, P("L/a/b/c.txt"));
	CHECK(ok(&res) && n == 5 && c && c->size == 1 && strcmp(c->name, "c.txt") == 0);
	result_free(&res);

	/* A trailing slash is not doubled. */
	r = req1("list", P("L/a/"));
	run(&r, NULL, 0, &res);
	n = out_records(&res);
	CHECK(ok(&res) && n == 2 && find_rec(n, P("L/a/f.txt")));
	result_free(&res);

	/* An empty directory: no records. */
	mkdir(P("L/empty"), 0755);
	r = req1("list", P("L/empty"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && res.out.len == 0);
	result_free(&res);

	r = req1("list", P("L/missing"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);
	r = req1("list", P("L/a/f.txt"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOTDIR));
	result_free(&res);

	/* Many entries: several buffers' worth of records. */
	mkdir(P("many"), 0755);
	char name[64];
	for (int i = 0; i < 3000; i++) {
		snprintf(name, sizeof name, "many/entry-with-a-longish-name-%05d", i);
		put_file(P(name), "", 0644);
	}
	r = req1("list", P("many"));
	run(&r, NULL, 0, &res);
	size_t off = 0;
	int total = 0;
	for (;;) {
		size_t used = 0;
		int k = decode(res.out.p + off, res.out.len - off, recs, MAXREC, &used);
		if (k <= 0)
			break;
		total += k;
		off += used;
	}
	CHECK(ok(&res) && total == 3000 && off == res.out.len);
	result_free(&res);
}

static void test_mkdir(void)
{
	struct result res;
	struct fop_req r = req1("mkdir", P("M"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].has_event && recs[0].event == 1);
	CHECK(recs[0].mode == (S_IFDIR | 0755) && strcmp(recs[0].name, "M") == 0);
	result_free(&res);
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EEXIST));
	result_free(&res);
	r.flags = FOP_PARENTS;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].event == 0);
	result_free(&res);

	r = req1("mkdir", P("M/x/y/"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);
	r.flags = FOP_PARENTS;
	r.has_mode = true;
	r.mode = 0711;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && recs[0].event == 1 &&
	      recs[0].mode == (S_IFDIR | 0711));
	CHECK(strcmp(recs[0].path, P("M/x/y")) == 0);
	result_free(&res);

	/* A file in the way. */
	put_file(P("M/file"), "", 0644);
	r = req1("mkdir", P("M/file"));
	r.flags = FOP_PARENTS;
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EEXIST));
	result_free(&res);
	r = req1("mkdir", P("M/file/sub"));
	r.flags = FOP_PARENTS;
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOTDIR));
	result_free(&res);
}

static void test_remove(void)
{
	struct result res;
	mkdir(P("R"), 0755);
	put_file(P("R/f"), "x", 0644);
	struct fop_req r = req1("remove", P("R/f"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && res.out.len == 0 && !exists(P("R/f")));
	result_free(&res);
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);

	/* Non-empty without RECURSIVE: ENOTEMPTY; with: gone. */
	mkdir(P("R/d"), 0755);
	mkdir(P("R/d/e"), 0755);
	put_file(P("R/d/e/g"), "x", 0644);
	put_file(P("R/d/h"), "x", 0444);
	r = req1("remove", P("R/d"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOTEMPTY) && exists(P("R/d/e/g")));
	result_free(&res);
	r.flags = FOP_RECURSIVE;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && !exists(P("R/d")));
	result_free(&res);

	/* An empty directory without RECURSIVE. */
	mkdir(P("R/empty"), 0755);
	r = req1("remove", P("R/empty/"));
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && !exists(P("R/empty")));
	result_free(&res);

	/* A symlink to a directory: the link goes, never the target (with or
	 * without RECURSIVE, with or without a trailing slash). */
	mkdir(P("R/keep"), 0755);
	put_file(P("R/keep/precious"), "p", 0644);
	for (int i = 0; i < 3; i++) {
		CHECK(symlink("keep", P("R/ln")) == 0);
		r = req1("remove", i == 2 ? P("R/ln/") : P("R/ln"));
		r.flags = i ? FOP_RECURSIVE : 0;
		run(&r, NULL, 0, &res);
		CHECK(ok(&res) && !exists(P("R/ln")) && exists(P("R/keep/precious")));
		result_free(&res);
	}

	/* RECURSIVE never follows a symlink inside the tree. */
	mkdir(P("R/tree"), 0755);
	mkdir(P("R/tree/sub"), 0755);
	CHECK(symlink(P("R/keep"), P("R/tree/sub/abs")) == 0);
	CHECK(symlink("../../keep", P("R/tree/sub/rel")) == 0);
	CHECK(symlink(P("R/keep/precious"), P("R/tree/file-link")) == 0);
	r = req1("remove", P("R/tree"));
	r.flags = FOP_RECURSIVE;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && !exists(P("R/tree")) && exists(P("R/keep/precious")));
	result_free(&res);

	/* A symlink swapped in for a directory while the remove runs never
	 * takes it outside the tree. */
	mkdir(P("R/outside"), 0755);
	put_file(P("R/outside/keep"), "k", 0644);
	mkdir(P("R/outside/d"), 0755);
	put_file(P("R/outside/d/keep2"), "k", 0644);
	for (int round = 0; round < 20; round++) {
		mkdir(P("R/race"), 0755);
		mkdir(P("R/race/sub"), 0755);
		mkdir(P("R/race/sub/d"), 0755);
		for (int i = 0; i < 20; i++) {
			char nm[32];
			snprintf(nm, sizeof nm, "R/race/sub/f%d", i);
			put_file(P(nm), "", 0644);
			snprintf(nm, sizeof nm, "R/race/sub/d/g%d", i);
			put_file(P(nm), "", 0644);
		}
		pid_t swapper = fork();
		if (swapper == 0) {
			char sub[PATH_MAX], moved[PATH_MAX], out[PATH_MAX];
			snprintf(sub, sizeof sub, "%s/R/race/sub", root);
			snprintf(moved, sizeof moved, "%s/R/race-moved", root);
			snprintf(out, sizeof out, "%s/R/outside", root);
			for (uint64_t end = now_ms() + 300; now_ms() < end;) {
				if (rename(sub, moved) == 0) {
					if (symlink(out, sub) == 0) {
						usleep(100);
						unlink(sub);
					}
					rename(moved, sub);
				}
				usleep(50);
			}
			_exit(0);
		}
		usleep((useconds_t)(round * 10));
		r = req1("remove", P("R/race"));
		r.flags = FOP_RECURSIVE;
		run(&r, NULL, 0, &res);
		result_free(&res);
		kill(swapper, SIGKILL);
		wait_status(swapper);
		CHECK(exists(P("R/outside/keep")) && exists(P("R/outside/d/keep2")));
		rm_rf(P("R/race"));
		rm_rf(P("R/race-moved"));
	}

	/* Odd names. */
	mkdir(P("R/odd\n\xfe"), 0755);
	put_file(P("R/odd\n\xfe/ \t"), "", 0644);
	r = req1("remove", P("R/odd\n\xfe"));
	r.flags = FOP_RECURSIVE;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && !exists(P("R/odd\n\xfe")));
	result_free(&res);

	/* A deep tree (more levels than one would keep descriptors for lightly). */
	char deep[PATH_MAX] = "R/deep";
	mkdir(P(deep), 0755);
	for (int i = 0; i < 200; i++) {
		strcat(deep, "/d");
		CHECK(mkdir(P(deep), 0755) == 0 || i > 0);
	}
	r = req1("remove", P("R/deep"));
	r.flags = FOP_RECURSIVE;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && !exists(P("R/deep")));
	result_free(&res);
}

static void test_rename(void)
{
	struct result res;
	mkdir(P("N"), 0755);
	put_file(P("N/a"), "A", 0644);
	put_file(P("N/b"), "B", 0644);
	char got[16];

	struct fop_req r = {.op = "rename", .args = {P("N/a"), P("N/c")}, .nargs = 2};
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && strcmp(recs[0].path, P("N/c")) == 0 &&
	      strcmp(recs[0].name, "c") == 0 && recs[0].size == 1);
	CHECK(!exists(P("N/a")) && get_file(P("N/c"), got, sizeof got) == 1 && got[0] == 'A');
	result_free(&res);

	/* NO_REPLACE: EEXIST, both intact. Without: replaced. */
	r = (struct fop_req){
		.op = "rename", .args = {P("N/c"), P("N/b")}, .nargs = 2, .flags = FOP_NO_REPLACE};
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EEXIST));
	CHECK(get_file(P("N/b"), got, sizeof got) == 1 && got[0] == 'B' && exists(P("N/c")));
	result_free(&res);
	r.flags = 0;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && get_file(P("N/b"), got, sizeof got) == 1 && got[0] == 'A' &&
	      !exists(P("N/c")));
	result_free(&res);

	/* PARENTS creates the target's directories. */
	r = (struct fop_req){.op = "rename", .args = {P("N/b"), P("N/x/y/b")}, .nargs = 2};
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);
	r.flags = FOP_PARENTS;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && exists(P("N/x/y/b")));
	result_free(&res);

	/* A directory; a missing source. */
	r = (struct fop_req){.op = "rename", .args = {P("N/x"), P("N/z/")}, .nargs = 2};
	run(&r, NULL, 0, &res);
	CHECK(ok(&res) && out_records(&res) == 1 && S_ISDIR(recs[0].mode) && exists(P("N/z/y/b")));
	result_free(&res);
	r = (struct fop_req){.op = "rename", .args = {P("N/none"), P("N/z2")}, .nargs = 2};
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);
}

/* ---- watch ---- */

struct watch {
	struct child c;
	struct buf out;
	size_t off;
};

/* Waits for the next record (up to ms); false on timeout or end. */
static bool watch_next(struct watch *w, struct rec *r, int ms)
{
	uint64_t end = now_ms() + (uint64_t)ms;
	for (;;) {
		size_t used = 0;
		if (decode(w->out.p ? w->out.p + w->off : (const uint8_t *)"", w->out.len - w->off,
			   r, 1, &used) == 1) {
			w->off += used;
			return true;
		}
		uint64_t now = now_ms();
		if (now >= end || w->c.out < 0)
			return false;
		struct pollfd pfd = {.fd = w->c.out, .events = POLLIN};
		if (poll(&pfd, 1, (int)(end - now)) <= 0)
			continue;
		uint8_t tmp[4096];
		ssize_t n = read(w->c.out, tmp, sizeof tmp);
		if (n <= 0) {
			close(w->c.out);
			w->c.out = -1;
			continue;
		}
		buf_add(&w->out, tmp, (size_t)n);
	}
}

/* Waits for a record with this event and path (skipping others). */
static bool watch_expect(struct watch *w, uint32_t event, const char *path, uint32_t type)
{
	struct rec r;
	while (watch_next(w, &r, 5000)) {
		if (r.has_event && r.event == event && strcmp(r.path, path) == 0)
			return r.mode == type;
	}
	fprintf(stderr, "  no event %u for %s\n", event, path);
	return false;
}

static int watch_end(struct watch *w)
{
	struct result res;
	finish_op(&w->c, NULL, 0, &res);
	int st = res.status;
	if (res.err.len)
		fprintf(stderr, "  watch wrote %zu bytes on fd 2\n", res.err.len);
	result_free(&res);
	free(w->out.p);
	return st;
}

static void test_watch(void)
{
	mkdir(P("W"), 0755);
	put_file(P("W/pre"), "", 0644);
	mkdir(P("W/old"), 0755);
	struct fop_req r = req1("watch", P("W"));
	r.flags = FOP_RECURSIVE;
	struct watch w = {0};
	spawn_op(&r, false, &w.c);
	struct rec rec;
	CHECK(watch_next(&w, &rec, 5000) && rec.has_event && rec.event == FOP_EV_READY &&
	      strcmp(rec.path, P("W")) == 0 && rec.mode == S_IFDIR);

	put_file(P("W/f"), "1", 0644);
	CHECK(watch_expect(&w, FOP_EV_CREATE, P("W/f"), S_IFREG));
	int fd = open(P("W/f"), O_WRONLY | O_APPEND);
	CHECK(fd >= 0 && write(fd, "2", 1) == 1);
	close(fd);
	CHECK(watch_expect(&w, FOP_EV_WRITE, P("W/f"), S_IFREG));
	chmod(P("W/f"), 0600);
	CHECK(watch_expect(&w, FOP_EV_CHMOD, P("W/f"), S_IFREG));
	rename(P("W/f"), P("W/g"));
	CHECK(watch_expect(&w, FOP_EV_RENAME_FROM, P("W/f"), S_IFREG));
	CHECK(watch_expect(&w, FOP_EV_RENAME_TO, P("W/g"), S_IFREG));
	unlink(P("W/g"));
	CHECK(watch_expect(&w, FOP_EV_REMOVE, P("W/g"), S_IFREG));

	/* Recursive: an existing subdirectory, and a new one (watched at once). */
	put_file(P("W/old/x"), "", 0644);
	CHECK(watch_expect(&w, FOP_EV_CREATE, P("W/old/x"), S_IFREG));
	mkdir(P("W/new"), 0755);
	CHECK(watch_expect(&w, FOP_EV_CREATE, P("W/new"), S_IFDIR));
	usleep(50000);
	put_file(P("W/new/y"), "", 0644);
	CHECK(watch_expect(&w, FOP_EV_CREATE, P("W/new/y"), S_IFREG));
	/* A subdirectory moved within the tree: its events carry the new path. */
	rename(P("W/new"), P("W/moved"));
	CHECK(watch_expect(&w, FOP_EV_RENAME_TO, P("W/moved"), S_IFDIR));
	put_file(P("W/moved/z"), "", 0644);
	CHECK(watch_expect(&w, FOP_EV_CREATE, P("W/moved/z"), S_IFREG));

	/* SIGTERM ends it with status 0 and nothing on fd 2. */
	kill(w.c.pid, SIGTERM);
	CHECK(watch_end(&w) == 0);

	/* Not recursive: changes in subdirectories are not reported. (P's
	 * buffers rotate: build requests afresh.) */
	r = req1("watch", P("W"));
	memset(&w, 0, sizeof w);
	spawn_op(&r, false, &w.c);
	CHECK(watch_next(&w, &rec, 5000) && rec.event == FOP_EV_READY && rec.mode == S_IFDIR);
	put_file(P("W/old/ignored"), "", 0644);
	put_file(P("W/seen"), "", 0644);
	CHECK(watch_next(&w, &rec, 5000) && rec.event == FOP_EV_CREATE &&
	      strcmp(rec.path, P("W/seen")) == 0);

	/* The watched directory deleted: a final remove, exit 0. */
	r = (struct fop_req){.op = "remove", .args = {P("W")}, .nargs = 1, .flags = FOP_RECURSIVE};
	struct result res;
	run(&r, NULL, 0, &res);
	CHECK(ok(&res));
	result_free(&res);
	CHECK(watch_expect(&w, FOP_EV_REMOVE, P("W"), S_IFDIR));
	CHECK(watch_end(&w) == 0);

	/* A file: its own changes, with its own path. */
	put_file(P("wf"), "", 0644);
	r = req1("watch", P("wf"));
	memset(&w, 0, sizeof w);
	spawn_op(&r, false, &w.c);
	CHECK(watch_next(&w, &rec, 5000) && rec.event == FOP_EV_READY && rec.mode == S_IFREG);
	put_file(P("wf"), "changed", 0644);
	CHECK(watch_expect(&w, FOP_EV_WRITE, P("wf"), S_IFREG));
	unlink(P("wf"));
	CHECK(watch_expect(&w, FOP_EV_REMOVE, P("wf"), S_IFREG));
	CHECK(watch_end(&w) == 0);

	/* A missing path is an error. */
	r = req1("watch", P("nowhere"));
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, ENOENT));
	result_free(&res);

	/* SIGTERM right after start (possibly before READY): still ends promptly. */
	mkdir(P("W2"), 0755);
	r = req1("watch", P("W2"));
	for (int i = 0; i < 20; i++) {
		struct child c;
		spawn_op(&r, false, &c);
		if (i % 2)
			usleep((useconds_t)(i * 200));
		kill(c.pid, SIGTERM);
		uint64_t t0 = now_ms();
		finish_op(&c, NULL, 0, &res);
		CHECK((res.status == 0 || res.status == 128 + SIGTERM) && now_ms() - t0 < 3000);

		result_free(&res);
	}
}

/* ---- permissions (as an unprivileged user) ---- */

static void test_permissions(void)
{
	struct result res;
	bool root_user = geteuid() == 0;
	mkdir(P("perm"), 0777);
	chmod(P("perm"), 0777);
	put_file(P("perm/ro"), "ro", 0444);
	mkdir(P("perm/closed"), 0755);
	put_file(P("perm/closed/secret"), "", 0644);
	chmod(P("perm/closed"), 0);
	if (root_user) {
		/* Owned by root; the operations run as nobody. */
		as_uid = 65534;
	}

	struct fop_req r = req1("write", P("perm/ro"));
	r.is_root = false;
	run(&r, "x", 1, &res);
	CHECK(failed_with(&res, EACCES));
	char got[16];
	CHECK(get_file(P("perm/ro"), got, sizeof got) == 2 && !has_temp(P("perm")));
	result_free(&res);

	/* An unreadable subdirectory is skipped; an unreadable path is an error. */
	r = req1("list", P("perm"));
	r.depth = 3;
	r.is_root = false;
	run(&r, NULL, 0, &res);
	int n = out_records(&res);
	CHECK(ok(&res) && n == 2 && find_rec(n, P("perm/closed")) &&
	      !find_rec(n, P("perm/closed/secret")));
	result_free(&res);
	r = req1("list", P("perm/closed"));
	r.is_root = false;
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EACCES));
	result_free(&res);

	/* mount is for root only. */
	r = (struct fop_req){.op = "mount", .args = {"tag", P("perm/mnt")}, .nargs = 2};
	run(&r, NULL, 0, &res);
	CHECK(failed_with(&res, EPERM) && !exists(P("perm/mnt")));
	result_free(&res);

	as_uid = -1;
	chmod(P("perm/closed"), 0755);

	if (root_user) {
		/* Root replacing a file keeps its owner and group. */
		put_file(P("perm/owned"), "o", 0640);
		CHECK(chown(P("perm/owned"), 65534, 65534) == 0);
		r = req1("write", P("perm/owned"));
		run(&r, "new", 3, &res);
		struct stat st;
		CHECK(ok(&res) && stat(P("perm/owned"), &st) == 0 && st.st_uid == 65534 &&
		      st.st_gid == 65534 && (st.st_mode & 07777) == 0640);
		CHECK(out_records(&res) == 1 && recs[0].uid == 65534);
		result_free(&res);
	}
}

/* Status 1 with one error record of errno e whose MESSAGE contains `part`. */
static bool failed_saying(const struct result *res, int e, const char *part)
{
	struct rec r;
	size_t used = 0;
	if (!failed_with(res, e) || decode(res->err.p, res->err.len, &r, 1, &used) != 1)
		return false;
	if (!strstr(r.msg, part))
		fprintf(stderr, "  expected a message with \"%s\", got: %s\n", part, r.msg);
	return strstr(r.msg, part) != NULL;
}

/* A stand-in for the 9P relay: answers one control request with `answer`
 * (or, with answer < 0, closes without one). Returns its control socket at
 * fd 100 (beyond the fds the operation's child closes). */
static int fake_relay(int answer, pid_t *pid)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0)
		exit(2);
	*pid = fork();
	if (*pid == 0) {
		close(sv[0]);
		uint8_t req[16];
		union {
			struct cmsghdr h;
			uint8_t b[CMSG_SPACE(sizeof(int) * 2)];
		} cbuf;
		struct iovec iov = {.iov_base = req, .iov_len = sizeof req};
		struct msghdr m = {.msg_iov = &iov,
				   .msg_iovlen = 1,
				   .msg_control = cbuf.b,
				   .msg_controllen = sizeof cbuf.b};
		ssize_t n = recvmsg(sv[1], &m, 0);
		struct cmsghdr *h = CMSG_FIRSTHDR(&m);
		if (n != P9R_REQ_LEN || !h || h->cmsg_len != CMSG_LEN(sizeof(int) * 2))
			_exit(3);
		int fds[2];
		memcpy(fds, CMSG_DATA(h), sizeof fds);
		if (answer >= 0 && write(fds[1], &answer, sizeof answer) != sizeof answer)
			_exit(4);
		_exit(0);
	}
	close(sv[1]);
	dup2(sv[0], 100);
	close(sv[0]);
	return 100;
}

static void test_relay_mount(void)
{
	if (geteuid() != 0)
		return; /* mount is root only: nothing of the relay path runs otherwise */
	struct result res;
	struct fop_req r = {.op = "mount",
			    .args = {"7", P("rm/mnt")},
			    .nargs = 2,
			    .flags = FOP_RELAY,
			    .is_root = true,
			    .relay_fd = -1};
	/* The channel: decimal 0..65535, nothing else. */
	const char *bad[] = {"", "65536", "-1", "7x", "07", "tag"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		r.args[0] = bad[i];
		run(&r, NULL, 0, &res);
		CHECK(failed_saying(&res, EINVAL, "channel") && !exists(P("rm/mnt")));
		result_free(&res);
	}
	r.args[0] = "7";
	/* PID 1 could not start the relay. */
	r.relay_err = EAGAIN;
	run(&r, NULL, 0, &res);
	CHECK(failed_saying(&res, EAGAIN, "9P relay"));
	result_free(&res);
	/* The relay's answers. */
	pid_t pid;
	r.relay_fd = fake_relay(ENODEV, &pid);
	run(&r, NULL, 0, &res);
	CHECK(failed_saying(&res, ENODEV, "no roost.p9 port"));
	result_free(&res);
	CHECK(wait_status(pid) == 0);
	r.relay_fd = fake_relay(EEXIST, &pid);
	run(&r, NULL, 0, &res);
	CHECK(failed_saying(&res, EEXIST, "channel 7 is in use"));
	result_free(&res);
	CHECK(wait_status(pid) == 0);
	/* It died before answering; and it is gone before the request. */
	r.relay_fd = fake_relay(-1, &pid);
	run(&r, NULL, 0, &res);
	CHECK(failed_saying(&res, ECONNRESET, "relay is gone"));
	result_free(&res);
	CHECK(wait_status(pid) == 0);
	run(&r, NULL, 0, &res);
	CHECK(failed_saying(&res, EPIPE, "relay is gone"));
	result_free(&res);
	close(100);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	snprintf(root, sizeof root, "/tmp/roost-fileops-XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 2;
	}
	chmod(root, 0755);

	test_check();
	test_write();
	test_write_cancel();
	test_read_stat();
	test_list();
	test_mkdir();
	test_remove();
	test_rename();
	test_watch();
	test_permissions();
	test_relay_mount();

	if (rm_rf(root) != 0)
		fprintf(stderr, "could not remove %s\n", root);
	printf("fileops: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
