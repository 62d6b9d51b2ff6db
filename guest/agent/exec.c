/* Exec streams: see exec.h. */
#include "exec.h"

#include "control.h"
#include "p9relay.h"
#include "port.h"
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define CREDIT_CAP      (1ull << 48) /* output credit saturates here */
#define PTY_DRAIN_SLACK 65536u       /* tty flip-buffer bytes possibly in flight at exit */
#define RECENT_MAX      256          /* finished stream ids remembered per session */

struct exec *execs;
unsigned exec_count;
struct exec *orphans;
static unsigned orphan_count;

/* Streams that ended lately (EXIT or ERROR): frames for them are ignored. */
static uint32_t recent[RECENT_MAX];
static unsigned recent_n, recent_pos;

/* ------------------------------------------------------------------ */
/* execs */

/* The current session's stream `stream` (orphans are on their own list). */
struct exec *exec_find(uint32_t stream)
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

void exec_kill(struct exec *e, int sig)
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
void orphan_drain(struct exec *e, int i)
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
void session_end(bool keep_commands)
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
				logmsg("%u orphaned commands already: killing the rest",
				       orphan_count);
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
void exec_read_out(struct exec *e, int i)
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
void exec_write_in(struct exec *e)
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

void exec_finish(struct exec *e)
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
__attribute__((format(printf, 3, 4))) void stream_fail(struct exec *e, uint32_t code,
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

void handle_stream_frame(const struct roost_frame *f)
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
			stream_fail(e, ROOST_E_PROTOCOL, "stdin DATA of %u bytes beyond credit %u",
				    n, e->stdin_credit);
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

void reap_children(void)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid <= 0)
			return;
		if (p9relay_reaped(pid, st))
			continue;
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

void exec_add(struct exec *e)
{
	e->next = execs;
	execs = e;
	exec_count++;
	recent_remove(e->stream);
}

void exec_signal_all(int sig)
{
	for (struct exec *e = execs; e; e = e->next)
		exec_kill(e, sig);
	for (struct exec *e = orphans; e; e = e->next)
		exec_kill(e, sig);
}
