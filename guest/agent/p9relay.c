/* The 9P relay: see p9relay.h and docs/PROTOCOL.md, "The 9P relay port".
 *
 * Readings of the spec where it leaves a choice:
 *  - While no host is connected the channel sockets are not read (there is
 *    nobody to send to): a mount made then waits for a host.
 *  - QUIESCE stops reading a channel at a 9P message boundary: a request the
 *    kernel was part-way through writing is read to its end first (the relay
 *    follows the size[4] fields of the guest's stream), so the host never
 *    holds half a request across a snapshot. Every QUIESCE is answered by
 *    one QUIESCED (at RESUME at the latest).
 *  - While a BARRIER waits for the channel buffers to drain, the port is not
 *    read further (what follows the BARRIER stays unread until BARRIER_ACK).
 *  - A HELLO from the host (not in the spec's host kinds) is answered by the
 *    relay's HELLO: a host that connects without the guest seeing a hangup in
 *    between (a restore racing the port's open event) can ask for it.
 *  - A host EOF closes the channel once the bytes buffered for it are written.
 */
#include "p9relay.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define CHAN_MAX       1024u         /* channels open at a time */
#define IN_LIMIT       (2u << 20)    /* a channel's host->guest bytes: port not read above */
#define IN_TOTAL_LIMIT (8u << 20)    /* all channels' together */
#define IN_HARD_LIMIT  (4u << 20)    /* a channel's: never above (the channel is dropped) */
#define OUT_LIMIT      (2u << 20)    /* guest->host bytes queued: channels not read above */
#define READ_CHUNK     (256u * 1024) /* a channel read, one DATA frame */
#define OUT_CAP        (OUT_LIMIT + READ_CHUNK + 65536u)
#define PORT_READ      65536u
#define RECHECK_MS     20u  /* while disconnected: look at the port this often */
#define ORPHAN_MS      5000u /* not quiesced: how long a host may be away before the channels close */
#define PORT_WAIT_MS   5000 /* at start: how long the port may take to appear */
#define MSG_MAX        (P9R_MAX_PAYLOAD + 4096u) /* a 9P message from the kernel (msize) */
#define MSG_MIN        7u                        /* size[4] type[1] tag[2] */

/* ------------------------------------------------------------------ */
/* mux frames */

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void p9r_header(uint8_t *h, uint32_t len, uint16_t channel, uint8_t kind)
{
	h[0] = (uint8_t)len;
	h[1] = (uint8_t)(len >> 8);
	h[2] = (uint8_t)(len >> 16);
	h[3] = (uint8_t)(len >> 24);
	h[4] = (uint8_t)channel;
	h[5] = (uint8_t)(channel >> 8);
	h[6] = kind;
	h[7] = 0;
}

void p9r_parser_reset(struct p9r_parser *p)
{
	memset(p, 0, sizeof *p);
}

size_t p9r_parse(struct p9r_parser *p, const uint8_t *b, size_t n, struct p9r_event *ev)
{
	size_t used = 0;
	ev->ev = P9R_EV_NONE;
	if (p->broken)
		return n;
	while (used < n) {
		if (!p->in_payload) {
			size_t take = P9R_HDR - p->hdr_have;
			if (take > n - used)
				take = n - used;
			memcpy(p->hdr + p->hdr_have, b + used, take);
			p->hdr_have += (unsigned)take;
			used += take;
			if (p->hdr_have < P9R_HDR)
				return used;
			p->hdr_have = 0;
			uint32_t len = get_le32(p->hdr);
			if (len > P9R_MAX_PAYLOAD) {
				p->broken = true;
				ev->ev = P9R_EV_BROKEN;
				ev->bad_len = len;
				return n;
			}
			p->left = len;
			p->channel = (uint16_t)(p->hdr[4] | p->hdr[5] << 8);
			p->kind = p->hdr[6];
			p->ctl_len = 0;
			p->in_payload = true;
		}
		if (p->kind == P9R_DATA && p->left > 0) {
			uint32_t take = p->left;
			if (take > n - used)
				take = (uint32_t)(n - used);
			if (take == 0)
				return used;
			p->left -= take;
			if (p->left == 0)
				p->in_payload = false;
			ev->ev = P9R_EV_DATA;
			ev->channel = p->channel;
			ev->kind = P9R_DATA;
			ev->data = b + used;
			ev->len = take;
			return used + take;
		}
		/* Another kind: keep the first P9R_MAX_CTL payload bytes. */
		while (p->left > 0 && used < n) {
			if (p->ctl_len < P9R_MAX_CTL)
				p->ctl[p->ctl_len++] = b[used];
			p->left--;
			used++;
		}
		if (p->left > 0)
			return used;
		p->in_payload = false;
		if (p->kind == P9R_DATA)
			continue; /* an empty DATA: nothing to deliver */
		ev->ev = P9R_EV_FRAME;
		ev->channel = p->channel;
		ev->kind = p->kind;
		ev->len = p->ctl_len;
		memcpy(ev->ctl, p->ctl, p->ctl_len);
		return used;
	}
	return used;
}

