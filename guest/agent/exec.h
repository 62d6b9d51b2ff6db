/*
 * Exec streams (EXEC and CALL after they started): the table of the current
 * session's streams, their output under credit, their stdin queue, EXIT, the
 * frames the host sends on a stream, orphans of a restored snapshot, and
 * reaping.
 */
#ifndef ROOST_EXEC_H
#define ROOST_EXEC_H

#include "proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STDIN_WINDOW       65536u  /* credit granted to the host for fd 0 */
#define CALL_STDIN_WINDOW  262144u /* the same for a CALL (file contents, tar streams) */
#define CALL_TERM_GRACE_MS 5000u   /* a call not gone this long after its SIGTERM is killed */

/* Commands of a session that ended in a restored copy of a snapshot keep
 * running as orphans (see session_end); at most this many at a time, on top
 * of the ROOST_MAX_STREAMS streams of the current session. */
#define MAX_ORPHANS ROOST_MAX_STREAMS

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

	int in_fd;             /* stdin: pipe write end, or ptm; -1 when closed */
	bool stdin_enabled;    /* STDIN=1 */
	bool stdin_eof;        /* host sent EOF [0] */
	bool stdin_closed;     /* nothing more goes to the process */
	uint32_t stdin_credit; /* credit the host still has for fd 0 */
	uint32_t stdin_window; /* STDIN_WINDOW or CALL_STDIN_WINDOW (0 without stdin) */
	uint8_t *inq; /* queued stdin bytes, capacity stdin_window (allocated on first DATA) */
	size_t inq_off, inq_len;
};

/* The current session's streams. */
extern struct exec *execs;
extern unsigned exec_count;
/* Orphans: commands of an earlier session, kept running by a restored copy
 * of a snapshot. Not streams (stream 0, never found by exec_find), no credit:
 * their output is read and discarded, and they are reaped without an EXIT. */
extern struct exec *orphans;

/* The current session's stream `stream`, or NULL. */
struct exec *exec_find(uint32_t stream);
/* Makes a started exec (stream, pid and fds set) a stream of the session. */
void exec_add(struct exec *e);
/* Signals e's process group (never after the reap: the pid may be reused). */
void exec_kill(struct exec *e, int sig);
/* Sends an ERROR on e's stream and ends it without an EXIT. */
__attribute__((format(printf, 3, 4))) void stream_fail(struct exec *e, uint32_t code,
						       const char *fmt, ...);
/* Ends the session's streams; keep_commands: running commands become orphans. */
void session_end(bool keep_commands);

/* Output of fd i+1 into DATA frames while there is credit and room. */
void exec_read_out(struct exec *e, int i);
/* Queued stdin to the process, credit back to the host. */
void exec_write_in(struct exec *e);
/* EOFs and EXIT of a reaped exec whose output is done; frees it. */
void exec_finish(struct exec *e);
/* Reads and drops an orphan's output on fd i+1. */
void orphan_drain(struct exec *e, int i);

/* DATA, EOF, CREDIT, SIGNAL, RESIZE from the host on a stream other than 0. */
void handle_stream_frame(const struct roost_frame *f);
/* Reaps every exited child; a stream's is noted for its EXIT, an orphan's freed. */
void reap_children(void);
/* Passes a signal the agent got on to every stream's and orphan's process group. */
void exec_signal_all(int sig);

#endif
