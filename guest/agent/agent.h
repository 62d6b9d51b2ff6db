/*
 * roost-agent: PID 1 of a Roost microVM guest.
 *
 * Boots the guest (mounts, command root), opens the virtio-serial port named
 * on the kernel command line and serves the host protocol of
 * docs/PROTOCOL.md on it with a single-threaded poll() loop: sessions (HELLO),
 * PING, POWEROFF, FREEZE/THAW (snapshots), and exec streams (EXEC, CALL,
 * DATA, EOF, CREDIT, SIGNAL, RESIZE, STARTED, EXIT). A CALL runs a built-in
 * file operation (fileops.c) in a forked child, on a stream like an EXEC's. It
 * never exits: every failure is logged to /dev/console and reported to the
 * host where one is connected.
 *
 * The parts, one job each (each of the first nine has a header of its name):
 *   boot.c     PID 1's start (mounts, command root), signals, power off, the poll loop
 *   port.c     the virtio-serial port: reading frames, the outbound buffer, sending
 *   control.c  stream 0: HELLO (version, capabilities), PING, POWEROFF, dispatch
 *   exec.c     exec streams: the stream table, output, stdin, EXIT, orphans, reaping
 *   spawn.c    EXEC and CALL requests and the child side of a fork (chroot, ids, execve)
 *   users.c    USER resolution: passwd and group files of the command root
 *   net.c      eth0 from HELLO's NET, the loopback interface
 *   freeze.c   FREEZE/THAW and a copy restored from a snapshot
 *   util.c     logging, time, small file and mount helpers
 *   proto.c    the frame and TLV codec; fileops.c and tar.c: the CALL operations
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
#ifndef ROOST_AGENT_H
#define ROOST_AGENT_H

/* What HELLO's AGENT_VERSION says; 0.2.0 is the first to announce CAPABILITIES. */
#define AGENT_VERSION "roost-agent 0.2.0"

/* Where the agent builds the command root (see setup_root in boot.c). */
#define ROOST_RUN  "/run/roost"
#define ROOT_LOWER ROOST_RUN "/lower"
#define ROOT_RW    ROOST_RUN "/rw"
#define ROOT_UPPER ROOT_RW "/upper"
#define ROOT_WORK  ROOT_RW "/work"
#define CMD_ROOT   ROOST_RUN "/root"

#endif
