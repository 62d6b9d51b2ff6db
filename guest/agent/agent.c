/*
 * roost-agent: PID 1 of a Roost microVM guest.
 *
 * Boots the guest (mounts, command root), opens the virtio-serial port named
 * on the kernel command line and serves the host protocol of
 * docs/PROTOCOL.md on it with a single-threaded poll() loop: sessions (HELLO),
 * PING, POWEROFF, FREEZE/THAW (snapshots), and exec streams (EXEC, CALL,
 * DATA, EOF, CREDIT, SIGNAL, RESIZE, STARTED, EXIT). A CALL runs a built-in
 * file operation (fileops.c) in a forked child, on a stream like an EXEC's. It never exits: every
 * failure is logged to /dev/console and reported to the host where one is
 * connected.
 *
 * Readings of docs/PROTOCOL.md where it leaves a choice:
 *  - A frame-level violation (bad length, unknown or agent-only message type,
 *    a control message on an exec stream or vice versa) gets ERROR PROTOCOL on
 *    stream 0 and leaves every stream alone. After a bad length the rest of
 *    the current read is dropped; only a reconnect resynchronises reliably.
 *  - An ERROR on an open exec stream ends that stream: its process group is
 *    SIGKILLed and no EXIT follows (the host also treats it as final).
 *    Frames for a stream that just ended (EXIT or ERROR) are ignored.
 *  - RESIZE on a stream without a PTY is a no-op.
 *  - STARTED carries STDIN_WINDOW 65536 with STDIN=1 (262144 for a CALL) and
 *    0 with STDIN=0.
 *  - A CALL past TIMEOUT_MS gets SIGTERM (so a write removes its temporary
 *    file), and SIGKILL if it has not ended 5 s later; a call whose stream
 *    ends by an ERROR, or whose session ends, gets SIGTERM.
 *  - EOF [0] on a PTY writes VEOF (^D) if the terminal is in canonical mode.
 *  - EXEC and CALL are refused (ERROR PROTOCOL) until a HELLO with VERSION 1; PING and
 *    POWEROFF are served at any time. Stream ids are reusable after EXIT.
 *  - SIGNAL after the process was reaped is ignored (its pid may be reused).
 *  - FREEZE and THAW are served at any time, like PING. A FREEZE that fails
 *    (other than EOPNOTSUPP: no disk) leaves no snapshot pending. In a
 *    restored copy, orphaned commands have their own bound (MAX_ORPHANS,
 *    beyond it the rest are killed as before) and do not count against the
 *    stream limit; a PTY orphan keeps its terminal open without input (no
 *    VEOF is written); once an orphan's process is reaped its pipes are
 *    closed, as a stream's are after EXIT.
 */
#include "fileops.h"
#include "proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <net/if.h>
#include <net/route.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>

#define AGENT_VERSION "roost-agent 0.1.0"

#define DEFAULT_PORT "roost.agent"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define DEFAULT_TERM "xterm-256color"

#define ROOST_RUN "/run/roost"
#define ROOT_LOWER ROOST_RUN "/lower"
#define ROOT_RW ROOST_RUN "/rw"
#define ROOT_UPPER ROOT_RW "/upper"
#define ROOT_WORK ROOT_RW "/work"
#define CMD_ROOT ROOST_RUN "/root"

/* Outbound buffer bounds: process pipes are not read above OUT_PIPE_LIMIT,
 * the port is not read above OUT_PORT_LIMIT (every host frame produces a
 * bounded answer), and nothing is ever queued above OUT_HARD_LIMIT. */
#define OUT_PIPE_LIMIT (1u << 20)
#define OUT_PORT_LIMIT (2u << 20)
#define OUT_HARD_LIMIT (16u << 20)

#define STDIN_WINDOW 65536u	  /* credit granted to the host for fd 0 */
#define CALL_STDIN_WINDOW 262144u /* the same for a CALL (file contents, tar streams) */
#define CALL_TERM_GRACE_MS 5000u  /* a call not gone this long after its SIGTERM is killed */
#define CREDIT_CAP (1ull << 48)	  /* output credit saturates here */
#define PTY_DRAIN_SLACK 65536u	  /* tty flip-buffer bytes possibly in flight at exit */
#define RECENT_MAX 256		  /* finished stream ids remembered per session */
#define DISCONNECTED_RECHECK_MS 20
#define MAX_GROUPS 64
#define MAX_PASSWD_FILE (4u << 20)

/* <linux/random.h>: RNDADDENTROPY = _IOW('R', 0x03, int[2]), argument
 * struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }. */
#define ROOST_RNDADDENTROPY _IOW('R', 0x03, int[2])
struct roost_rand_pool_info {
	int entropy_count; /* bits */
	int buf_size;	   /* bytes */
	uint8_t buf[ROOST_MAX_ENTROPY];
};
/* <linux/random.h>: RNDRESEEDCRNG = _IO('R', 0x07): re-key the CRNG from the
 * input pool now (needs CAP_SYS_ADMIN; ENODATA before the CRNG is ready). */
#define ROOST_RNDRESEEDCRNG _IO('R', 0x07)

/* <linux/fs.h>: FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int). */
#define ROOST_FIFREEZE _IOWR('X', 119, int)
#define ROOST_FITHAW _IOWR('X', 120, int)

/* Commands of a session that ended in a restored copy of a snapshot keep
 * running as orphans (see session_end); at most this many at a time, on top
 * of the ROOST_MAX_STREAMS streams of the current session. */
#define MAX_ORPHANS ROOST_MAX_STREAMS

/* <linux/openat2.h>: struct open_how and RESOLVE_IN_ROOT. */
struct roost_open_how {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};
#define ROOST_RESOLVE_IN_ROOT 0x10
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* ------------------------------------------------------------------ */
/* state */

struct exec {
	struct exec *next;
	uint32_t stream;
	pid_t pid;
	bool is_call; /* a CALL: cancelled with SIGTERM, not SIGKILL */
	bool pty;
	bool reaped;
	bool timed_out;
	bool term_sent; /* a call past its deadline was sent SIGTERM */
	int status;
	uint64_t deadline; /* CLOCK_MONOTONIC ms, 0 = none */

	int ptm;       /* PTY master (owned), or -1 */
	int out_fd[2]; /* fd 1, fd 2 sources (pipe read ends, or ptm / -1 for PTY) */
	bool out_done[2];
	uint64_t credit[2];
	uint64_t drain_budget[2]; /* bytes still to read after the process was reaped */

	int in_fd;	       /* stdin: pipe write end, or ptm; -1 when closed */
	bool stdin_enabled;    /* STDIN=1 */
	bool stdin_eof;	       /* host sent EOF [0] */
	bool stdin_closed;     /* nothing more goes to the process */
	uint32_t stdin_credit; /* credit the host still has for fd 0 */
	uint32_t stdin_window; /* STDIN_WINDOW or CALL_STDIN_WINDOW (0 without stdin) */
	uint8_t *inq;	       /* queued stdin bytes, capacity stdin_window (allocated on first DATA) */
	size_t inq_off, inq_len;
};

static int console_fd = -1;
static int devnull_fd = -1;
static int port_fd = -1;
static int sig_fd = -1;
static bool port_connected;
static unsigned hello_count; /* HELLOs handled, to order them against hangups */
static uint64_t next_port_check;

static struct {
	bool established; /* a HELLO with a VERSION this agent speaks was received */
	uint32_t flags;	  /* its FLAGS */
} session;

static struct roost_parser parser;

static struct {
	uint8_t *data;
	size_t off, len, cap;
	bool overflow_logged;
} out;

static uint8_t scratch[ROOST_FRAME_HDR + ROOST_MAX_PAYLOAD];

static struct exec *execs;
static unsigned exec_count;

/* Orphans: commands of an earlier session, kept running by a restored copy
 * of a snapshot. Not streams (stream 0, never found by exec_find), no credit:
 * their output is read and discarded, and they are reaped without an EXIT. */
static struct exec *orphans;
static unsigned orphan_count;

/* Snapshots (FREEZE/THAW). snapshot_pending: a FREEZE was answered and no
 * THAW came yet, so the guest's memory may be in a snapshot; a host
 * disconnect or a HELLO seen in this state means this is a restored copy.
 * fs_frozen: ROOT_RW is frozen (FIFREEZE) by the agent. */
static bool snapshot_pending;
static bool fs_frozen;

static uint32_t recent[RECENT_MAX];
static unsigned recent_n, recent_pos;

static bool root_requested, root_ok;
static char root_err[1024];

/* ------------------------------------------------------------------ */
/* utilities */

