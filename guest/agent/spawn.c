/* EXEC and CALL, and the child side of a fork: see spawn.h. */
#include "spawn.h"

#include "agent.h"
#include "boot.h"
#include "control.h"
#include "exec.h"
#include "fileops.h"
#include "p9relay.h"
#include "port.h"
#include "proto.h"
#include "users.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define DEFAULT_TERM "xterm-256color"

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* ------------------------------------------------------------------ */
/* the child side of an exec (after fork) */

struct spawn {
	char **argv;
	char **envp;
	const char *path; /* PATH from envp */
	const char *cwd;
	const char *root; /* NULL: no chroot */
	const struct user_info *user;
	bool pty;
	int slave;                  /* PTY slave */
	int in_r, out_w, err_w;     /* pipe ends */
	const struct fop_req *call; /* a CALL: the operation (argv, envp, path unused) */
	int keep_fd;                /* an fd >= 3 the child keeps (a relay mount's), or -1 */
};

/* Writes "roost: <what>[ <subject>]: <reason>" to stderr in one write. */
static void child_say(const char *what, const char *subject, const char *reason)
{
	char buf[1024];
	int n;
	if (subject)
		n = snprintf(buf, sizeof buf, "roost: %s %s: %s\n", what, subject, reason);
	else
		n = snprintf(buf, sizeof buf, "roost: %s: %s\n", what, reason);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof buf) {
		n = sizeof buf;
		buf[n - 1] = '\n';
	}
	(void)!write(2, buf, (size_t)n);
}

/* Why child_enter failed: "<what> <subject>: strerror(err)". */
struct enter_fail {
	const char *what;
	const char *subject;
	int err;
	char idbuf[32];
};

/*
 * The common start of every child (commands and calls): signal mask `mask`,
 * a new session, stdio, the command root, CWD, and the user's ids. Returns 0,
 * or -1 with *f filled. Safe in a vfork child: system calls and writes to its
 * own stack and *f only.
 */
static int child_enter(const struct spawn *s, const sigset_t *mask, struct enter_fail *f)
{
	/* execve resets caught signals by itself; only an ignored one would
	 * survive it, and SIGPIPE is the one the agent ignores (see
	 * setup_signals). One call instead of 62: each syscall costs ~20 us
	 * under TCG, and this runs for every command. */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGPIPE, &sa, NULL);
	sigprocmask(SIG_SETMASK, mask, NULL);

	setsid();
	if (s->pty) {
		ioctl(s->slave, TIOCSCTTY, 0);
		dup2(s->slave, 0);
		dup2(s->slave, 1);
		dup2(s->slave, 2);
	} else {
		dup2(s->in_r, 0);
		dup2(s->out_w, 1);
		dup2(s->err_w, 2);
	}
	/* Everything else of the agent is O_CLOEXEC; this is a second fence
	 * (and the only one for a call, which never execs). A relay mount
	 * keeps the relay's control socket. */
	if (s->keep_fd >= 3) {
		if (s->keep_fd > 3)
			syscall(SYS_close_range, 3u, (unsigned)s->keep_fd - 1, 0u);
		syscall(SYS_close_range, (unsigned)s->keep_fd + 1, ~0u, 0u);
	} else {
		syscall(SYS_close_range, 3u, ~0u, 0u);
	}

	if (s->root) {
		if (chroot(s->root) < 0) {
			*f = (struct enter_fail){
				.what = "chroot", .subject = s->root, .err = errno};
			return -1;
		}
		if (chdir("/") < 0) {
			*f = (struct enter_fail){.what = "chdir", .subject = "/", .err = errno};
			return -1;
		}
	}
	/* As root, before dropping privileges (like a container runtime): a
	 * CWD the user cannot search still works. */
	if (chdir(s->cwd) < 0) {
		*f = (struct enter_fail){.what = "cwd", .subject = s->cwd, .err = errno};
		return -1;
	}
	/* Raw system calls: this runs in a vfork child, and libc's set*id
	 * wrappers synchronise all threads of the (shared) process. */
	if (syscall(SYS_setgroups, (size_t)s->user->ngroups, s->user->groups) < 0 ||
	    syscall(SYS_setresgid, s->user->gid, s->user->gid, s->user->gid) < 0) {
		f->what = "setgid";
		f->err = errno;
		snprintf(f->idbuf, sizeof f->idbuf, "%u", (unsigned)s->user->gid);
		f->subject = f->idbuf;
		return -1;
	}
	if (syscall(SYS_setresuid, s->user->uid, s->user->uid, s->user->uid) < 0) {
		f->what = "setuid";
		f->err = errno;
		snprintf(f->idbuf, sizeof f->idbuf, "%u", (unsigned)s->user->uid);
		f->subject = f->idbuf;
		return -1;
	}
	return 0;
}