/* ------------------------------------------------------------------ */
/* the relay's state (in the relay process only) */

struct bytes {
	uint8_t *data;
	size_t off, len, cap;
};

struct chan {
	uint16_t id;
	int fd;
	struct bytes in; /* from the host, not yet written to fd */
	bool host_eof;   /* the host ended it: close once `in` is written */
	/* The guest's 9P stream: where its current message ends. */
	uint8_t size_buf[4];
	unsigned size_have; /* bytes of the next size[4] read so far */
	uint32_t msg_left;  /* bytes of the current message still to read */
	bool unframed;      /* a size out of bounds: stop following messages */
	bool hup;           /* poll saw a hangup: polled again only to read or write */
};

static struct {
	int port, ctl;
	const char *port_name; /* to look again in no-port mode (NULL: never) */
	bool connected;
	uint64_t next_check;
	/* Not quiesced and the host went away at this time (0: not so). */
	uint64_t orphaned_at;
	bool quiesced;
	bool quiesced_owed; /* a QUIESCE not yet answered */
	bool barrier_owed;  /* a BARRIER waits for the channel buffers */
	uint8_t barrier[P9R_MAX_CTL];
	uint32_t barrier_len;
	struct p9r_parser parser;
	uint8_t *pin; /* port bytes read but not yet handled: pin[pin_off, pin_len) */
	size_t pin_off, pin_len;
	struct bytes out; /* to the host, capacity OUT_CAP */
	size_t in_total;  /* every channel's in.len */
	struct chan *chans[CHAN_MAX];
	unsigned nchans;
} R;

/* ------------------------------------------------------------------ */
/* to the host */

/* Room for n more bytes at the end of R.out (compacting it); NULL if none. */
static uint8_t *out_room(size_t n)
{
	if (R.out.off + R.out.len + n > R.out.cap && R.out.off > 0) {
		memmove(R.out.data, R.out.data + R.out.off, R.out.len);
		R.out.off = 0;
	}
	if (R.out.off + R.out.len + n > R.out.cap)
		return NULL;
	return R.out.data + R.out.off + R.out.len;
}

static void send_frame(uint16_t channel, uint8_t kind, const void *payload, size_t len)
{
	if (!R.connected)
		return;
	uint8_t *t = out_room(P9R_HDR + len);
	if (!t) {
		logmsg("p9 relay: outbound buffer full, frame kind %u dropped", kind);
		return;
	}
	p9r_header(t, (uint32_t)len, channel, kind);
	if (len)
		memcpy(t + P9R_HDR, payload, len);
	R.out.len += P9R_HDR + len;
}

static void send_hello(void)
{
	uint8_t p[1 + 2 * CHAN_MAX];
	size_t n = 0;
	p[n++] = R.quiesced ? 1 : 0;
	for (unsigned i = 0; i < R.nchans; i++) {
		if (R.chans[i]->host_eof)
			continue;
		p[n++] = (uint8_t)R.chans[i]->id;
		p[n++] = (uint8_t)(R.chans[i]->id >> 8);
	}
	send_frame(0, P9R_HELLO, p, n);
}