__attribute__((format(printf, 1, 2))) static void logmsg(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf, "roost-agent: ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t l = strlen(buf);
	buf[l++] = '\n';
	int fd = console_fd >= 0 ? console_fd : 2;
	while (write(fd, buf, l) < 0 && errno == EINTR)
		;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* Reads until `cap` bytes, end of file or an error; returns the bytes read. */
static size_t read_full(int fd, char *buf, size_t cap)
{
	size_t have = 0;
	while (have < cap) {
		ssize_t n = read(fd, buf + have, cap - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	return have;
}

/* Reads a small file into buf (NUL-terminated). Returns the length or -1. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t have = read_full(fd, buf, size - 1);
	close(fd);
	buf[have] = 0;
	return (ssize_t)have;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t l = strlen(path);
	if (l == 0 || l >= sizeof tmp)
		return -1;
	memcpy(tmp, path, l + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

/* mount(2) with the mount point created first; failures are logged.
 * Returns 0 on success (EBUSY on an already mounted target counts as success
 * for the boot mounts, where the kernel may have done it already). */
static int do_mount(const char *src, const char *target, const char *type, unsigned long flags,
		    const char *data, bool quiet_busy)
{
	if (mkdir_p(target, 0755) < 0)
		logmsg("mkdir %s: %s", target, strerror(errno));
	if (mount(src, target, type, flags, data) == 0)
		return 0;
	int e = errno;
	if (quiet_busy && e == EBUSY)
		return 0;
	logmsg("mount %s on %s (%s): %s", src, target, type ? type : "bind", strerror(e));
	errno = e;
	return -1;
}

/* ------------------------------------------------------------------ */
/* outbound buffer */

static int out_reserve(size_t n)
{
	if (out.len + n > OUT_HARD_LIMIT) {
		if (!out.overflow_logged)
			logmsg("outbound buffer full, dropping frames");
		out.overflow_logged = true;
		return -1;
	}
	if (out.off + out.len + n <= out.cap)
		return 0;
	if (out.len + n <= out.cap / 2) {
		memmove(out.data, out.data + out.off, out.len);
		out.off = 0;
		return 0;
	}
	size_t nc = out.cap ? out.cap : 256u * 1024u;
	while (nc < 2 * (out.len + n))
		nc *= 2;
	uint8_t *nd = malloc(nc);
	if (!nd) {
		logmsg("out of memory for outbound buffer");
		return -1;
	}
	if (out.len)
		memcpy(nd, out.data + out.off, out.len);
	free(out.data);
	out.data = nd;
	out.cap = nc;
	out.off = 0;
	return 0;
}

static void out_reset(void)
{
	out.off = 0;
	out.len = 0;
}

static void out_append(const void *p, size_t n)
{
	if (!port_connected || out_reserve(n) < 0)
		return;
	memcpy(out.data + out.off + out.len, p, n);
	out.len += n;
}

static void port_flush(void)
{
	while (out.len > 0) {
		ssize_t n = write(port_fd, out.data + out.off, out.len);
		if (n > 0) {
			out.off += (size_t)n;
			out.len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		break; /* EAGAIN: wait for POLLOUT; anything else shows up as POLLHUP */
	}
	if (out.len == 0)
		out.off = 0;
}

/* ------------------------------------------------------------------ */
/* frames to the host */

static void send_raw(uint32_t stream, uint8_t type, const void *payload, size_t len)
{
	uint8_t hdr[ROOST_FRAME_HDR];
	if (!port_connected || len > ROOST_MAX_PAYLOAD)
		return;
	if (out_reserve(sizeof hdr + len) < 0)
		return;
	roost_frame_header(hdr, stream, type, (uint32_t)len);
	out_append(hdr, sizeof hdr);
	if (len)
		out_append(payload, len);
}

static void send_buf(struct roost_buf *b, size_t start)
{
	if (roost_frame_end(b, start) < 0) {
		logmsg("internal: frame too large");
		return;
	}
	out_append(b->data + start, b->len - start);
}

__attribute__((format(printf, 3, 0))) static void send_error_v(uint32_t stream, uint32_t code,
							       const char *fmt, va_list ap)
{
	char msg[512];
	vsnprintf(msg, sizeof msg, fmt, ap);
	struct roost_buf b;
	roost_buf_init(&b, scratch, sizeof scratch);
	size_t s = roost_frame_begin(&b, stream, ROOST_T_ERROR);
	roost_tlv_put_u32(&b, ROOST_TAG_CODE, code);
	roost_tlv_put_str(&b, ROOST_TAG_MESSAGE, msg);
	send_buf(&b, s);
}

__attribute__((format(printf, 3, 4))) static void send_error(uint32_t stream, uint32_t code,
							    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	send_error_v(stream, code, fmt, ap);
	va_end(ap);
}

static void send_eof(uint32_t stream, uint8_t fd)
{
	send_raw(stream, ROOST_T_EOF, &fd, 1);
}

static void send_credit(uint32_t stream, uint8_t fd, uint32_t n)
{
	uint8_t p[5];
	p[0] = fd;
	roost_put_u32(p + 1, n);
	send_raw(stream, ROOST_T_CREDIT, p, sizeof p);
}

/* ------------------------------------------------------------------ */
/* execs */

/* The current session's stream `stream` (orphans are on their own list). */
static struct exec *exec_find(uint32_t stream)
{
	for (struct exec *e = execs; e; e = e->next)
		if (e->stream == stream)
			return e;
	return NULL;
}

static bool recent_has(uint32_t stream)
{
	for (unsigned i = 0; i < recent_n; i++)
		if (recent[i] == stream)
			return true;
	return false;
}

static void recent_remove(uint32_t stream)
{
	for (unsigned i = 0; i < recent_n; i++)
		if (recent[i] == stream)
			recent[i] = 0; /* stream 0 is never an exec */
}

static void recent_add(uint32_t stream)
{
	recent[recent_pos] = stream;
	recent_pos = (recent_pos + 1) % RECENT_MAX;
	if (recent_n < RECENT_MAX)
		recent_n++;
}

static void exec_kill(struct exec *e, int sig)
{
	/* After the reap the pid may be reused: never signal then. Before the
	 * child's setsid() the group does not exist yet: signal the pid. */
	if (e->reaped || e->pid <= 0)
		return;
	if (kill(-e->pid, sig) < 0 && errno == ESRCH)
		kill(e->pid, sig);
}

static void exec_stdin_close(struct exec *e)
{
	if (!e->pty)
		close_fd(&e->in_fd);
	e->in_fd = -1;
	e->stdin_closed = true;
	e->inq_off = e->inq_len = 0;
}

static void exec_out_close(struct exec *e, int i)
{
	if (!e->pty)
		close_fd(&e->out_fd[i]);
	e->out_fd[i] = -1;
	e->out_done[i] = true;
}

static void exec_unlink(struct exec **list, struct exec *e)
{
	for (struct exec **pp = list; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			break;
		}
	}
}

/* Closes what an exec owns and frees it (already unlinked). */
static void exec_release(struct exec *e)
{
	exec_stdin_close(e);
	exec_out_close(e, 0);
	exec_out_close(e, 1);
	close_fd(&e->ptm);
	free(e->inq);
	free(e);
}

static void exec_free(struct exec *e)
{
	exec_unlink(&execs, e);
	exec_release(e);
	exec_count--;
}

static void orphan_free(struct exec *e)
{
	exec_unlink(&orphans, e);
	exec_release(e);
	orphan_count--;
}

/*
 * Turns a running command of the ending session into an orphan: it keeps
 * running, its stdin is closed (a pipe: the process reads EOF; a PTY keeps
 * its terminal, which gets no more input), its output is read and dropped
 * (orphan_drain), and it is reaped without an EXIT. Its TIMEOUT_MS, set by
 * the host that is gone, no longer applies.
 */
static void exec_orphan(struct exec *e)
{
	exec_unlink(&execs, e);
	exec_count--;
	exec_stdin_close(e);
	free(e->inq);
	e->inq = NULL;
	e->stream = 0;
	e->deadline = 0;
	e->next = orphans;
	orphans = e;
	orphan_count++;
}

/* Reads and discards an orphan's output on fd i+1 (a bounded amount per
 * call); at end of file (EIO: a PTY nobody holds) it is no longer polled.
 * A PTY master stays open until the process is reaped. */
static void orphan_drain(struct exec *e, int i)
{
	static uint8_t sink[65536];
	for (int k = 0; k < 16 && !e->out_done[i]; k++) {
		ssize_t n = read(e->out_fd[i], sink, sizeof sink);
		if (n > 0) {
			if ((size_t)n < sizeof sink)
				break; /* probably empty now; let poll tell */
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0 && errno != EIO)
			logmsg("orphan %d: read fd %d: %s", (int)e->pid, i + 1, strerror(errno));
		exec_out_close(e, i);
	}
}

/* How a stream's process is ended when the agent gives up on it: a command
 * is killed; a call is asked to stop (SIGTERM), so that it removes what it
 * had in progress (a temporary file). */
static int exec_stop_signal(const struct exec *e)
{
	return e->is_call ? SIGTERM : SIGKILL;
}

/* Ends the current session: kill and forget its execs (still reaped by the
 * waitpid(-1) loop as unknown children). With keep_commands (a restored copy
 * of a snapshot meets its first host) running commands become orphans
 * instead; calls still get SIGTERM, and a command that already exited is
 * dropped without its EXIT. */
static void session_end(bool keep_commands)
{
	static bool orphans_full_logged;
	while (execs) {
		struct exec *e = execs;
		if (keep_commands && !e->is_call && !e->reaped) {
			if (orphan_count < MAX_ORPHANS) {
				exec_orphan(e);
				continue;
			}
			if (!orphans_full_logged)
				logmsg("%u orphaned commands already: killing the rest", orphan_count);
			orphans_full_logged = true;
		}
		exec_kill(e, exec_stop_signal(e));
		exec_free(e);
	}
	recent_n = recent_pos = 0;
	session.established = false;
	session.flags = 0;
}

static void exec_on_reaped(struct exec *e)
{
	e->deadline = 0;
	if (e->in_fd >= 0 || !e->stdin_closed)
		exec_stdin_close(e);
	/* Drain what is readable now; do not wait for background processes
	 * that keep the output open. A pipe holds everything the process
	 * wrote; a PTY may still have up to a tty buffer in flight. */
	for (int i = 0; i < 2; i++) {
		if (e->out_done[i])
			continue;
		int avail = 0;
		if (ioctl(e->out_fd[i], FIONREAD, &avail) < 0 || avail < 0)
			avail = 0;
		e->drain_budget[i] = (uint64_t)avail + (e->pty ? PTY_DRAIN_SLACK : 0);
	}
}

/* Reads process output into DATA frames while there is credit and room. */
static void exec_read_out(struct exec *e, int i)
{
	while (!e->out_done[i] && port_connected) {
		if (e->reaped && e->drain_budget[i] == 0) {
			exec_out_close(e, i);
			break;
		}
		if (e->credit[i] == 0 || out.len >= OUT_PIPE_LIMIT)
			break;
		size_t want = ROOST_MAX_PAYLOAD - 1;
		if (e->credit[i] < want)
			want = (size_t)e->credit[i];
		if (e->reaped && e->drain_budget[i] < want)
			want = (size_t)e->drain_budget[i];
		if (out_reserve(ROOST_FRAME_HDR + 1 + want) < 0)
			break;
		uint8_t *t = out.data + out.off + out.len;
		ssize_t n = read(e->out_fd[i], t + ROOST_FRAME_HDR + 1, want);
		if (n > 0) {
			roost_frame_header(t, e->stream, ROOST_T_DATA, (uint32_t)n + 1);
			t[ROOST_FRAME_HDR] = (uint8_t)(i + 1);
			out.len += ROOST_FRAME_HDR + 1 + (size_t)n;
			e->credit[i] -= (uint64_t)n;
			if (e->reaped)
				e->drain_budget[i] -= (uint64_t)n;
			if ((size_t)n < want && !e->reaped)
				break; /* probably empty now; let poll tell */
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			if (e->reaped)
				exec_out_close(e, i);
			break;
		}
		/* 0 = EOF; EIO = PTY slave closed by everyone; others: give up. */
		if (n < 0 && errno != EIO)
			logmsg("stream %u: read fd %d: %s", e->stream, i + 1, strerror(errno));
		exec_out_close(e, i);
		break;
	}
}

/* Writes queued stdin to the process and returns credit for what it took.
 *
 * EOF [0]: with pipes, the write end is closed once the queue has drained.
 * With a PTY the master cannot be half-closed, so the agent does what a user
 * at a terminal does: it writes the VEOF character (^D by default) once the
 * queue has drained, but only if the terminal is in canonical mode (in raw
 * mode it would be an ordinary input byte, so EOF is then just recorded). */
static void exec_write_in(struct exec *e)
{
	uint32_t back = 0;
	while (e->inq_len > 0 && e->in_fd >= 0) {
		ssize_t n = write(e->in_fd, e->inq + e->inq_off, e->inq_len);
		if (n > 0) {
			e->inq_off += (size_t)n;
			e->inq_len -= (size_t)n;
			back += (uint32_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		/* EPIPE/EIO: nobody reads stdin any more. The queued bytes are
		 * dropped and their credit returned so the host never stalls. */
		back += (uint32_t)e->inq_len;
		exec_stdin_close(e);
		break;
	}
	if (e->inq_len == 0)
		e->inq_off = 0;
	if (back) {
		e->stdin_credit += back;
		send_credit(e->stream, 0, back);
	}
	if (e->stdin_eof && !e->stdin_closed && e->inq_len == 0) {
		if (!e->pty) {
			exec_stdin_close(e);
		} else {
			struct termios tio;
			if (tcgetattr(e->ptm, &tio) == 0 && (tio.c_lflag & ICANON) &&
			    tio.c_cc[VEOF] != _POSIX_VDISABLE) {
				char c = (char)tio.c_cc[VEOF];
				ssize_t n = write(e->ptm, &c, 1);
				if (n < 0 && errno == EAGAIN)
					return; /* retry on POLLOUT */
			}
			exec_stdin_close(e);
		}
	}
}

static void exec_finish(struct exec *e)
{
	send_eof(e->stream, 1);
	send_eof(e->stream, 2);
	struct roost_buf b;
	roost_buf_init(&b, scratch, sizeof scratch);
	size_t s = roost_frame_begin(&b, e->stream, ROOST_T_EXIT);
	if (WIFSIGNALED(e->status))
		roost_tlv_put_u32(&b, ROOST_TAG_EXIT_SIGNAL, (uint32_t)WTERMSIG(e->status));
	else
		roost_tlv_put_u32(&b, ROOST_TAG_EXIT_CODE, (uint32_t)WEXITSTATUS(e->status));
	roost_tlv_put_u32(&b, ROOST_TAG_TIMED_OUT, e->timed_out ? 1 : 0);
	send_buf(&b, s);
	recent_add(e->stream);
	exec_free(e);
}

/*
 * An ERROR on an open stream ends it: nothing follows on that stream (which is
 * also how the host reads it), so the process group is killed, the fds are
 * closed and the slot is freed without an EXIT. Frames of the host still in
 * flight for it are then ignored (recent ring).
 */
__attribute__((format(printf, 3, 4))) static void stream_fail(struct exec *e, uint32_t code,
							     const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	send_error_v(e->stream, code, fmt, ap);
	va_end(ap);
	exec_kill(e, exec_stop_signal(e));
	recent_add(e->stream);
	exec_free(e);
}

/* ------------------------------------------------------------------ */
/* users */

struct user_info {
	uid_t uid;
	gid_t gid;
	gid_t groups[MAX_GROUPS];
	int ngroups;
	char name[256]; /* empty if there is no passwd entry */
	char home[PATH_MAX];
};

/* Reads a file of the command root (or of / without one), resolving symlinks
 * inside that root. Returns a NUL-terminated malloc'd buffer, or NULL with
 * errno set (ENOENT if missing). */
static char *read_cmd_root_file(const char *rel)
{
	int fd = -1;
	if (root_ok) {
		int dfd = open(CMD_ROOT, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return NULL;
		struct roost_open_how how = {.flags = O_RDONLY | O_CLOEXEC,
					     .resolve = ROOST_RESOLVE_IN_ROOT};
		fd = (int)syscall(SYS_openat2, dfd, rel, &how, sizeof how);
		if (fd < 0 && errno == ENOSYS)
			fd = openat(dfd, rel, O_RDONLY | O_CLOEXEC);
		int e = errno;
		close(dfd);
		errno = e;
	} else {
		char p[PATH_MAX];
		snprintf(p, sizeof p, "/%s", rel);
		fd = open(p, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)MAX_PASSWD_FILE) {
		close(fd);
		errno = EINVAL;
		return NULL;
	}
	size_t cap = (size_t)st.st_size;
	char *buf = malloc(cap + 1);
	if (!buf) {
		close(fd);
		errno = ENOMEM;
		return NULL;
	}
	size_t have = read_full(fd, buf, cap);
	close(fd);
	buf[have] = 0;
	return buf;
}

/* A decimal id: 1..10 digits, value <= 0xfffffffe ((uid_t)-1 is not an id). */
static int parse_id(const char *s, uint32_t *res)
{
	size_t l = strlen(s);
	if (l == 0 || l > 10)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < l; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v >= 0xffffffffull)
		return -1;
	*res = (uint32_t)v;
	return 0;
}

/* Splits a mutable line at ':' into at most max fields. */
static int split_fields(char *line, char **f, int max)
{
	int n = 0;
	f[n++] = line;
	for (char *p = line; *p && n < max; p++) {
		if (*p == ':') {
			*p = 0;
			f[n++] = p + 1;
		}
	}
	return n;
}

/* Next line of a mutable buffer; *cur advances. NULL at the end. */
static char *next_line(char **cur)
{
	char *line = *cur;
	if (!line || !*line)
		return NULL;
	char *nl = strchr(line, '\n');
	if (nl) {
		*nl = 0;
		*cur = nl + 1;
	} else {
		*cur = line + strlen(line);
	}
	return line;
}

static void copy_str(char *dst, size_t size, const char *src)
{
	size_t l = strlen(src);
	if (l >= size)
		l = size - 1;
	memcpy(dst, src, l);
	dst[l] = 0;
}

/* Finds a passwd entry by name (name != NULL) or by uid. */
static bool passwd_lookup(char *buf, const char *name, uint32_t uid, struct user_info *u)
{
	char *cur = buf, *line;
	while ((line = next_line(&cur))) {
		char *f[7];
		int n = split_fields(line, f, 7);
		uint32_t pu, pg;
		if (n < 4 || f[0][0] == 0 || parse_id(f[2], &pu) < 0 || parse_id(f[3], &pg) < 0)
			continue;
		if (name ? strcmp(f[0], name) != 0 : pu != uid)
			continue;
		u->uid = pu;
		u->gid = pg;
		copy_str(u->name, sizeof u->name, f[0]);
		copy_str(u->home, sizeof u->home, n >= 6 && f[5][0] ? f[5] : "/");
		return true;
	}
	return false;
}

static void add_group(struct user_info *u, gid_t g)
{
	for (int i = 0; i < u->ngroups; i++)
		if (u->groups[i] == g)
			return;
	if (u->ngroups < MAX_GROUPS)
		u->groups[u->ngroups++] = g;
}

/* One pass over /etc/group: resolves group_name (if given) and collects the
 * groups listing member (if given). */
static bool group_scan(char *buf, const char *group_name, gid_t *gid, const char *member,
		       gid_t *supp, int *nsupp)
{
	bool found = false;
	char *cur = buf, *line;
	while ((line = next_line(&cur))) {
		char *f[4];
		int n = split_fields(line, f, 4);
		uint32_t g;
		if (n < 3 || f[0][0] == 0 || parse_id(f[2], &g) < 0)
			continue;
		if (group_name && !found && strcmp(f[0], group_name) == 0) {
			*gid = g;
			found = true;
		}
		if (member && n >= 4) {
			char *save = NULL;
			for (char *m = strtok_r(f[3], ",", &save); m; m = strtok_r(NULL, ",", &save)) {
				if (strcmp(m, member) == 0 && *nsupp < MAX_GROUPS - 1) {
					supp[(*nsupp)++] = g;
					break;
				}
			}
		}
	}
	return found;
}

/* USER: name, uid, uid:gid, name:group (and uid:group, name:gid). Returns 0,
 * or -1 with a message for the host in err. */
static int resolve_user(const char *spec, struct user_info *u, char *err, size_t errlen)
{
	char ubuf[512];
	if (strlen(spec) >= sizeof ubuf) {
		snprintf(err, errlen, "unknown user %.64s...", spec);
		return -1;
	}
	copy_str(ubuf, sizeof ubuf, spec);
	char *gpart = strchr(ubuf, ':');
	if (gpart)
		*gpart++ = 0;
	const char *upart = ubuf;

	memset(u, 0, sizeof *u);
	char *pw = read_cmd_root_file("etc/passwd");
	uint32_t id;
	if (parse_id(upart, &id) == 0) {
		if (!pw || !passwd_lookup(pw, NULL, id, u)) {
			u->uid = id;
			u->gid = id;
			copy_str(u->home, sizeof u->home, id == 0 ? "/root" : "/");
		}
	} else if (!pw || !passwd_lookup(pw, upart, 0, u)) {
		free(pw);
		snprintf(err, errlen, "unknown user %s", upart);
		return -1;
	}
	free(pw);

	char *gr = read_cmd_root_file("etc/group");
	gid_t supp[MAX_GROUPS];
	int nsupp = 0;
	if (gpart) {
		if (parse_id(gpart, &id) == 0) {
			u->gid = id;
		} else {
			gid_t g = 0;
			char *copy = gr ? strdup(gr) : NULL;
			bool found = copy && group_scan(copy, gpart, &g, NULL, NULL, NULL);
			free(copy);
			if (!found) {
				free(gr);
				snprintf(err, errlen, "unknown group %s", gpart);
				return -1;
			}
			u->gid = g;
		}
	}
	if (gr && u->name[0])
		group_scan(gr, NULL, NULL, u->name, supp, &nsupp);
	free(gr);
	u->ngroups = 0;
	add_group(u, u->gid);
	for (int i = 0; i < nsupp; i++)
		add_group(u, supp[i]);
	return 0;
}

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
	int slave;		  /* PTY slave */
	int in_r, out_w, err_w; /* pipe ends */
	const struct fop_req *call; /* a CALL: the operation (argv, envp, path unused) */
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
	 * (and the only one for a call, which never execs). */
	syscall(SYS_close_range, 3u, ~0u, 0u);

	if (s->root) {
		if (chroot(s->root) < 0) {
			*f = (struct enter_fail){.what = "chroot", .subject = s->root, .err = errno};
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
				send_error(stream, ROOST_E_BAD_REQUEST, "NUL byte in string (tag 0x%04x)", t.tag);
				return -1;
			}
			if (t.tag == ROOST_TAG_ARG) {
				r->nargs++;
			} else if (t.tag == ROOST_TAG_ENV) {
				const uint8_t *eq = t.len ? memchr(t.value, '=', t.len) : NULL;
				if (!eq || eq == t.value) {
					send_error(stream, ROOST_E_BAD_REQUEST, "ENV entry is not K=V");
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
		case ROOST_TAG_TIMEOUT_MS: u32 = &r->timeout_ms; break;
		case ROOST_TAG_STDIN: u32 = &r->stdin_on; break;
		case ROOST_TAG_WINDOW: u32 = &r->window; break;
		case ROOST_TAG_PTY: u32 = r->is_call ? NULL : &r->pty; break;
		case ROOST_TAG_ROWS: u32 = r->is_call ? NULL : &r->rows; break;
		case ROOST_TAG_COLS: u32 = r->is_call ? NULL : &r->cols; break;
		case ROOST_TAG_MODE:
			u32 = r->is_call ? &r->mode : NULL;
			r->has_mode = r->is_call;
			break;
		case ROOST_TAG_CALL_FLAGS: u32 = r->is_call ? &r->call_flags : NULL; break;
		case ROOST_TAG_DEPTH: u32 = r->is_call ? &r->depth : NULL; break;
		case ROOST_TAG_SIZE:
			if (!r->is_call)
				continue;
			if (roost_tlv_u64(&t, &r->size) < 0) {
				send_error(stream, ROOST_E_PROTOCOL, "%s tag 0x%04x must be a u64", kind, t.tag);
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
			send_error(stream, ROOST_E_PROTOCOL, "%s tag 0x%04x must be a u32", kind, t.tag);
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

/* EXEC (is_call false) and CALL (true): the same stream, a different child. */
static void handle_exec(uint32_t stream, const uint8_t *p, uint32_t len, bool is_call)
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
		send_error(stream, ROOST_E_BAD_REQUEST, "too many streams (max %u)", ROOST_MAX_STREAMS);
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
	if (resolve_user(user_spec, user, errbuf, sizeof errbuf) < 0) {
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
		.root = root_ok ? CMD_ROOT : NULL,
		.user = user,
		.pty = r.pty != 0,
		.slave = -1,
		.in_r = -1,
		.out_w = -1,
		.err_w = -1,
		.call = is_call ? &call : NULL,
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
		struct winsize ws = {.ws_row = (unsigned short)r.rows, .ws_col = (unsigned short)r.cols};
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
	e->next = execs;
	execs = e;
	exec_count++;
	recent_remove(stream);

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

/* ------------------------------------------------------------------ */
/* other host frames */

static void set_clock(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
	if (clock_settime(CLOCK_REALTIME, &ts) < 0)
		logmsg("clock_settime: %s", strerror(errno));
}

/* Mixes the host's entropy into the kernel's pool, then re-keys the CRNG from
 * the pool at once: the CRNG otherwise reseeds on its own schedule, and two
 * copies restored from one snapshot would go on producing the same bytes
 * until then. Failures are harmless (the second is logged once). */
static void add_entropy(const uint8_t *p, uint32_t n)
{
	static bool reseed_logged;
	struct roost_rand_pool_info info;
	if (n > sizeof info.buf)
		return;
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (n > 0) {
		info.entropy_count = (int)n * 8;
		info.buf_size = (int)n;
		memcpy(info.buf, p, n);
		(void)ioctl(fd, ROOST_RNDADDENTROPY, &info);
		memset(&info, 0, sizeof info);
	}
	if (ioctl(fd, ROOST_RNDRESEEDCRNG) < 0 && !reseed_logged) {
		logmsg("RNDRESEEDCRNG: %s", strerror(errno));
		reseed_logged = true;
	}
	close(fd);
}

/* ------------------------------------------------------------------ */
/* networking: eth0 as the host's HELLO describes it */

static uint8_t net_applied[ROOST_NET_LEN]; /* the last configuration applied */
static bool net_applied_ok;

static bool ifreq_ioctl(int s, unsigned long req, struct ifreq *ifr, const char *what)
{
	if (ioctl(s, req, ifr) == 0)
		return true;
	logmsg("network: %s on %s: %s", what, ifr->ifr_name, strerror(errno));
	return false;
}

static void put_sin(struct sockaddr *sa, const uint8_t *addr)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	memcpy(&sin.sin_addr, addr, 4);
	memcpy(sa, &sin, sizeof sin);
}

/* Writes path (below the command root) atomically, replacing a symlink
 * rather than following it: the guest's files are its own, but the agent
 * should not write through a link an image left there. */
static void write_guest_file(const char *path, const char *text)
{
	/* Unchanged: left alone (no write on every HELLO; a full disk stays as it was). */
	struct stat st;
	char old[256];
	size_t n = strlen(text);
	if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == n && n < sizeof old) {
		int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t got = read(fd, old, n);
			close(fd);
			if (got == (ssize_t)n && memcmp(old, text, n) == 0)
				return;
		}
	}
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof tmp, "%s.roost-tmp", path) >= (int)sizeof tmp)
		return;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		if (errno != ENOENT) /* an image without /etc */
			logmsg("network: %s: %s", tmp, strerror(errno));
		return;
	}
	bool ok = write(fd, text, n) == (ssize_t)n;
	if (close(fd) < 0)
		ok = false;
	if (!ok || rename(tmp, path) < 0) {
		logmsg("network: writing %s failed", path);
		unlink(tmp);
	}
}

/* Configures eth0 from HELLO's NET value: MAC (a restored copy gets its
 * own), MTU, address, default route, and the resolver of the command root.
 * Applied again only when it changes. Failures are logged: the host sees
 * them as a network that does not answer. */
static void net_configure(const uint8_t *v)
{
	if (net_applied_ok && memcmp(v, net_applied, ROOST_NET_LEN) == 0)
		return;
	const uint8_t *mac = v, *addr = v + 8, *gw = v + 13, *dns = v + 17;
	unsigned mtu = (unsigned)v[6] << 8 | v[7], prefix = v[12];
	if (prefix == 0 || prefix > 30 || mtu < 576) {
		logmsg("network: bad configuration (prefix %u, mtu %u)", prefix, mtu);
		return;
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		logmsg("network: socket: %s", strerror(errno));
		return;
	}
	bool ok = true;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, "eth0", 5);
	ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
	memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
	ok &= ifreq_ioctl(s, SIOCSIFHWADDR, &ifr, "SIOCSIFHWADDR");
	ifr.ifr_mtu = (int)mtu;
	ok &= ifreq_ioctl(s, SIOCSIFMTU, &ifr, "SIOCSIFMTU");
	put_sin(&ifr.ifr_addr, addr);
	ok &= ifreq_ioctl(s, SIOCSIFADDR, &ifr, "SIOCSIFADDR");
	uint32_t maskv = htonl(0xffffffffu << (32 - prefix));
	put_sin(&ifr.ifr_netmask, (const uint8_t *)&maskv);
	ok &= ifreq_ioctl(s, SIOCSIFNETMASK, &ifr, "SIOCSIFNETMASK");
	if (ifreq_ioctl(s, SIOCGIFFLAGS, &ifr, "SIOCGIFFLAGS")) {
		ifr.ifr_flags = (short)(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
		ok &= ifreq_ioctl(s, SIOCSIFFLAGS, &ifr, "SIOCSIFFLAGS");
	} else {
		ok = false;
	}
	/* The default route: an old one (a restored copy's) goes first. */
	struct rtentry rt;
	memset(&rt, 0, sizeof rt);
	put_sin(&rt.rt_dst, (const uint8_t[4]){0, 0, 0, 0});
	put_sin(&rt.rt_genmask, (const uint8_t[4]){0, 0, 0, 0});
	(void)ioctl(s, SIOCDELRT, &rt);
	put_sin(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = ifr.ifr_name;
	if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
		logmsg("network: default route: %s", strerror(errno));
		ok = false;
	}
	close(s);
	if (root_ok) {
		char text[64];
		snprintf(text, sizeof text, "nameserver %u.%u.%u.%u\n", dns[0], dns[1], dns[2], dns[3]);
		write_guest_file(CMD_ROOT "/etc/resolv.conf", text);
		struct stat st;
		if (lstat(CMD_ROOT "/etc/hosts", &st) < 0 && errno == ENOENT)
			write_guest_file(CMD_ROOT "/etc/hosts", "127.0.0.1\tlocalhost roost\n::1\tlocalhost\n");
	}
	memcpy(net_applied, v, ROOST_NET_LEN);
	net_applied_ok = ok;
}

/* ------------------------------------------------------------------ */
/* snapshots: FREEZE, THAW, and a restored copy */

/* Freezes the sandbox's writable filesystem (the disk at ROOT_RW). Returns 0
 * or an errno: EOPNOTSUPP when there is no disk to freeze (ROOT_RW is a
 * tmpfs, or there is no command root). Already frozen: 0. */
static int fs_freeze(void)
{
	if (fs_frozen)
		return 0;
	sync();
	if (!root_ok)
		return EOPNOTSUPP;
	int fd = open(ROOT_RW, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = ioctl(fd, ROOST_FIFREEZE, 0) < 0 ? errno : 0;
	close(fd);
	if (err == 0)
		fs_frozen = true;
	return err;
}

/* Thaws what fs_freeze froze. Returns 0 or an errno (then it stays frozen
 * and a later THAW may try again). EINVAL from FITHAW means it was not
 * frozen (someone in the guest thawed it): that is success. */
static int fs_thaw(void)
{
	if (!fs_frozen)
		return 0;
	int fd = open(ROOT_RW, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = ioctl(fd, ROOST_FITHAW, 0) < 0 ? errno : 0;
	close(fd);
	if (err == EINVAL)
		err = 0;
	if (err == 0)
		fs_frozen = false;
	return err;
}

/* Answers FREEZE or THAW: {ERRNO}, and MESSAGE when it failed. */
static void send_fs_answer(uint8_t type, int err)
{
	struct roost_buf b;
	roost_buf_init(&b, scratch, sizeof scratch);
	size_t s = roost_frame_begin(&b, 0, type);
	roost_tlv_put_u32(&b, ROOST_TAG_ERRNO, (uint32_t)err);
	if (err) {
		char msg[256];
		if (type == ROOST_T_FREEZE && err == EOPNOTSUPP)
			snprintf(msg, sizeof msg, "nothing to freeze: the sandbox has no disk");
		else
			snprintf(msg, sizeof msg, "%s %s: %s", type == ROOST_T_FREEZE ? "FIFREEZE" : "FITHAW",
				 ROOT_RW, strerror(err));
		roost_tlv_put_str(&b, ROOST_TAG_MESSAGE, msg);
	}
	send_buf(&b, s);
}

/* FREEZE: sync, freeze the disk, and remember that a snapshot may be taken
 * (also without a disk to freeze). Writers to the disk block until THAW. */
static void handle_freeze(void)
{
	int err = fs_freeze();
	if (err == 0 || err == EOPNOTSUPP)
		snapshot_pending = true;
	else
		logmsg("FIFREEZE %s: %s", ROOT_RW, strerror(err));
	send_fs_answer(ROOST_T_FREEZE, err);
}

/* THAW: the snapshot is done (or abandoned); this is the source VM. */
static void handle_thaw(void)
{
	int err = fs_thaw();
	if (err)
		logmsg("FITHAW %s: %s", ROOT_RW, strerror(err));
	snapshot_pending = false;
	send_fs_answer(ROOST_T_THAW, err);
}

/* A disconnect or a HELLO while a snapshot was pending: this is a copy
 * restored from the snapshot meeting its first host (the source gets THAW on
 * its own connection instead). Thaws the disk; returns true if the ending
 * session's commands are to be kept (as orphans) and the VM is not to be
 * powered off for it: that session belonged to the source's host. */
static bool snapshot_restored(void)
{
	if (!snapshot_pending)
		return false;
	int err = fs_thaw();
	if (err)
		logmsg("restored copy: FITHAW %s: %s", ROOT_RW, strerror(err));
	snapshot_pending = false;
	return true;
}

static void handle_hello(uint32_t stream, const uint8_t *p, uint32_t len)
{
	if (stream != 0) {
		send_error(0, ROOST_E_PROTOCOL, "HELLO on stream %u", stream);
		return;
	}
	if (roost_tlv_validate(p, len) < 0) {
		send_error(0, ROOST_E_PROTOCOL, "malformed HELLO payload");
		return;
	}
	uint32_t version = 0, flags = 0;
	uint64_t time_ns = 0;
	const uint8_t *entropy = NULL, *nonce = NULL, *net = NULL;
	uint32_t entropy_len = 0, nonce_len = 0;
	struct roost_tlv_iter it;
	struct roost_tlv t;
	roost_tlv_iter_init(&it, p, len);
	while (roost_tlv_next(&it, &t) == 1) {
		int bad = 0;
		switch (t.tag) {
		case ROOST_TAG_VERSION: bad = roost_tlv_u32(&t, &version); break;
		case ROOST_TAG_FLAGS: bad = roost_tlv_u32(&t, &flags); break;
		case ROOST_TAG_TIME_NS: bad = roost_tlv_u64(&t, &time_ns); break;
		case ROOST_TAG_ENTROPY:
			bad = t.len > ROOST_MAX_ENTROPY;
			entropy = t.value;
			entropy_len = t.len;
			break;
		case ROOST_TAG_NONCE:
			bad = t.len > ROOST_MAX_NONCE;
			nonce = t.value;
			nonce_len = t.len;
			break;
		case ROOST_TAG_NET:
			bad = t.len != ROOST_NET_LEN;
			net = t.value;
			break;
		default: break;
		}
		if (bad) {
			send_error(0, ROOST_E_PROTOCOL, "bad HELLO field 0x%04x (length %u)", t.tag, t.len);
			return;
		}
	}

	hello_count++;
	/* A new session: the streams of the previous one are abandoned (or
	 * orphaned, in a restored copy of a snapshot). */
	session_end(snapshot_restored());
	session.established = version == ROOST_VERSION;
	if (session.established) {
		session.flags = flags;
		if (time_ns)
			set_clock(time_ns);
		add_entropy(entropy, entropy_len);
		if (net)
			net_configure(net);
	}

	struct roost_buf b;
	roost_buf_init(&b, scratch, sizeof scratch);
	size_t s = roost_frame_begin(&b, 0, ROOST_T_HELLO);
	roost_tlv_put_u32(&b, ROOST_TAG_VERSION, ROOST_VERSION);
	roost_tlv_put_str(&b, ROOST_TAG_AGENT_VERSION, AGENT_VERSION);
	roost_tlv_put_u32(&b, ROOST_TAG_MAX_PAYLOAD, ROOST_MAX_PAYLOAD);
	if (nonce)
		roost_tlv_put(&b, ROOST_TAG_NONCE, nonce, nonce_len);
	send_buf(&b, s);
	if (!session.established)
		send_error(0, ROOST_E_VERSION, "unsupported protocol version %u (agent speaks %u)",
			   version, ROOST_VERSION);
}

static void do_poweroff(const char *why);

static void handle_stream_frame(const struct roost_frame *f)
{
	struct exec *e = exec_find(f->stream);
	if (!e) {
		/* Frames racing with an EXIT the host has not seen yet. */
		if (recent_has(f->stream))
			return;
		send_error(f->stream, ROOST_E_NOT_FOUND, "no stream %u", f->stream);
		return;
	}
	const uint8_t *p = f->payload;
	switch (f->type) {
	case ROOST_T_DATA: {
		if (f->len < 1 || p[0] != 0) {
			stream_fail(e, ROOST_E_PROTOCOL, "DATA from the host must be for fd 0");
			return;
		}
		uint32_t n = f->len - 1;
		if (!e->stdin_enabled || e->stdin_eof) {
			stream_fail(e, ROOST_E_PROTOCOL, "DATA on a closed stdin");
			return;
		}
		if (n > e->stdin_credit) {
			stream_fail(e, ROOST_E_PROTOCOL, "stdin DATA of %u bytes beyond credit %u", n,
				   e->stdin_credit);
			return;
		}
		if (n == 0)
			return;
		e->stdin_credit -= n;
		if (e->stdin_closed) {
			/* The process no longer reads stdin: drop, return credit. */
			if (!e->reaped) {
				e->stdin_credit += n;
				send_credit(f->stream, 0, n);
			}
			return;
		}
		if (!e->inq) {
			e->inq = malloc(e->stdin_window);
			if (!e->inq) {
				e->stdin_credit += n;
				stream_fail(e, ROOST_E_INTERNAL, "malloc: %s", strerror(ENOMEM));
				return;
			}
		}
		/* credit + queued = stdin_window, so this always fits. */
		if (e->inq_off + e->inq_len + n > e->stdin_window) {
			memmove(e->inq, e->inq + e->inq_off, e->inq_len);
			e->inq_off = 0;
		}
		memcpy(e->inq + e->inq_off + e->inq_len, p + 1, n);
		e->inq_len += n;
		exec_write_in(e);
		return;
	}
	case ROOST_T_EOF:
		if (f->len != 1 || p[0] != 0) {
			stream_fail(e, ROOST_E_PROTOCOL, "EOF from the host must be [0]");
			return;
		}
		if (e->stdin_enabled && !e->stdin_eof) {
			e->stdin_eof = true;
			if (!e->stdin_closed)
				exec_write_in(e);
		}
		return;
	case ROOST_T_CREDIT: {
		if (f->len != 5 || (p[0] != 1 && p[0] != 2)) {
			stream_fail(e, ROOST_E_PROTOCOL, "CREDIT from the host must be [1|2][u32]");
			return;
		}
		int i = p[0] - 1;
		e->credit[i] += roost_get_u32(p + 1);
		if (e->credit[i] > CREDIT_CAP)
			e->credit[i] = CREDIT_CAP;
		return;
	}
	case ROOST_T_SIGNAL: {
		if (f->len != 4) {
			stream_fail(e, ROOST_E_PROTOCOL, "SIGNAL payload must be a u32");
			return;
		}
		uint32_t sig = roost_get_u32(p);
		if (sig < 1 || sig > 64) {
			stream_fail(e, ROOST_E_BAD_REQUEST, "bad signal number %u", sig);
			return;
		}
		exec_kill(e, (int)sig);
		return;
	}
	case ROOST_T_RESIZE: {
		if (f->len != 4) {
			stream_fail(e, ROOST_E_PROTOCOL, "RESIZE payload must be [u16][u16]");
			return;
		}
		/* Without a PTY there is no window size: a harmless no-op. */
		struct winsize ws = {.ws_row = roost_get_u16(p), .ws_col = roost_get_u16(p + 2)};
		if (e->pty && e->ptm >= 0)
			ioctl(e->ptm, TIOCSWINSZ, &ws);
		return;
	}
	}
}

static void handle_frame(const struct roost_frame *f)
{
	switch (f->type) {
	case ROOST_T_HELLO:
		handle_hello(f->stream, f->payload, f->len);
		return;
	case ROOST_T_PING:
		if (f->stream != 0 || f->len > ROOST_MAX_PING) {
			send_error(0, ROOST_E_PROTOCOL, "PING must be on stream 0 with <= %u bytes (stream %u, %u bytes)",
				   ROOST_MAX_PING, f->stream, f->len);
			return;
		}
		send_raw(0, ROOST_T_PONG, f->payload, f->len);
		return;
	case ROOST_T_POWEROFF:
		if (f->stream != 0 || f->len != 0) {
			send_error(0, ROOST_E_PROTOCOL, "POWEROFF must be on stream 0 and empty");
			return;
		}
		do_poweroff("POWEROFF from host");
		return;
	case ROOST_T_FREEZE:
	case ROOST_T_THAW:
		if (f->stream != 0 || f->len != 0) {
			send_error(0, ROOST_E_PROTOCOL, "%s must be on stream 0 and empty",
				   f->type == ROOST_T_FREEZE ? "FREEZE" : "THAW");
			return;
		}
		if (f->type == ROOST_T_FREEZE)
			handle_freeze();
		else
			handle_thaw();
		return;
	case ROOST_T_ERROR:
		return; /* the host's complaint; never answer an error with an error */
	case ROOST_T_EXEC:
	case ROOST_T_CALL:
		handle_exec(f->stream, f->payload, f->len, f->type == ROOST_T_CALL);
		return;
	case ROOST_T_DATA:
	case ROOST_T_EOF:
	case ROOST_T_CREDIT:
	case ROOST_T_SIGNAL:
	case ROOST_T_RESIZE:
		if (f->stream == 0) {
			send_error(0, ROOST_E_PROTOCOL, "message type 0x%02x on stream 0", f->type);
			return;
		}
		handle_stream_frame(f);
		return;
	case ROOST_T_PONG:
	case ROOST_T_STARTED:
	case ROOST_T_EXIT:
		send_error(0, ROOST_E_PROTOCOL, "message type 0x%02x (stream %u) is agent-to-host only",
			   f->type, f->stream);
		return;
	default:
		/* On stream 0, leaving any stream it names alone: a newer host
		 * may use a message type this agent does not know. */
		send_error(0, ROOST_E_PROTOCOL, "unknown message type 0x%02x (stream %u)", f->type,
			   f->stream);
		return;
	}
}

/* ------------------------------------------------------------------ */
/* the port */

static void port_feed(const uint8_t *b, size_t n)
{
	while (n > 0) {
		struct roost_frame f;
		int res;
		size_t used = roost_parser_feed(&parser, b, n, &f, &res);
		b += used;
		n -= used;
		if (res == ROOST_PARSE_FRAME) {
			handle_frame(&f);
		} else if (res == ROOST_PARSE_ERROR) {
			/* Out of sync: drop what is buffered (the rest of this read)
			 * and go on reading. */
			send_error(0, ROOST_E_PROTOCOL, "bad frame length %u", parser.bad_length);
			return;
		}
	}
}

static void on_disconnect(void)
{
	bool restored = snapshot_restored();
	bool off = !restored && session.established && (session.flags & ROOST_FLAG_POWEROFF_ON_DISCONNECT);
	port_connected = false;
	next_port_check = now_ms() + DISCONNECTED_RECHECK_MS;
	roost_parser_reset(&parser);
	out_reset();
	session_end(restored);
	if (off)
		do_poweroff("host disconnected");
}

/* Reads the port until it would block. On a hangup everything still queued
 * is read (and acted on: it may be a POWEROFF) before the disconnect. */
static void port_read(bool hup)
{
	static uint8_t buf[65536];
	const unsigned hellos_before = hello_count;
	for (;;) {
		if (!hup && out.len >= OUT_PORT_LIMIT)
			return;
		ssize_t n = read(port_fd, buf, sizeof buf);
		if (n > 0) {
			port_feed(buf, (size_t)n);
			if (!port_connected)
				return;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			/* EAGAIN means a host is connected now (with none, read
			 * returns 0). A hangup seen before a HELLO that this read
			 * handled was the previous host's (a restored VM sees one
			 * while its new host connects): the new session stands. */
			if (hup && hello_count == hellos_before)
				on_disconnect();
			return;
		}
		/* 0: no host and nothing left; an error (ENODEV: unplugged). */
		if (n < 0)
			logmsg("read port: %s", strerror(errno));
		on_disconnect();
		return;
	}
}

/* While disconnected the port is out of the poll set (it reports POLLHUP
 * continuously); this checks it. */
static void port_check(void)
{
	struct pollfd pfd = {.fd = port_fd, .events = POLLIN};
	if (poll(&pfd, 1, 0) < 0 || (pfd.revents & (POLLHUP | POLLERR | POLLNVAL))) {
		next_port_check = now_ms() + DISCONNECTED_RECHECK_MS;
		return;
	}
	port_connected = true;
	roost_parser_reset(&parser);
	out_reset();
}

static bool find_port(const char *name, char *dev, size_t devlen)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return false;
	bool found = false;
	struct dirent *de;
	while (!found && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[PATH_MAX], got[256];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", de->d_name);
		ssize_t l = read_small(path, got, sizeof got);
		if (l <= 0)
			continue;
		while (l > 0 && (got[l - 1] == '\n' || got[l - 1] == ' '))
			got[--l] = 0;
		if (strcmp(got, name) == 0) {
			snprintf(dev, devlen, "/dev/%s", de->d_name);
			found = true;
		}
	}
	closedir(d);
	return found;
}

static void open_port(const char *name)
{
	char dev[PATH_MAX];
	uint64_t start = now_ms();
	bool complained = false;
	int last_err = 0;
	for (;;) {
		if (find_port(name, dev, sizeof dev)) {
			port_fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
			if (port_fd >= 0) {
				if (complained)
					logmsg("port %s is %s", name, dev);
				return;
			}
			last_err = errno;
		}
		if (!complained && now_ms() - start > 5000) {
			if (last_err)
				logmsg("cannot open port %s (%s): %s; still trying", name, dev, strerror(last_err));
			else
				logmsg("port %s not found; still waiting", name);
			complained = true;
		}
		/* Orphans may already exist only in theory; reap anyway. */
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		sleep_ms(complained ? 1000 : 10);
	}
}

/* ------------------------------------------------------------------ */
/* signals and power */

static void reap_children(void)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid <= 0)
			return;
		bool found = false;
		for (struct exec *e = execs; e; e = e->next) {
			if (e->pid == pid && !e->reaped) {
				e->reaped = true;
				e->status = st;
				exec_on_reaped(e);
				found = true;
				break;
			}
		}
		for (struct exec *e = orphans; e && !found; e = e->next) {
			if (e->pid == pid) {
				orphan_free(e); /* silently: nobody waits for its EXIT */
				break;
			}
		}
	}
}

/* Reaps children for up to `ms`, returning early once none are left. */
static void reap_for(unsigned ms)
{
	for (uint64_t end = now_ms() + ms; now_ms() < end;) {
		pid_t r;
		while ((r = waitpid(-1, NULL, WNOHANG)) > 0)
			;
		if (r < 0 && errno == ECHILD)
			return;
		sleep_ms(10);
	}
}

static void do_poweroff(const char *why)
{
	logmsg("power off: %s", why);
	/* Writers blocked on a frozen disk could not even be killed. */
	int err = fs_thaw();
	if (err)
		logmsg("FITHAW %s: %s", ROOT_RW, strerror(err));
	kill(-1, SIGTERM);
	reap_for(500);
	kill(-1, SIGKILL);
	reap_for(200);
	sync();
	/* QEMU runs with -no-reboot and the kernel with reboot=t: a reboot
	 * ends the VM. (RB_POWER_OFF would only halt a machine without ACPI.) */
	reboot(RB_AUTOBOOT);
	logmsg("reboot: %s", strerror(errno));
}

static void handle_signals(void)
{
	struct signalfd_siginfo si[16];
	for (;;) {
		ssize_t n = read(sig_fd, si, sizeof si);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (size_t i = 0; i < (size_t)n / sizeof si[0]; i++) {
			int sig = (int)si[i].ssi_signo;
			if (sig == SIGCHLD)
				continue; /* reaped below */
			if (sig == SIGPWR) {
				do_poweroff("SIGPWR");
				continue;
			}
			for (struct exec *e = execs; e; e = e->next)
				exec_kill(e, sig);
			for (struct exec *e = orphans; e; e = e->next)
				exec_kill(e, sig);
		}
	}
	reap_children();
}

/* ------------------------------------------------------------------ */
/* boot */

static void ensure_stdio(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int n = fd == 0 ? -1 : open("/dev/console", O_WRONLY | O_NOCTTY);
		if (n < 0)
			n = open("/dev/null", O_RDWR);
		if (n >= 0 && n != fd) {
			dup2(n, fd);
			close(n);
		}
	}
}

static void boot_mounts(void)
{
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", true);
	ensure_stdio();
	console_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	do_mount("proc", "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL, true);
	do_mount("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL, true);
	do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=0666", true);
	/* Point /dev/ptmx at this devpts instance. */
	unlink("/dev/ptmx");
	if (symlink("pts/ptmx", "/dev/ptmx") < 0)
		logmsg("symlink /dev/ptmx: %s", strerror(errno));
	do_mount("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777", true);
	do_mount("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777", true);
	do_mount("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755", true);
	devnull_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull_fd < 0)
		logmsg("open /dev/null: %s", strerror(errno));
}

static void wait_for_device(const char *dev)
{
	for (int i = 0; i < 200 && access(dev, F_OK) < 0; i++)
		sleep_ms(10);
}

/* The command root: the image's read-only filesystem (dev) under an overlay
 * whose upper layer is the sandbox's own disk (ext4 on `disk`) or, without
 * one, a tmpfs. Processes are chrooted into CMD_ROOT; the agent stays out. */
static void setup_root(const char *dev, const char *fstype, const char *disk)
{
	root_requested = true;
	wait_for_device(dev);
	mkdir_p(ROOT_LOWER, 0755);
	const char *types[] = {fstype, NULL, NULL};
	if (!fstype) {
		types[0] = "erofs";
		types[1] = "ext4";
	}
	int err = 0;
	const char *used = NULL;
	for (int i = 0; types[i]; i++) {
		if (mount(dev, ROOT_LOWER, types[i], MS_RDONLY, NULL) == 0) {
			used = types[i];
			break;
		}
		err = errno;
	}
	if (!used) {
		snprintf(root_err, sizeof root_err, "mount %s on %s (%s): %s", dev, ROOT_LOWER,
			 fstype ? fstype : "erofs/ext4", strerror(err));
		logmsg("%s", root_err);
		return;
	}
	if (disk) {
		wait_for_device(disk);
		/* discard: what the guest deletes is freed on the host too.
		 * noinit_itable: the host made the filesystem with lazy inode
		 * tables; zeroing them here would write megabytes per sandbox. */
		if (do_mount(disk, ROOT_RW, "ext4", MS_NOSUID | MS_NODEV | MS_NOATIME,
			     "noinit_itable,discard", false) < 0) {
			snprintf(root_err, sizeof root_err, "mount disk %s on %s: %s", disk, ROOT_RW, strerror(errno));
			return;
		}
	} else if (do_mount("tmpfs", ROOT_RW, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", false) < 0) {
		snprintf(root_err, sizeof root_err, "mount tmpfs on %s: %s", ROOT_RW, strerror(errno));
		return;
	}
	if (mkdir_p(ROOT_UPPER, 0755) < 0 || mkdir_p(ROOT_WORK, 0755) < 0) {
		snprintf(root_err, sizeof root_err, "mkdir %s: %s", ROOT_UPPER, strerror(errno));
		logmsg("%s", root_err);
		return;
	}
	if (do_mount("overlay", CMD_ROOT, "overlay", 0,
		     "lowerdir=" ROOT_LOWER ",upperdir=" ROOT_UPPER ",workdir=" ROOT_WORK, false) < 0) {
		snprintf(root_err, sizeof root_err, "mount overlay on %s: %s", CMD_ROOT, strerror(errno));
		return;
	}
	root_ok = true;
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
	do_mount("proc", CMD_ROOT "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL, false);
	do_mount("sysfs", CMD_ROOT "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL, false);
	/* The agent's /dev with its devpts and shm, so PTYs allocated by the
	 * agent have the same names inside the root. */
	do_mount("/dev", CMD_ROOT "/dev", NULL, MS_BIND | MS_REC, NULL, false);
	if (disk) {
		/* /tmp and /run stay on the disk, as in a container: large
		 * temporary files must not eat guest memory. */
		if (mkdir(CMD_ROOT "/tmp", 01777) == 0)
			chmod(CMD_ROOT "/tmp", 01777);
	} else {
		do_mount("tmpfs", CMD_ROOT "/tmp", "tmpfs", nosuid_nodev, "mode=1777", false);
		do_mount("tmpfs", CMD_ROOT "/run", "tmpfs", nosuid_nodev, "mode=0755", false);
	}
}

/* Finds key=value in the kernel command line; value copied into val. */
/* Brings up the loopback interface: programs expect 127.0.0.1 to exist. */
static void loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		logmsg("loopback: socket: %s", strerror(errno));
		return;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, "lo", 3);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
		logmsg("loopback: SIOCGIFFLAGS: %s", strerror(errno));
	} else {
		ifr.ifr_flags = (short)(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			logmsg("loopback: SIOCSIFFLAGS: %s", strerror(errno));
	}
	close(s);
}

static bool cmdline_get(const char *cmdline, const char *key, char *val, size_t vallen)
{
	size_t kl = strlen(key);
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		const char *w = p;
		bool quoted = false;
		while (*p && (quoted || (*p != ' ' && *p != '\t' && *p != '\n'))) {
			if (*p == '"')
				quoted = !quoted;
			p++;
		}
		size_t wl = (size_t)(p - w);
		if (wl > kl && strncmp(w, key, kl) == 0 && w[kl] == '=') {
			const char *v = w + kl + 1;
			size_t vl = wl - kl - 1;
			if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
				v++;
				vl -= 2;
			}
			if (vl == 0 || vl >= vallen)
				return false;
			memcpy(val, v, vl);
			val[vl] = 0;
			return true;
		}
	}
	return false;
}

static void setup_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR};
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaddset(&set, sigs[i]);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0)
		logmsg("signalfd: %s", strerror(errno));
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