static _Noreturn void child_run(const struct spawn *s)
{
	sigset_t none;
	sigemptyset(&none);
	struct enter_fail f;
	if (child_enter(s, &none, &f) < 0) {
		child_say(f.what, f.subject, strerror(f.err));
		_exit(126);
	}
	/* execvpe(3) searches the agent's own PATH; search the command's. */
	const char *file = s->argv[0];
	int err = ENOENT;
	if (file[0] == 0) {
		err = ENOENT;
	} else if (strchr(file, '/')) {
		execve(file, s->argv, s->envp);
		err = errno;
	} else {
		size_t fl = strlen(file);
		bool eacces = false;
		char buf[PATH_MAX];
		const char *p = s->path ? s->path : DEFAULT_PATH;
		err = ENOENT;
		for (;;) {
			const char *z = strchrnul(p, ':');
			size_t dl = (size_t)(z - p);
			if (dl + 1 + fl < sizeof buf) {
				size_t o = 0;
				if (dl) { /* an empty element means the current directory */
					memcpy(buf, p, dl);
					buf[dl] = '/';
					o = dl + 1;
				}
				memcpy(buf + o, file, fl + 1);
				/* A failed execve first builds a new mm and copies argv and
				 * envp (~0.8 ms under TCG); a miss found by access() is only
				 * a path walk. */
				if (access(buf, F_OK) == 0)
					execve(buf, s->argv, s->envp);
				switch (errno) {
				case EACCES:
					eacces = true;
					break;
				case ENOENT:
				case ENOTDIR:
				case ENAMETOOLONG:
				case ELOOP:
				case ESTALE:
					break;
				default:
					err = errno;
					goto fail;
				}
			}
			if (*z == 0)
				break;
			p = z + 1;
		}
		if (eacces)
			err = EACCES;
	}
fail:
	child_say(file, NULL, strerror(err));
	_exit(err == ENOENT ? 127 : 126);
}

/* A call that could not even start: one error record on fd 2, exit 1
 * (docs/PROTOCOL.md "Calls", Results). */
static _Noreturn void call_child_fail(const struct enter_fail *f)
{
	static uint8_t mem[1024 + PATH_MAX];
	char msg[300];
	snprintf(msg, sizeof msg, "%s: %s", f->what, strerror(f->err));
	struct roost_buf b;
	roost_buf_init(&b, mem, sizeof mem);
	roost_buf_put_u32(&b, 0);
	roost_tlv_put_u32(&b, ROOST_TAG_ERRNO, (uint32_t)f->err);
	roost_tlv_put(&b, ROOST_TAG_PATH, f->subject, strnlen(f->subject, PATH_MAX));
	roost_tlv_put_str(&b, ROOST_TAG_MESSAGE, msg);
	if (!b.overflow) {
		roost_put_u32(b.data, (uint32_t)(b.len - 4));
		fop_write_all(2, b.data, b.len);
	}
	_exit(1);
}

/* The child of a CALL (after fork: it runs the agent's own code). SIGTERM
 * stays blocked until fop_run has installed its handler. */
static _Noreturn void call_child_run(const struct spawn *s)
{
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	struct enter_fail f;
	if (child_enter(s, &term, &f) < 0)
		call_child_fail(&f);
	struct fop_req req = *s->call;
	req.is_root = geteuid() == 0;
	_exit(fop_run(&req));
}

/* ------------------------------------------------------------------ */
/* EXEC and CALL */

/* A decoded EXEC or CALL (the TLVs point into the frame). */
struct exec_req {
	bool is_call;
	uint32_t nargs, nenv;
	bool has_cwd, has_user, has_op;
	struct roost_tlv cwd, user, op;
	uint32_t pty, rows, cols, timeout_ms, stdin_on, window;
	/* CALL only */
	bool has_mode, has_size;
	uint32_t mode, call_flags, depth;
	uint64_t size;
};