static void port_flush(void)
{
	while (R.connected && R.out.len > 0) {
		ssize_t n = write(R.port, R.out.data + R.out.off, R.out.len);
		if (n > 0) {
			R.out.off += (size_t)n;
			R.out.len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		break; /* EAGAIN: wait for POLLOUT; a hangup shows up as POLLHUP */
	}
	if (R.out.len == 0)
		R.out.off = 0;
}

/* ------------------------------------------------------------------ */
/* channels */

static struct chan *chan_find(uint32_t id)
{
	for (unsigned i = 0; i < R.nchans; i++)
		if (R.chans[i]->id == id)
			return R.chans[i];
	return NULL;
}

/* Closes and forgets a channel; tell_host: send EOF (the guest closed it). */
static void chan_close(struct chan *c, bool tell_host)
{
	if (tell_host)
		send_frame(c->id, P9R_EOF, NULL, 0);
	for (unsigned i = 0; i < R.nchans; i++) {
		if (R.chans[i] == c) {
			R.chans[i] = R.chans[--R.nchans];
			break;
		}
	}
	R.in_total -= c->in.len;
	close(c->fd);
	free(c->in.data);
	free(c);
}

static void close_all_channels(void)
{
	while (R.nchans > 0)
		chan_close(R.chans[0], false);
}

/* Writes c's buffered host bytes into its socket until it would block.
 * False if c was closed (and freed). */
static bool chan_write(struct chan *c)
{
	while (c->in.len > 0) {
		ssize_t n = write(c->fd, c->in.data + c->in.off, c->in.len);
		if (n > 0) {
			c->in.off += (size_t)n;
			c->in.len -= (size_t)n;
			R.in_total -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		/* EPIPE, ECONNRESET: the kernel let go of it (unmounted). */
		chan_close(c, !c->host_eof);
		return false;
	}
	if (c->in.len == 0) {
		c->in.off = 0;
		if (c->host_eof) {
			chan_close(c, false);
			return false;
		}
	}
	return true;
}

/* DATA from the host for channel `id`: written at once where the socket takes
 * it, the rest buffered. */
static void chan_data(uint16_t id, const uint8_t *p, size_t n)
{
	struct chan *c = chan_find(id);
	if (!c || c->host_eof)
		return; /* a channel this relay does not have: dropped */
	if (c->in.len == 0) {
		while (n > 0) {
			ssize_t w = write(c->fd, p, n);
			if (w > 0) {
				p += w;
				n -= (size_t)w;
				continue;
			}
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && errno == EAGAIN)
				break;
			chan_close(c, true);
			return;
		}
		if (n == 0)
			return;
	}
	if (c->in.len + n > IN_HARD_LIMIT) {
		logmsg("p9 relay: channel %u: more than %u bytes buffered; closing it", id,
		       IN_HARD_LIMIT);
		chan_close(c, true);
		return;
	}
	if (c->in.off + c->in.len + n > c->in.cap) {
		if (c->in.off > 0) {
			memmove(c->in.data, c->in.data + c->in.off, c->in.len);
			c->in.off = 0;
		}
		if (c->in.len + n > c->in.cap) {
			size_t nc = c->in.cap ? c->in.cap : 65536;
			while (nc < c->in.len + n)
				nc *= 2;
			uint8_t *nd = realloc(c->in.data, nc);
			if (!nd) {
				logmsg("p9 relay: channel %u: out of memory; closing it", id);
				chan_close(c, true);
				return;
			}
			c->in.data = nd;
			c->in.cap = nc;
		}
	}
	memcpy(c->in.data + c->in.off + c->in.len, p, n);
	c->in.len += n;
	R.in_total += n;
}

/* Follows the 9P message boundaries of n bytes the guest sent on c. */
static void chan_track(struct chan *c, const uint8_t *p, size_t n)
{
	while (n > 0 && !c->unframed) {
		if (c->msg_left == 0) {
			size_t take = 4 - c->size_have;
			if (take > n)
				take = n;
			memcpy(c->size_buf + c->size_have, p, take);
			c->size_have += (unsigned)take;
			p += take;
			n -= take;
			if (c->size_have < 4)
				return;
			c->size_have = 0;
			uint32_t size = get_le32(c->size_buf);
			if (size < MSG_MIN || size > MSG_MAX) {
				c->unframed = true;
				return;
			}
			c->msg_left = size - 4;
		} else {
			size_t take = c->msg_left < n ? c->msg_left : n;
			c->msg_left -= (uint32_t)take;
			p += take;
			n -= take;
		}
	}
}

static bool chan_mid_message(const struct chan *c)
{
	return !c->unframed && (c->size_have > 0 || c->msg_left > 0);
}

/* How much c may be read now: 0 while it must not be read. */
static size_t chan_readable(const struct chan *c)
{
	if (!R.connected || c->host_eof || R.out.len >= OUT_LIMIT)
		return 0;
	if (!R.quiesced)
		return READ_CHUNK;
	if (!chan_mid_message(c))
		return 0;
	/* Quiesced: only to the end of the message in progress. */
	size_t want = c->size_have > 0 ? 4 - c->size_have : c->msg_left;
	return want < READ_CHUNK ? want : READ_CHUNK;
}

/* One read of the guest's bytes on c into a DATA frame. */
static void chan_read(struct chan *c)
{
	size_t want = chan_readable(c);
	if (want == 0)
		return;
	uint8_t *t = out_room(P9R_HDR + want);
	if (!t)
		return;
	ssize_t n;
	do
		n = read(c->fd, t + P9R_HDR, want);
	while (n < 0 && errno == EINTR);
	if (n > 0) {
		p9r_header(t, (uint32_t)n, c->id, P9R_DATA);
		R.out.len += P9R_HDR + (size_t)n;
		chan_track(c, t + P9R_HDR, (size_t)n);
		return;
	}
	if (n < 0 && errno == EAGAIN)
		return;
	/* 0: the kernel closed it (unmount); an error: the same for us. */
	chan_close(c, true);
}

/* ------------------------------------------------------------------ */
/* the port */

static bool buffers_empty(void)
{
	return R.in_total == 0;
}

static bool any_mid_message(void)
{
	for (unsigned i = 0; i < R.nchans; i++)
		if (chan_mid_message(R.chans[i]))
			return true;
	return false;
}

/* Answers what is owed once it can be: QUIESCED after the last message in
 * progress, BARRIER_ACK once every channel buffer is written. */
static void settle(void)
{
	if (R.quiesced_owed && !any_mid_message()) {
		R.quiesced_owed = false;
		send_frame(0, P9R_QUIESCED, NULL, 0);
	}
	if (R.barrier_owed && buffers_empty()) {
		R.barrier_owed = false;
		send_frame(0, P9R_BARRIER_ACK, R.barrier, R.barrier_len);
	}
}

static void on_frame(const struct p9r_event *ev)
{
	switch (ev->kind) {
	case P9R_EOF: {
		struct chan *c = chan_find(ev->channel);
		if (c && !c->host_eof) {
			c->host_eof = true;
			if (c->in.len == 0)
				chan_close(c, false);
		}
		return;
	}
	case P9R_QUIESCE:
		R.quiesced = true;
		R.quiesced_owed = true;
		settle();
		return;
	case P9R_RESUME:
		if (R.quiesced_owed) {
			R.quiesced_owed = false;
			send_frame(0, P9R_QUIESCED, NULL, 0);
		}
		R.quiesced = false;
		return;
	case P9R_BARRIER:
		R.barrier_owed = true;
		R.barrier_len = ev->len;
		memcpy(R.barrier, ev->ctl, ev->len);
		settle();
		return;
	case P9R_HELLO:
		send_hello();
		return;
	default:
		return; /* unknown kinds (and guest-to-host ones) are ignored */
	}
}

/* Whether the port may be read now (host->guest buffers below their bounds,
 * no BARRIER waiting). */
static bool port_may_read(void)
{
	if (!R.connected || R.barrier_owed || R.in_total >= IN_TOTAL_LIMIT)
		return false;
	for (unsigned i = 0; i < R.nchans; i++)
		if (R.chans[i]->in.len >= IN_LIMIT)
			return false;
	return true;
}

/* Handles the port bytes read and not yet handled, while allowed. */
static void port_feed(void)
{
	while (R.pin_len > 0 && port_may_read()) {
		struct p9r_event ev;
		size_t used = p9r_parse(&R.parser, R.pin + R.pin_off, R.pin_len, &ev);
		R.pin_off += used;
		R.pin_len -= used;
		if (ev.ev == P9R_EV_DATA)
			chan_data(ev.channel, ev.data, ev.len);
		else if (ev.ev == P9R_EV_FRAME)
			on_frame(&ev);
		else if (ev.ev == P9R_EV_BROKEN)
			logmsg("p9 relay: frame length %u from the host is over %u; "
			       "ignoring the host until it reconnects",
			       ev.bad_len, P9R_MAX_PAYLOAD);
	}
	if (R.pin_len == 0)
		R.pin_off = 0;
}

/* Forgets the connection's stream state: a new host starts at a frame boundary. */
static void stream_reset(void)
{
	p9r_parser_reset(&R.parser);
	R.pin_off = R.pin_len = 0;
	R.out.off = R.out.len = 0;
	R.barrier_owed = false;
	R.quiesced_owed = false;
}

static void on_connect(void)
{
	R.connected = true;
	/* Back within ORPHAN_MS, not quiesced: the same host (a restored VM
	 * sees its port blink closed and open again, possibly after the new
	 * host's RESUME): the streams go on where they were, nothing dropped. */
	if (R.orphaned_at == 0)
		stream_reset();
	R.orphaned_at = 0;
	send_hello();
}

static void on_disconnect(void)
{
	R.connected = false;
	R.next_check = now_ms() + RECHECK_MS;
	/* Quiesced: a snapshot is being taken or restored, at a frame boundary
	 * both ways; its host comes back to these channels. Not quiesced: the
	 * host may be back at once (above); if it stays away, its sessions are
	 * gone and the channels close (orphan_check), so the guest's
	 * requests fail rather than hang. */
	if (R.quiesced)
		stream_reset();
	else if (R.orphaned_at == 0)
		R.orphaned_at = now_ms();
}

/* The host has been away too long while not quiesced: close everything. */
static void orphan_check(uint64_t now)
{
	if (R.connected || R.orphaned_at == 0 || now - R.orphaned_at < ORPHAN_MS)
		return;
	logmsg("p9 relay: no host for %u ms; closing the volumes' channels", ORPHAN_MS);
	R.orphaned_at = 0;
	stream_reset();
	close_all_channels();
}

/* Reads the port until it would block or must wait; on a hangup, what is
 * still there is read and handled first. */
static void port_read(bool hup)
{
	for (;;) {
		if (R.pin_len > 0) {
			port_feed();
			if (R.pin_len > 0 || !R.connected)
				break; /* held back (buffers full, a BARRIER) */
		}
		if (!port_may_read())
			break;
		ssize_t n = read(R.port, R.pin, PORT_READ);
		if (n > 0) {
			R.pin_off = 0;
			R.pin_len = (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		/* 0: no host; an error (ENODEV: unplugged). */
		if (n < 0)
			logmsg("p9 relay: read port: %s", strerror(errno));
		on_disconnect();
		return;
	}
	/* A hangup with the port readable again (EAGAIN): a new host may be
	 * there already; port_check gives it its HELLO. */
	if (hup && R.connected)
		on_disconnect();
}

/* While disconnected the port is out of the poll set (it reports POLLHUP
 * continuously); this looks at it. */
static void port_check(void)
{
	struct pollfd pfd = {.fd = R.port, .events = POLLIN};
	if (poll(&pfd, 1, 0) < 0 || (pfd.revents & (POLLHUP | POLLERR | POLLNVAL))) {
		R.next_check = now_ms() + RECHECK_MS;
		return;
	}
	on_connect();
}

/* Opens the port `name` if it exists now: the fd, or -1. */
static int port_open(const char *name)
{
	char dev[256];
	if (!name || !find_virtio_port(name, dev, sizeof dev))
		return -1;
	int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		logmsg("p9 relay: open %s: %s", dev, strerror(errno));
	return fd;
}

/* ------------------------------------------------------------------ */
/* the control socket */

static void answer(int reply_fd, int err)
{
	int v = err;
	if (send(reply_fd, &v, sizeof v, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		logmsg("p9 relay: answer a mount: %s", strerror(errno));
	close(reply_fd);
}

/* An ADD request: 0 or an errno for the answer. Takes fd on success. */
static int add_channel(uint32_t id, int fd)
{
	if (id > P9R_MAX_CHAN)
		return EINVAL;
	if (R.port < 0) {
		R.port = port_open(R.port_name);
		if (R.port < 0)
			return ENODEV;
		R.next_check = now_ms();
	}
	if (chan_find(id))
		return EEXIST;
	if (R.nchans >= CHAN_MAX)
		return EMFILE;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
		return EINVAL;
	struct chan *c = calloc(1, sizeof *c);
	if (!c)
		return ENOMEM;
	c->id = (uint16_t)id;
	c->fd = fd;
	set_nonblock(fd);
	R.chans[R.nchans++] = c;
	return 0;
}

/* Reads the control socket until it would block; false at its end. */
static bool ctl_read(void)
{
	for (;;) {
		uint8_t req[P9R_REQ_LEN + 1];
		union {
			struct cmsghdr h;
			uint8_t b[CMSG_SPACE(sizeof(int) * 8)];
		} cbuf;
		struct iovec iov = {.iov_base = req, .iov_len = sizeof req};
		struct msghdr m = {.msg_iov = &iov,
				   .msg_iovlen = 1,
				   .msg_control = cbuf.b,
				   .msg_controllen = sizeof cbuf.b};
		ssize_t n = recvmsg(R.ctl, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return true;
		if (n == 0 && m.msg_controllen == 0)
			return false; /* every sender is gone */
		if (n < 0) {
			logmsg("p9 relay: control socket: %s", strerror(errno));
			return false;
		}
		/* Every fd that came, whatever the request was. */
		int fds[16], nfds = 0;
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
			if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS ||
			    h->cmsg_len < CMSG_LEN(0))
				continue;
			size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
				if (nfds < 16)
					fds[nfds++] = fd;
				else
					close(fd);
			}
		}
		bool ok = (size_t)n == P9R_REQ_LEN && nfds == 2 && !(m.msg_flags & MSG_CTRUNC) &&
			  !(m.msg_flags & MSG_TRUNC);
		uint32_t op = 0, id = 0;
		if (ok) {
			memcpy(&op, req, 4);
			memcpy(&id, req + 4, 4);
			ok = op == P9R_REQ_ADD;
		}
		if (!ok) {
			logmsg("p9 relay: malformed control request (%zd bytes, %d fds)", n, nfds);
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			continue;
		}
		int err = add_channel(id, fds[0]);
		if (err)
			close(fds[0]);
		answer(fds[1], err);
	}
}

/* ------------------------------------------------------------------ */
/* the loop */

int p9relay_serve(int port_fd, int ctl_fd, const char *port_name)
{
	memset(&R, 0, sizeof R);
	R.port = port_fd;
	R.ctl = ctl_fd;
	R.port_name = port_name;
	R.out.cap = OUT_CAP;
	R.out.data = malloc(OUT_CAP);
	R.pin = malloc(PORT_READ);
	if (!R.out.data || !R.pin) {
		logmsg("p9 relay: out of memory");
		return -1;
	}
	set_nonblock(ctl_fd);
	if (R.port >= 0)
		port_check();

	static struct pollfd pfd[2 + CHAN_MAX];
	static struct chan *pchan[2 + CHAN_MAX];
	for (;;) {
		uint64_t now = now_ms();
		if (R.port >= 0 && !R.connected && now >= R.next_check)
			port_check();
		orphan_check(now);
		if (R.connected && R.pin_len > 0)
			port_feed();
		for (unsigned i = R.nchans; i-- > 0;)
			if (i < R.nchans && R.chans[i]->in.len > 0)
				chan_write(R.chans[i]);
		settle();
		port_flush();

		int n = 0, port_idx = -1;
		pfd[n] = (struct pollfd){.fd = R.ctl, .events = POLLIN};
		pchan[n++] = NULL;
		if (R.connected) {
			short ev = 0;
			if (port_may_read() && R.pin_len == 0)
				ev |= POLLIN;
			if (R.out.len)
				ev |= POLLOUT;
			pfd[n] = (struct pollfd){.fd = R.port, .events = ev};
			pchan[n] = NULL;
			port_idx = n++;
		}
		for (unsigned i = 0; i < R.nchans; i++) {
			struct chan *c = R.chans[i];
			short ev = 0;
			if (chan_readable(c))
				ev |= POLLIN;
			if (c->in.len)
				ev |= POLLOUT;
			/* Polled while idle too, to see a hangup (unmount) at once;
			 * after one, only when it can be read or written (a hung-up
			 * socket is always "ready"). */
			if (!ev && c->hup)
				continue;
			pfd[n] = (struct pollfd){.fd = c->fd, .events = ev};
			pchan[n++] = c;
		}
		int timeout = -1;
		if (R.port >= 0 && !R.connected) {
			uint64_t d = R.next_check > now ? R.next_check - now : 0;
			timeout = (int)d;
		}
		int r = poll(pfd, (nfds_t)n, timeout);
		if (r < 0) {
			if (errno != EINTR) {
				logmsg("p9 relay: poll: %s", strerror(errno));
				sleep_ms(10);
			}
			continue;
		}
		/* Channels first: the port and the control socket may change the
		 * table. Handling a channel frees at most that channel. */
		for (int i = 0; i < n; i++) {
			struct chan *c = pchan[i];
			if (!c || pfd[i].revents == 0)
				continue;
			short rev = pfd[i].revents;
			if (rev & (POLLHUP | POLLERR))
				c->hup = true;
			if ((rev & POLLOUT) && !chan_write(c))
				continue;
			if ((rev & (POLLIN | POLLHUP | POLLERR)) && chan_readable(c))
				chan_read(c);
		}
		if (port_idx >= 0 && pfd[port_idx].revents) {
			short rev = pfd[port_idx].revents;
			if (rev & POLLOUT)
				port_flush();
			if (rev & (POLLIN | POLLHUP | POLLERR))
				port_read((rev & (POLLHUP | POLLERR)) != 0);
		}
		if (pfd[0].revents && !ctl_read())
			break;
	}
	close_all_channels();
	free(R.out.data);
	free(R.pin);
	return 0;
}

/* ------------------------------------------------------------------ */
/* PID 1's side */

static pid_t relay_pid;
static int relay_ctl = -1;

/* The relay process, forked from PID 1 (it never execs): its own session, so
 * nothing that ends a host session's processes reaches it; out of the OOM
 * killer's reach, as PID 1 is (the kernel never picks init); none of PID 1's
 * fds but ctl and stdio. */
static _Noreturn void relay_main(int ctl)
{
	setsid();
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL); /* PID 1 blocks what its signalfd reads */
	signal(SIGPIPE, SIG_IGN);
	if (ctl > 3)
		syscall(SYS_close_range, 3u, (unsigned)ctl - 1, 0u);
	syscall(SYS_close_range, (unsigned)ctl + 1, ~0u, 0u);
	console_fd = -1; /* closed above; logmsg writes to fd 2, the console */
	prctl(PR_SET_NAME, "roost-p9relay", 0, 0, 0);
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "-1000", 5) != 5)
		logmsg("p9 relay: oom_score_adj: %s", strerror(errno));
	if (fd >= 0)
		close(fd);

	int port = -1;
	for (uint64_t start = now_ms(); port < 0 && now_ms() - start < PORT_WAIT_MS;) {
		port = port_open(P9R_PORT_NAME);
		if (port < 0)
			sleep_ms(10);
	}
	if (port < 0)
		logmsg("p9 relay: no port %s: relayed mounts fail with ENODEV", P9R_PORT_NAME);
	_exit(p9relay_serve(port, ctl, P9R_PORT_NAME) < 0 ? 1 : 0);
}

int p9relay_ensure(void)
{
	int st;
	if (relay_pid > 0 && waitpid(relay_pid, &st, WNOHANG) == relay_pid)
		p9relay_reaped(relay_pid, st);
	if (relay_pid > 0)
		return relay_ctl;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		errno = e;
		return -1;
	}
	if (pid == 0) {
		close(sv[0]);
		relay_main(sv[1]);
	}
	close(sv[1]);
	relay_pid = pid;
	relay_ctl = sv[0];
	logmsg("p9 relay started (pid %d)", (int)pid);
	return relay_ctl;
}

pid_t p9relay_pid(void)
{
	return relay_pid;
}

bool p9relay_reaped(pid_t pid, int status)
{
	if (relay_pid <= 0 || pid != relay_pid)
		return false;
	if (WIFSIGNALED(status))
		logmsg("p9 relay (pid %d) killed by signal %d; its mounts are gone", (int)pid,
		       WTERMSIG(status));
	else
		logmsg("p9 relay (pid %d) exited with status %d; its mounts are gone", (int)pid,
		       WEXITSTATUS(status));
	relay_pid = 0;
	close_fd(&relay_ctl);
	return true;
}