/* ------------------------------------------------------------------ */
/* main loop */

enum { ROLE_IN, ROLE_OUT1, ROLE_OUT2, ROLE_ORPHAN1, ROLE_ORPHAN2 };

int main(void)
{
	setup_signals();
	umask(022);
	if (chdir("/") < 0) {
		/* nothing sensible to do */
	}
	boot_mounts();
	if (sethostname("roost", 5) < 0)
		logmsg("sethostname: %s", strerror(errno));

	static char cmdline[4096];
	if (read_small("/proc/cmdline", cmdline, sizeof cmdline) < 0)
		cmdline[0] = 0;
	/* The benchmark floor: the same kernel and initramfs, powered off as the first act. */
	char flag[8];
	if (cmdline_get(cmdline, "roost.poweroff", flag, sizeof flag) && strcmp(flag, "1") == 0)
		reboot(RB_AUTOBOOT);

	loopback_up();
	char port_name[256], root_dev[256] = "", root_type[64], disk_dev[256];
	if (!cmdline_get(cmdline, "roost.port", port_name, sizeof port_name))
		strcpy(port_name, DEFAULT_PORT);
	if (cmdline_get(cmdline, "roost.root", root_dev, sizeof root_dev)) {
		bool has_type = cmdline_get(cmdline, "roost.rootfstype", root_type, sizeof root_type);
		bool has_disk = cmdline_get(cmdline, "roost.disk", disk_dev, sizeof disk_dev);
		setup_root(root_dev, has_type ? root_type : NULL, has_disk ? disk_dev : NULL);
	}

	open_port(port_name);
	roost_parser_reset(&parser);
	port_check();
	logmsg("ready (%s%s)", root_ok ? "root " : "no root", root_ok ? root_dev : "");

	/* The signalfd, the port, 3 fds per stream and 2 per orphan. */
	enum { MAX_POLL = 2 + 3 * ROOST_MAX_STREAMS + 2 * MAX_ORPHANS };
	static struct pollfd pfd[MAX_POLL];
	static struct exec *pexec[MAX_POLL];
	static int prole[MAX_POLL];

	for (;;) {
		uint64_t now = now_ms();
		int timeout = -1;

		/* Deadlines, draining and finishing. */
		for (struct exec *e = execs, *next; e; e = next) {
			next = e->next;
			if (!e->reaped && e->deadline && now >= e->deadline) {
				e->timed_out = true;
				if (e->is_call && !e->term_sent) {
					/* Let it clean up; kill it if it does not end. */
					exec_kill(e, SIGTERM);
					e->term_sent = true;
					e->deadline = now + CALL_TERM_GRACE_MS;
				} else {
					exec_kill(e, SIGKILL);
					e->deadline = 0;
				}
			}
			if (!e->reaped && e->deadline) {
				uint64_t d = e->deadline - now;
				if (timeout < 0 || d < (uint64_t)timeout)
					timeout = (int)(d > INT32_MAX ? INT32_MAX : d);
			}
			if (e->reaped) {
				exec_read_out(e, 0);
				exec_read_out(e, 1);
				if (e->out_done[0] && e->out_done[1])
					exec_finish(e);
			}
		}
		if (port_connected && out.len)
			port_flush();
		if (sig_fd < 0) {
			/* No signalfd: poll for children instead. */
			reap_children();
			if (timeout < 0 || timeout > 100)
				timeout = 100;
		}
		if (!port_connected) {
			uint64_t d = next_port_check > now ? next_port_check - now : 0;
			if (timeout < 0 || d < (uint64_t)timeout)
				timeout = (int)d;
		}

		int n = 0, port_idx = -1, sig_idx = -1;
		if (sig_fd >= 0) {
			pfd[n] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
			sig_idx = n++;
		}
		if (port_connected) {
			short ev = 0;
			if (out.len < OUT_PORT_LIMIT)
				ev |= POLLIN;
			if (out.len)
				ev |= POLLOUT;
			pfd[n] = (struct pollfd){.fd = port_fd, .events = ev};
			port_idx = n++;
		}
		for (struct exec *e = execs; e; e = e->next) {
			if (e->reaped)
				continue;
			if (e->in_fd >= 0 && !e->stdin_closed && (e->inq_len || e->stdin_eof)) {
				pfd[n] = (struct pollfd){.fd = e->in_fd, .events = POLLOUT};
				pexec[n] = e;
				prole[n++] = ROLE_IN;
			}
			for (int i = 0; i < 2; i++) {
				if (e->out_done[i] || e->credit[i] == 0 || out.len >= OUT_PIPE_LIMIT)
					continue;
				pfd[n] = (struct pollfd){.fd = e->out_fd[i], .events = POLLIN};
				pexec[n] = e;
				prole[n++] = i == 0 ? ROLE_OUT1 : ROLE_OUT2;
			}
		}
		/* Orphans are never reaped while listed; one at EOF is not polled. */
		for (struct exec *e = orphans; e; e = e->next) {
			for (int i = 0; i < 2; i++) {
				if (e->out_done[i])
					continue;
				pfd[n] = (struct pollfd){.fd = e->out_fd[i], .events = POLLIN};
				pexec[n] = e;
				prole[n++] = i == 0 ? ROLE_ORPHAN1 : ROLE_ORPHAN2;
			}
		}

		int r = poll(pfd, (nfds_t)n, timeout);
		if (r < 0) {
			if (errno != EINTR) {
				logmsg("poll: %s", strerror(errno));
				sleep_ms(10);
			}
			continue;
		}

		/* Exec fds first: handling the port may free execs. */
		for (int i = 0; i < n; i++) {
			if (i == sig_idx || i == port_idx || pfd[i].revents == 0)
				continue;
			struct exec *e = pexec[i];
			if (prole[i] == ROLE_IN)
				exec_write_in(e);
			else if (prole[i] == ROLE_ORPHAN1 || prole[i] == ROLE_ORPHAN2)
				orphan_drain(e, prole[i] == ROLE_ORPHAN1 ? 0 : 1);
			else
				exec_read_out(e, prole[i] == ROLE_OUT1 ? 0 : 1);
		}
		if (sig_idx >= 0 && pfd[sig_idx].revents)
			handle_signals();
		if (port_idx >= 0 && pfd[port_idx].revents) {
			short rev = pfd[port_idx].revents;
			if (rev & POLLOUT)
				port_flush();
			if (rev & (POLLIN | POLLHUP | POLLERR))
				port_read((rev & (POLLHUP | POLLERR)) != 0);
		}
		if (!port_connected && now_ms() >= next_port_check)
			port_check();
	}
}