/*
 * vfork rather than fork: the child shares the agent's memory until it execs,
 * so no page tables are copied and torn down (about 0.5 ms a command under
 * TCG). The child only makes system calls and writes into its own stack
 * (child_run is careful about that), and never returns here. A separate,
 * non-inlined function so that no local of the caller lives across vfork.
 */
__attribute__((noinline)) static pid_t spawn_child(const struct spawn *sp)
{
	pid_t pid = vfork();
	if (pid == 0)
		child_run(sp);
	return pid;
}

/* A call runs the agent's own code (fop_run), which vfork does not allow. */
static pid_t spawn_call(const struct spawn *sp)
{
	pid_t pid = fork();
	if (pid == 0)
		call_child_run(sp);
	return pid;
}

static bool env_has(char **envp, uint32_t n, const char *key)
{
	size_t kl = strlen(key);
	for (uint32_t i = 0; i < n; i++)
		if (strncmp(envp[i], key, kl) == 0 && envp[i][kl] == '=')
			return true;
	return false;
}

/* Decodes the TLVs of an EXEC or CALL into *r. Returns 0, or -1 after
 * answering with an ERROR. Tags of the other request type are ignored, as
 * unknown tags are. */
static int parse_exec_req(uint32_t stream, const uint8_t *p, uint32_t len, struct exec_req *r)
{
	const char *kind = r->is_call ? "CALL" : "EXEC";
	struct roost_tlv_iter it;
	struct roost_tlv t;
	roost_tlv_iter_init(&it, p, len);
	while (roost_tlv_next(&it, &t) == 1) {
		uint32_t *u32 = NULL;
		switch (t.tag) {
		case ROOST_TAG_ENV:
			if (r->is_call)
				continue;
			/* fall through */
		case ROOST_TAG_ARG:
		case ROOST_TAG_CWD:
		case ROOST_TAG_USER:
		case ROOST_TAG_OP:
			if (t.tag == ROOST_TAG_OP && !r->is_call)
				continue;
			if (!roost_tlv_str_ok(&t)) {
				send_error(stream, ROOST_E_BAD_REQUEST,
					   "NUL byte in string (tag 0x%04x)", t.tag);
				return -1;
			}
			if (t.tag == ROOST_TAG_ARG) {
				r->nargs++;
			} else if (t.tag == ROOST_TAG_ENV) {
				const uint8_t *eq = t.len ? memchr(t.value, '=', t.len) : NULL;
				if (!eq || eq == t.value) {
					send_error(stream, ROOST_E_BAD_REQUEST,
						   "ENV entry is not K=V");
					return -1;
				}
				r->nenv++;
			} else if (t.tag == ROOST_TAG_CWD) {
				r->cwd = t;
				r->has_cwd = true;
			} else if (t.tag == ROOST_TAG_OP) {
				r->op = t;
				r->has_op = true;
			} else {
				r->user = t;
				r->has_user = true;
			}
			continue;
		case ROOST_TAG_TIMEOUT_MS:
			u32 = &r->timeout_ms;
			break;
		case ROOST_TAG_STDIN:
			u32 = &r->stdin_on;
			break;
		case ROOST_TAG_WINDOW:
			u32 = &r->window;
			break;
		case ROOST_TAG_PTY:
			u32 = r->is_call ? NULL : &r->pty;
			break;
		case ROOST_TAG_ROWS:
			u32 = r->is_call ? NULL : &r->rows;
			break;
		case ROOST_TAG_COLS:
			u32 = r->is_call ? NULL : &r->cols;
			break;
		case ROOST_TAG_MODE:
			u32 = r->is_call ? &r->mode : NULL;
			r->has_mode = r->is_call;
			break;
		case ROOST_TAG_CALL_FLAGS:
			u32 = r->is_call ? &r->call_flags : NULL;
			break;
		case ROOST_TAG_DEPTH:
			u32 = r->is_call ? &r->depth : NULL;
			break;
		case ROOST_TAG_SIZE:
			if (!r->is_call)
				continue;
			if (roost_tlv_u64(&t, &r->size) < 0) {
				send_error(stream, ROOST_E_PROTOCOL, "%s tag 0x%04x must be a u64",
					   kind, t.tag);
				return -1;
			}
			r->has_size = true;
			continue;
		default:
			continue; /* unknown tags are ignored */
		}
		if (!u32)
			continue;
		if (roost_tlv_u32(&t, u32) < 0) {
			send_error(stream, ROOST_E_PROTOCOL, "%s tag 0x%04x must be a u32", kind,
				   t.tag);
			return -1;
		}
	}
	return 0;
}

