/*
 * The agent's built-in file operations (docs/PROTOCOL.md, "Calls").
 *
 * They run in a child of the agent that is already chrooted into the command
 * root, in the requested CWD, with the requested user's ids: fd 0 is the
 * host's stdin (or /dev/null), fd 1 and fd 2 go to the host. Nothing here
 * runs in PID 1 itself. No global state beyond the SIGTERM flag.
 */
#ifndef ROOST_FILEOPS_H
#define ROOST_FILEOPS_H

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CALL_FLAGS bits. */
#define FOP_RECURSIVE  0x1u
#define FOP_PARENTS    0x2u
#define FOP_NO_REPLACE 0x4u
#define FOP_FOLLOW     0x8u
#define FOP_READ_ONLY  0x10u
#define FOP_LAYER      0x20u /* archive: the operand is a sealed layer's number (root only) */
#define FOP_RELAY      0x40u /* mount: over the 9P relay (operands: channel, target) */

/* watch EVENT values. */
enum fop_event {
	FOP_EV_READY = 0,
	FOP_EV_CREATE = 1,
	FOP_EV_WRITE = 2,
	FOP_EV_REMOVE = 3,
	FOP_EV_RENAME_FROM = 4,
	FOP_EV_RENAME_TO = 5,
	FOP_EV_CHMOD = 6,
	FOP_EV_OVERFLOW = 7,
};

#define FOP_MAX_ARGS 2

/* One decoded CALL. Strings are NUL-terminated and owned by the caller. */
struct fop_req {
	const char *op;
	const char *args[FOP_MAX_ARGS];
	unsigned nargs;
	uint32_t flags;
	bool has_mode;
	uint32_t mode;
	uint32_t depth; /* list; 0 = default (1) */
	bool has_size;
	uint64_t size; /* write */
	bool is_root;  /* the effective uid is 0 */
	/* Mounts the command root's proc, sys and /dev again (commit); NULL
	 * when there is no command root. */
	void (*remount_root)(void);
	/* mount with FOP_RELAY: the control socket to the 9P relay (p9relay.h),
	 * or -1 when PID 1 could not start it (relay_err: why). */
	int relay_fd;
	int relay_err;
};

/* The failure of an operation: becomes the error record on fd 2. */
struct fop_err {
	int errnum;
	char path[PATH_MAX];
	char msg[256];
};

/* Set by the SIGTERM handler fop_run installs; long loops check it. */
extern volatile sig_atomic_t fop_cancelled;

/* Records `err` (errno value, path, what was being done). Returns -1. */
int fop_fail(struct fop_err *err, int errnum, const char *path, const char *what);

/* Writes all of buf to fd (retrying short writes and EINTR); 0 or -1 with errno. */
int fop_write_all(int fd, const void *buf, size_t len);

/*
 * Checks the op name and operand count. 0 if the request is runnable, or -1
 * with a message for ERROR BAD_REQUEST (the agent checks before forking).
 */
int fop_check(const struct fop_req *r, char *msg, size_t msglen);

/* Runs the operation on fds 0, 1, 2 and returns the exit status (0, or 1 after
 * writing the error record to fd 2). */
int fop_run(const struct fop_req *r);

/* ---- tar (tar.c) ---- */

/* Writes a POSIX pax tar stream of `path` to out_fd, entries named
 * basename(path)[/...]. Does not follow symlinks (a symlink `path` is stored
 * as a link). 0, or -1 with *err filled. */
int tar_archive(int out_fd, const char *path, bool xattrs, struct fop_err *err);

/* `commit` (layer.c): seals the command root's upper layer and starts a new
 * one (`remount`: r->remount_root); writes the sealed layer's number to out_fd. Root only, not chrooted.
 * 0, or -1 with *err filled. */
int layer_commit(int out_fd, void (*remount)(void), struct fop_err *err);

/* The directory of sealed layer `operand` (a decimal number), as a path
 * ending in "/." for `archive`. 0, or -1 with *err filled. */
int layer_path(const char *operand, char *out, size_t size, struct fop_err *err);

/* The call runs outside the command root (commit, and archive of a layer). */
bool fop_outside_root(const struct fop_req *r);

/* Extracts a tar stream read from in_fd below `dir` (FOP_PARENTS: create
 * `dir` and its parents first). as_root: restore owners, devices,
 * setuid/setgid. 0, or -1 with *err filled. */
int tar_extract(int in_fd, const char *dir, uint32_t flags, bool as_root, struct fop_err *err);

#endif
