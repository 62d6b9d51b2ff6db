/*
 * The 9P relay (docs/PROTOCOL.md, "The 9P relay port"): a child of PID 1 that
 * multiplexes the byte streams of every relayed 9P mount (one socketpair
 * each, the kernel's trans=fd end on the other side) over the virtio-serial
 * port `roost.p9`, in mux frames. PID 1 starts it at the first CALL `mount`
 * with RELAY and keeps a SOCK_SEQPACKET control socket to it; a mount call's
 * child hands it a channel's socket over that.
 *
 * Also the mux frame parser, pure and tested alone (test/p9relay_test.c).
 */
#ifndef ROOST_P9RELAY_H
#define ROOST_P9RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define P9R_PORT_NAME   "roost.p9"
#define P9R_HDR         8u       /* u32 len, u16 channel, u8 kind, u8 flags (LE) */
#define P9R_MAX_PAYLOAD 1048576u /* MUX_MAX_PAYLOAD */
#define P9R_MAX_CTL     8u       /* payload bytes of a control kind kept (BARRIER's) */
#define P9R_MAX_CHAN    65535u   /* channel ids are 0 .. this */

/* Mux frame kinds (MuxKind in packages/protocol/src/p9-mux.ts). */
enum p9r_kind {
	P9R_DATA = 0,
	P9R_EOF = 1,
	P9R_QUIESCE = 2,
	P9R_QUIESCED = 3,
	P9R_BARRIER = 4,
	P9R_BARRIER_ACK = 5,
	P9R_RESUME = 6,
	P9R_HELLO = 7,
};

/* The control socket: a request is P9R_REQ_LEN bytes, u32 P9R_REQ_ADD then
 * u32 channel (host order), with exactly two fds (SCM_RIGHTS): the channel's
 * socket end and a reply socket, on which the relay writes one int (0 or an
 * errno) and closes it. */
#define P9R_REQ_ADD 1u
#define P9R_REQ_LEN 8u

/* ---- the frame parser ---- */

/* What one p9r_parse step found. */
enum p9r_ev {
	P9R_EV_NONE,  /* all bytes consumed, no event (need more) */
	P9R_EV_DATA,  /* a piece of a DATA frame's payload: channel, data, len */
	P9R_EV_FRAME, /* a complete frame of another kind: channel, kind, ctl[len] */
	P9R_EV_BROKEN /* a length over P9R_MAX_PAYLOAD: everything else is discarded */
};

struct p9r_event {
	enum p9r_ev ev;
	uint16_t channel;
	uint8_t kind;
	const uint8_t *data; /* P9R_EV_DATA: into the caller's bytes */
	uint32_t len;        /* DATA: bytes at data; FRAME: bytes in ctl (<= P9R_MAX_CTL) */
	uint8_t ctl[P9R_MAX_CTL];
	uint32_t bad_len; /* BROKEN: the length read */
};

struct p9r_parser {
	uint8_t hdr[P9R_HDR];
	unsigned hdr_have;
	bool in_payload;
	uint32_t left; /* payload bytes still to come */
	uint16_t channel;
	uint8_t kind;
	uint8_t ctl[P9R_MAX_CTL];
	uint32_t ctl_len;
	bool broken; /* a bad length was seen: discard until reset */
};

void p9r_parser_reset(struct p9r_parser *p);
/* Consumes a prefix of b[0, n) and reports at most one event in *ev.
 * Returns the bytes consumed; call again with the rest. */
size_t p9r_parse(struct p9r_parser *p, const uint8_t *b, size_t n, struct p9r_event *ev);
/* Writes a frame header into h (P9R_HDR bytes). */
void p9r_header(uint8_t *h, uint32_t len, uint16_t channel, uint8_t kind);
/* Parses a channel operand: decimal 0..65535 without leading zeros or
 * anything else. 0, or -1. (Inline: the mount call's child uses it too.) */
static inline int p9r_parse_channel(const char *s, uint16_t *out)
{
	uint32_t v = 0;
	if (s[0] == 0 || (s[0] == '0' && s[1] != 0))
		return -1;
	for (const char *c = s; *c; c++) {
		if (*c < '0' || *c > '9' || c - s >= 5)
			return -1;
		v = v * 10 + (uint32_t)(*c - '0');
	}
	if (v > P9R_MAX_CHAN)
		return -1;
	*out = (uint16_t)v;
	return 0;
}

/* ---- PID 1's side ---- */

/* Starts the relay if it is not running. Returns the control socket (O_CLOEXEC,
 * owned by this module) or -1 with errno. */
int p9relay_ensure(void);
/* The relay's pid, or 0. */
pid_t p9relay_pid(void);
/* reap_children's hook: true if pid was the relay (which is then forgotten:
 * the next RELAY mount starts a new one). */
bool p9relay_reaped(pid_t pid, int status);

/* ---- the relay ---- */

/* Serves port_fd (open, O_NONBLOCK; -1: none yet, a mount then looks for
 * the port `port_name` again and is answered ENODEV without it) and ctl_fd
 * until every holder of ctl_fd's peer has closed it (tests only: PID 1 never
 * does). Returns 0, or -1 without memory. The caller has set up the process
 * (signals, fds). */
int p9relay_serve(int port_fd, int ctl_fd, const char *port_name);

#endif