/* Checks of a CALL before anything is allocated: OP, operands, STDIN. */
static int check_call_req(uint32_t stream, const struct exec_req *r)
{
	if (r->stdin_on > 1) {
		send_error(stream, ROOST_E_BAD_REQUEST, "STDIN must be 0 or 1");
		return -1;
	}
	if (!r->has_op) {
		send_error(stream, ROOST_E_BAD_REQUEST, "CALL without OP");
		return -1;
	}
	char op[32], msg[160];
	struct fop_req fr = {.op = op, .nargs = r->nargs};
	size_t l = r->op.len < sizeof op - 1 ? r->op.len : sizeof op - 1; /* longer: unknown */
	memcpy(op, r->op.value, l);
	op[l] = 0;
	if (r->nargs > FOP_MAX_ARGS) {
		send_error(stream, ROOST_E_BAD_REQUEST, "%s: too many operands (%u)", op, r->nargs);
		return -1;
	}
	if (r->op.len >= sizeof op || fop_check(&fr, msg, sizeof msg) < 0) {
		send_error(stream, ROOST_E_BAD_REQUEST, "%s",
			   r->op.len >= sizeof op ? "unknown operation" : msg);
		return -1;
	}
	return 0;
}

void handle_exec(uint32_t stream, const uint8_t *p, uint32_t len, bool is_call)
{
	const char *kind = is_call ? "CALL" : "EXEC";
	if (stream == 0) {
		send_error(stream, ROOST_E_BAD_REQUEST, "%s on stream 0", kind);
		return;
	}
	if (!session.established) {
		send_error(stream, ROOST_E_PROTOCOL, "%s before a successful HELLO", kind);
		return;
	}
	struct exec *dup = exec_find(stream);
	if (dup) {
		/* The host no longer knows what runs there: end it (see stream_fail). */
		stream_fail(dup, ROOST_E_BAD_REQUEST, "stream %u is already in use", stream);
		return;
	}
	if (exec_count >= ROOST_MAX_STREAMS) {
		send_error(stream, ROOST_E_BAD_REQUEST, "too many streams (max %u)",
			   ROOST_MAX_STREAMS);
		return;
	}
	if (roost_tlv_validate(p, len) < 0) {
		send_error(stream, ROOST_E_PROTOCOL, "malformed %s payload", kind);
		return;
	}

	struct exec_req r;
	memset(&r, 0, sizeof r);
	r.is_call = is_call;
	r.rows = ROOST_DEFAULT_ROWS;
	r.cols = ROOST_DEFAULT_COLS;
	r.window = ROOST_DEFAULT_WINDOW;
	if (parse_exec_req(stream, p, len, &r) < 0)
		return;
	if (is_call) {
		if (check_call_req(stream, &r) < 0)
			return;
	} else {
		if (r.nargs == 0) {
			send_error(stream, ROOST_E_BAD_REQUEST, "EXEC without ARG");
			return;
		}
		if (r.pty > 1 || r.stdin_on > 1) {
			send_error(stream, ROOST_E_BAD_REQUEST, "PTY and STDIN must be 0 or 1");
			return;
		}
		if (r.rows > 0xffff || r.cols > 0xffff) {
			send_error(stream, ROOST_E_BAD_REQUEST, "ROWS/COLS out of range");
			return;
		}
	}
	if (root_requested && !root_ok) {
		send_error(stream, ROOST_E_INTERNAL, "command root unavailable: %s", root_err);
		return;
	}

	/* Strings: each TLV value plus a NUL fits in len bytes (the 6-byte
	 * TLV headers are larger); the rest is for the defaults. */
	char user_spec[1024];
	if (r.has_user) {
		if (r.user.len >= sizeof user_spec) {
			send_error(stream, ROOST_E_BAD_REQUEST, "USER too long");
			return;
		}
		memcpy(user_spec, r.user.value, r.user.len);
		user_spec[r.user.len] = 0;
	} else {
		strcpy(user_spec, "0");
	}
	struct user_info *user = malloc(sizeof *user);
	char errbuf[600];
	if (!user) {
		send_error(stream, ROOST_E_INTERNAL, "malloc: %s", strerror(ENOMEM));
		return;
	}
	if (resolve_user(root_ok ? CMD_ROOT : NULL, user_spec, user, errbuf, sizeof errbuf) < 0) {
		send_error(stream, ROOST_E_BAD_REQUEST, "%s", errbuf);
		free(user);
		return;
	}

	size_t arena_size = (size_t)len + 3 * 64 + sizeof DEFAULT_PATH + sizeof user->home + 16;
	char *arena = malloc(arena_size);
	char **argv = calloc((size_t)r.nargs + 1, sizeof *argv);
	char **envp = calloc((size_t)r.nenv + 4, sizeof *envp);
	struct exec *e = calloc(1, sizeof *e);
	struct fop_req call;
	memset(&call, 0, sizeof call);
	if (!arena || !argv || !envp || !e) {
		send_error(stream, ROOST_E_INTERNAL, "malloc: %s", strerror(ENOMEM));
		goto out_free;
	}
	size_t ao = 0;
	uint32_t na = 0, ne = 0;
	struct roost_tlv_iter it;
	struct roost_tlv t;
	roost_tlv_iter_init(&it, p, len);
	while (roost_tlv_next(&it, &t) == 1) {
		if (t.tag != ROOST_TAG_ARG && (is_call || t.tag != ROOST_TAG_ENV))
			continue;
		char *s = arena + ao;
		memcpy(s, t.value, t.len);
		s[t.len] = 0;
		ao += t.len + 1;
		if (t.tag == ROOST_TAG_ARG)
			argv[na++] = s;
		else
			envp[ne++] = s;
	}
	char *cwd = arena + ao;
	if (r.has_cwd && r.cwd.len > 0) {
		memcpy(cwd, r.cwd.value, r.cwd.len);
		cwd[r.cwd.len] = 0;
		ao += r.cwd.len + 1;
	} else {
		strcpy(cwd, "/");
		ao += 2;
	}
	const char *path = NULL;
	if (is_call) {
		char *op = arena + ao;
		memcpy(op, r.op.value, r.op.len);
		op[r.op.len] = 0;
		ao += r.op.len + 1;
		call.op = op;
		call.nargs = na;
		for (uint32_t i = 0; i < na; i++)
			call.args[i] = argv[i];
		call.flags = r.call_flags;
		call.has_mode = r.has_mode;
		call.mode = r.mode;
		call.depth = r.depth;
		call.has_size = r.has_size;
		call.size = r.size;
		call.remount_root = root_ok ? root_mount_extras : NULL;
		call.relay_fd = -1;
		if (strcmp(op, "mount") == 0 && (call.flags & FOP_RELAY)) {
			/* Started here, by PID 1, so that it is PID 1's child and
			 * outlives the call; the call's child inherits the socket. */
			call.relay_fd = p9relay_ensure();
			call.relay_err = call.relay_fd < 0 ? errno : 0;
		}
	} else {
		if (!env_has(envp, ne, "PATH")) {
			char *s = arena + ao;
			ao += (size_t)sprintf(s, "PATH=%s", DEFAULT_PATH) + 1;
			envp[ne++] = s;
		}
		if (!env_has(envp, ne, "HOME")) {
			char *s = arena + ao;
			ao += (size_t)sprintf(s, "HOME=%s", user->home) + 1;
			envp[ne++] = s;
		}
		if (r.pty && !env_has(envp, ne, "TERM")) {
			char *s = arena + ao;
			ao += (size_t)sprintf(s, "TERM=%s", DEFAULT_TERM) + 1;
			envp[ne++] = s;
		}
		for (uint32_t i = 0; i < ne; i++)
			if (strncmp(envp[i], "PATH=", 5) == 0) {
				path = envp[i] + 5;
				break;
			}
	}

	struct spawn sp = {
		.argv = argv,
		.envp = envp,
		.path = path,
		.cwd = cwd,
		.root = root_ok && !(is_call && fop_outside_root(&call)) ? CMD_ROOT : NULL,
		.user = user,
		.pty = r.pty != 0,
		.slave = -1,
		.in_r = -1,
		.out_w = -1,
		.err_w = -1,
		.call = is_call ? &call : NULL,
		.keep_fd = is_call ? call.relay_fd : -1,
	};
	e->ptm = e->in_fd = e->out_fd[0] = e->out_fd[1] = -1;
	int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
	const char *what = NULL;
	if (r.pty) {
		e->ptm = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (e->ptm < 0) {
			what = "posix_openpt";
			goto fail;
		}
		if (grantpt(e->ptm) < 0 || unlockpt(e->ptm) < 0) {
			what = "unlockpt";
			goto fail;
		}
		sp.slave = ioctl(e->ptm, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (sp.slave < 0) {
			char name[64];
			if (ptsname_r(e->ptm, name, sizeof name) != 0) {
				what = "ptsname";
				goto fail;
			}
			sp.slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
			if (sp.slave < 0) {
				what = "open pty slave";
				goto fail;
			}
		}
		struct winsize ws = {.ws_row = (unsigned short)r.rows,
				     .ws_col = (unsigned short)r.cols};
		ioctl(e->ptm, TIOCSWINSZ, &ws);
		set_nonblock(e->ptm);
		e->out_fd[0] = e->ptm;
		if (r.stdin_on)
			e->in_fd = e->ptm;
		e->out_done[1] = true; /* all output is fd 1 */
	} else {
		if (pipe2(out_pipe, O_CLOEXEC) < 0 || pipe2(err_pipe, O_CLOEXEC) < 0 ||
		    (r.stdin_on && pipe2(in_pipe, O_CLOEXEC) < 0)) {
			what = "pipe2";
			goto fail;
		}
		sp.out_w = out_pipe[1];
		sp.err_w = err_pipe[1];
		sp.in_r = r.stdin_on ? in_pipe[0] : devnull_fd;
		e->out_fd[0] = out_pipe[0];
		e->out_fd[1] = err_pipe[0];
		e->in_fd = in_pipe[1];
		set_nonblock(out_pipe[0]);
		set_nonblock(err_pipe[0]);
		if (r.stdin_on)
			set_nonblock(in_pipe[1]);
	}
	pid_t pid = is_call ? spawn_call(&sp) : spawn_child(&sp);
	if (pid < 0) {
		what = is_call ? "fork" : "vfork";
		goto fail;
	}

	close_fd(&sp.slave);
	close_fd(&out_pipe[1]);
	close_fd(&err_pipe[1]);
	close_fd(&in_pipe[0]);

	e->stream = stream;
	e->pid = pid;
	e->is_call = is_call;
	e->pty = r.pty != 0;
	e->credit[0] = r.window;
	e->credit[1] = r.window;
	e->stdin_enabled = r.stdin_on != 0;
	e->stdin_closed = !e->stdin_enabled;
	e->stdin_window = !e->stdin_enabled ? 0 : is_call ? CALL_STDIN_WINDOW : STDIN_WINDOW;
	e->stdin_credit = e->stdin_window;
	if (r.timeout_ms)
		e->deadline = now_ms() + r.timeout_ms;
	exec_add(e);

	struct roost_buf b;
	roost_buf_init(&b, scratch, sizeof scratch);
	size_t s = roost_frame_begin(&b, stream, ROOST_T_STARTED);
	roost_tlv_put_u32(&b, ROOST_TAG_PID, (uint32_t)pid);
	roost_tlv_put_u32(&b, ROOST_TAG_STDIN_WINDOW, e->stdin_credit);
	send_buf(&b, s);
	e = NULL;
	goto out_free;

fail:
	send_error(stream, ROOST_E_INTERNAL, "%s: %s", what, strerror(errno));
	close_fd(&sp.slave);
	close_fd(&e->ptm);
	for (int i = 0; i < 2; i++) {
		close_fd(&in_pipe[i]);
		close_fd(&out_pipe[i]);
		close_fd(&err_pipe[i]);
	}
out_free:
	free(e);
	free(arena);
	free(argv);
	free(envp);
	free(user);
}
