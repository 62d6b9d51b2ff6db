/*
 * Tests of the 9P relay (p9relay.c): the mux frame parser, the channel operand,
 * and a forked relay driven end to end over socketpairs (a unix socket stands
 * in for the virtio-serial port: it has no reconnect, so the host disconnect
 * is the last step). Built with ASan/UBSan by `make test`.
 */
#include "p9relay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* ------------------------------------------------------------------ */
/* the parser */

static size_t frame(uint8_t *out, uint16_t ch, uint8_t kind, const void *p, uint32_t len)
{
	p9r_header(out, len, ch, kind);
	if (len)
		memcpy(out + P9R_HDR, p, len);
	return P9R_HDR + len;
}

/* Feeds b in pieces of `step` bytes; collects DATA bytes of channel 3 into
 * data and counts frames. */
struct seen {
	uint8_t data[4096];
	size_t data_len;
	int frames, broken;
	uint8_t last_kind;
	uint16_t last_channel;
	uint8_t last_ctl[P9R_MAX_CTL];
	uint32_t last_len;
};

static void feed(struct p9r_parser *p, const uint8_t *b, size_t n, size_t step, struct seen *s)
{
	for (size_t off = 0; off < n;) {
		size_t len = n - off < step ? n - off : step;
		const uint8_t *q = b + off;
		off += len;
		while (len > 0) {
			struct p9r_event ev;
			size_t used = p9r_parse(p, q, len, &ev);
			CHECK(used <= len);
			q += used;
			len -= used;
			if (ev.ev == P9R_EV_DATA) {
				CHECK(ev.len > 0 && ev.data >= b && ev.data + ev.len <= b + n);
				if (s->data_len + ev.len <= sizeof s->data) {
					memcpy(s->data + s->data_len, ev.data, ev.len);
					s->data_len += ev.len;
				}
				s->last_channel = ev.channel;
			} else if (ev.ev == P9R_EV_FRAME) {
				s->frames++;
				s->last_kind = ev.kind;
				s->last_channel = ev.channel;
				s->last_len = ev.len;
				memcpy(s->last_ctl, ev.ctl, ev.len);
			} else if (ev.ev == P9R_EV_BROKEN) {
				s->broken++;
			} else {
				CHECK(used == len + used - len); /* NONE: all consumed */
				break;
			}
		}
	}
}

static void test_parser(void)
{
	static uint8_t b[8192];
	size_t n = 0;
	n += frame(b + n, 3, P9R_DATA, "hello ", 6);
	n += frame(b + n, 0, P9R_QUIESCE, NULL, 0);
	n += frame(b + n, 3, P9R_DATA, NULL, 0); /* empty DATA: nothing */
	n += frame(b + n, 3, P9R_DATA, "world", 5);
	n += frame(b + n, 0, P9R_BARRIER, "0123456789", 10); /* kept: 8 bytes */
	n += frame(b + n, 9, 200, "x", 1);                   /* unknown kind */
	for (size_t step = 1; step <= n; step++) {
		struct p9r_parser p;
		struct seen s;
		memset(&s, 0, sizeof s);
		p9r_parser_reset(&p);
		feed(&p, b, n, step, &s);
		CHECK(s.data_len == 11 && memcmp(s.data, "hello world", 11) == 0);
		CHECK(s.frames == 3 && s.broken == 0);
		CHECK(s.last_kind == 200 && s.last_channel == 9 && s.last_len == 1);
	}
	/* The BARRIER's payload, cut to P9R_MAX_CTL. */
	{
		struct p9r_parser p;
		struct seen s;
		memset(&s, 0, sizeof s);
		p9r_parser_reset(&p);
		size_t m = frame(b, 0, P9R_BARRIER, "0123456789", 10);
		feed(&p, b, m, m, &s);
		CHECK(s.frames == 1 && s.last_kind == P9R_BARRIER && s.last_len == 8 &&
		      memcmp(s.last_ctl, "01234567", 8) == 0);
	}
	/* The largest frame passes; one byte more is a broken peer, after
	 * which nothing is delivered until a reset. */
	{
		struct p9r_parser p;
		p9r_parser_reset(&p);
		uint8_t h[P9R_HDR];
		p9r_header(h, P9R_MAX_PAYLOAD, 3, P9R_DATA);
		struct p9r_event ev;
		CHECK(p9r_parse(&p, h, sizeof h, &ev) == sizeof h && ev.ev == P9R_EV_NONE);
		uint8_t *big = calloc(1, P9R_MAX_PAYLOAD);
		size_t got = 0, off = 0;
		while (off < P9R_MAX_PAYLOAD) {
			off += p9r_parse(&p, big + off, P9R_MAX_PAYLOAD - off, &ev);
			if (ev.ev == P9R_EV_DATA)
				got += ev.len;
		}
		CHECK(got == P9R_MAX_PAYLOAD);
		free(big);
		p9r_header(h, P9R_MAX_PAYLOAD + 1, 3, P9R_DATA);
		CHECK(p9r_parse(&p, h, sizeof h, &ev) == sizeof h && ev.ev == P9R_EV_BROKEN &&
		      ev.bad_len == P9R_MAX_PAYLOAD + 1);
		size_t m = frame(b, 3, P9R_DATA, "zz", 2);
		CHECK(p9r_parse(&p, b, m, &ev) == m && ev.ev == P9R_EV_NONE);
		p9r_parser_reset(&p);
		CHECK(p9r_parse(&p, b, m, &ev) == m && ev.ev == P9R_EV_DATA && ev.len == 2);
	}
}

static void test_channel_operand(void)
{
	uint16_t v = 1;
	CHECK(p9r_parse_channel("0", &v) == 0 && v == 0);
	CHECK(p9r_parse_channel("7", &v) == 0 && v == 7);
	CHECK(p9r_parse_channel("65535", &v) == 0 && v == 65535);
	const char *bad[] = {"",   "65536", "99999", "123456", "-1",   "+1",        " 1",
			     "1 ", "01",    "00",    "1a",     "0x10", "4294967297"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK(p9r_parse_channel(bad[i], &v) < 0);
}

/* ------------------------------------------------------------------ */
/* a relay on socketpairs */

static int port = -1, ctl = -1;
static struct p9r_parser host;

/* The next frame the relay sends (DATA pieces joined), waiting up to ms;
 * false on timeout or end. */
struct hframe {
	uint16_t channel;
	uint8_t kind;
	uint32_t len;
	uint8_t p[P9R_MAX_PAYLOAD];
};
static struct hframe hf;
static uint8_t hbuf[1 << 20];
static size_t hoff, hlen;

static bool next_frame(int ms)
{
	/* Frames are read whole: header, then payload. */
	uint8_t hdr[P9R_HDR];
	size_t have = 0, need = P9R_HDR;
	uint8_t *dst = hdr;
	bool in_payload = false;
	for (;;) {
		while (have < need && hlen > 0) {
			size_t k = need - have < hlen ? need - have : hlen;
			memcpy(dst + have, hbuf + hoff, k);
			hoff += k;
			hlen -= k;
			have += k;
		}
		if (have == need) {
			if (!in_payload) {
				hf.len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 |
					 (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
				hf.channel = (uint16_t)(hdr[4] | hdr[5] << 8);
				hf.kind = hdr[6];
				if (hf.len > P9R_MAX_PAYLOAD)
					return false;
				in_payload = true;
				dst = hf.p;
				have = 0;
				need = hf.len;
				continue;
			}
			return true;
		}
		struct pollfd pfd = {.fd = port, .events = POLLIN};
		if (poll(&pfd, 1, ms) <= 0)
			return false;
		ssize_t n = read(port, hbuf, sizeof hbuf);
		if (n <= 0)
			return false;
		hoff = 0;
		hlen = (size_t)n;
	}
}

static void host_send(uint16_t ch, uint8_t kind, const void *p, uint32_t len)
{
	static uint8_t b[P9R_HDR + 64];
	size_t n = frame(b, ch, kind, p, len);
	CHECK(write(port, b, n) == (ssize_t)n);
}

/* Sends an ADD for channel ch with fd (and a reply socket); returns the
 * answer, or -1 if none came (the reply socket ended). nfds: how many fds to
 * pass (2 is right; others are malformed). */
static int add(uint32_t ch, int fd, int nfds)
{
	int rp[2];
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, rp) == 0);
	uint32_t req[2] = {P9R_REQ_ADD, ch};
	int fds[3] = {fd, rp[1], rp[1]};
	union {
		struct cmsghdr h;
		uint8_t b[CMSG_SPACE(sizeof fds)];
	} cbuf;
	memset(&cbuf, 0, sizeof cbuf);
	struct iovec iov = {.iov_base = req, .iov_len = sizeof req};
	struct msghdr m = {.msg_iov = &iov,
			   .msg_iovlen = 1,
			   .msg_control = cbuf.b,
			   .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds)};
	struct cmsghdr *h = CMSG_FIRSTHDR(&m);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
	memcpy(CMSG_DATA(h), fds, sizeof(int) * (size_t)nfds);
	CHECK(sendmsg(ctl, &m, 0) == (ssize_t)sizeof req);
	close(rp[1]);
	int v = -1;
	struct pollfd pfd = {.fd = rp[0], .events = POLLIN};
	if (poll(&pfd, 1, 5000) != 1 || recv(rp[0], &v, sizeof v, 0) != (ssize_t)sizeof v)
		v = -1;
	close(rp[0]);
	return v;
}

/* A 9P-shaped message: size[4] then filler. */
static size_t msg9(uint8_t *b, uint32_t size, uint8_t fill)
{
	b[0] = (uint8_t)size;
	b[1] = (uint8_t)(size >> 8);
	b[2] = (uint8_t)(size >> 16);
	b[3] = (uint8_t)(size >> 24);
	memset(b + 4, fill, size - 4);
	return size;
}

static bool quiet(int fd, int ms)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	return poll(&pfd, 1, ms) == 0;
}

static void test_relay(void)
{
	int ps[2], cs[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ps) == 0);
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, cs) == 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(ps[0]);
		close(cs[0]);
		int fl = fcntl(ps[1], F_GETFL);
		fcntl(ps[1], F_SETFL, fl | O_NONBLOCK);
		_exit(p9relay_serve(ps[1], cs[1], NULL) == 0 ? 0 : 3);
	}
	close(ps[1]);
	close(cs[1]);
	port = ps[0];
	ctl = cs[0];
	p9r_parser_reset(&host);

	/* A host is there at the start: HELLO, not quiesced, no channels. */
	CHECK(next_frame(5000) && hf.kind == P9R_HELLO && hf.len == 1 && hf.p[0] == 0);

	int a[2], b2[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a) == 0);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b2) == 0);
	CHECK(add(7, a[1], 2) == 0);
	CHECK(add(7, b2[1], 2) == EEXIST);
	CHECK(add(70000, b2[1], 2) == EINVAL);
	CHECK(add(8, b2[1], 1) == -1); /* one fd: malformed, dropped unanswered */
	CHECK(add(8, b2[1], 3) == -1); /* three: the same */
	close(a[1]);

	/* Both directions. */
	uint8_t m[300];
	size_t ml = msg9(m, 20, 'q');
	CHECK(write(a[0], m, ml) == (ssize_t)ml);
	CHECK(next_frame(5000) && hf.kind == P9R_DATA && hf.channel == 7 && hf.len == 20 &&
	      memcmp(hf.p, m, 20) == 0);
	host_send(7, P9R_DATA, "reply", 5);
	char rb[64];
	CHECK(read(a[0], rb, sizeof rb) == 5 && memcmp(rb, "reply", 5) == 0);
	host_send(99, P9R_DATA, "nobody", 6); /* a channel it does not have: dropped */

	/* QUIESCE with a request half written: it is read to its end first. */
	ml = msg9(m, 100, 'r');
	CHECK(write(a[0], m, 30) == 30);
	CHECK(next_frame(5000) && hf.kind == P9R_DATA && hf.len == 30);
	host_send(0, P9R_QUIESCE, NULL, 0);
	CHECK(quiet(port, 200)); /* no QUIESCED while the request is unfinished */
	CHECK(write(a[0], m + 30, 70) == 70);
	CHECK(next_frame(5000) && hf.kind == P9R_DATA && hf.len == 70 && hf.p[69] == 'r');
	CHECK(next_frame(5000) && hf.kind == P9R_QUIESCED);
	/* Quiesced: requests wait in the socket; replies still go in. */
	ml = msg9(m, 40, 's');
	CHECK(write(a[0], m, ml) == (ssize_t)ml);
	CHECK(quiet(port, 200));
	host_send(7, P9R_DATA, "late", 4);
	host_send(0, P9R_BARRIER, "b1", 2);
	CHECK(next_frame(5000) && hf.kind == P9R_BARRIER_ACK && hf.len == 2 &&
	      memcmp(hf.p, "b1", 2) == 0);
	CHECK(read(a[0], rb, sizeof rb) == 4 && memcmp(rb, "late", 4) == 0);
	/* A host HELLO is answered with the relay's state. */
	host_send(0, P9R_HELLO, NULL, 0);
	CHECK(next_frame(5000) && hf.kind == P9R_HELLO && hf.len == 3 && hf.p[0] == 1 &&
	      hf.p[1] == 7 && hf.p[2] == 0);
	host_send(0, P9R_RESUME, NULL, 0);
	CHECK(next_frame(5000) && hf.kind == P9R_DATA && hf.channel == 7 && hf.len == 40 &&
	      hf.p[39] == 's');

	/* Bulk both ways, with the guest side slow: nothing lost or reordered,
	 * guest->host DATA frames at most 256 KiB. */
	{
		const size_t total = 6u << 20;
		uint8_t *src = malloc(total), *dst = malloc(total);
		for (size_t i = 0; i < total; i++)
			src[i] = (uint8_t)(i * 7 + (i >> 12));
		int fl = fcntl(port, F_GETFL);
		fcntl(port, F_SETFL, fl | O_NONBLOCK);
		fl = fcntl(a[0], F_GETFL);
		fcntl(a[0], F_SETFL, fl | O_NONBLOCK);
		static uint8_t fb[P9R_HDR + 65536];
		size_t fb_off = 0, fb_len = 0, sent = 0, got = 0;
		/* The guest does not read: the relay stops reading the port
		 * once its buffer for the channel is over its bound. */
		for (;;) {
			if (fb_len == 0) {
				uint32_t k =
					total - sent < 65536 ? (uint32_t)(total - sent) : 65536;
				fb_len = frame(fb, 7, P9R_DATA, src + sent, k);
				fb_off = 0;
				sent += k;
			}
			struct pollfd pfd = {.fd = port, .events = POLLOUT};
			if (poll(&pfd, 1, 300) != 1)
				break;
			ssize_t w = write(port, fb + fb_off, fb_len);
			if (w > 0) {
				fb_off += (size_t)w;
				fb_len -= (size_t)w;
			}
		}
		CHECK(sent > (2u << 20) && sent < (4u << 20));
		while (got < total) {
			if (fb_len == 0 && sent < total) {
				uint32_t k =
					total - sent < 65536 ? (uint32_t)(total - sent) : 65536;
				fb_len = frame(fb, 7, P9R_DATA, src + sent, k);
				fb_off = 0;
				sent += k;
			}
			if (fb_len > 0) {
				ssize_t w = write(port, fb + fb_off, fb_len);
				if (w > 0) {
					fb_off += (size_t)w;
					fb_len -= (size_t)w;
				}
			}
			ssize_t r = read(a[0], dst + got, total - got);
			if (r > 0)
				got += (size_t)r;
			else
				usleep(100);
		}
		CHECK(memcmp(src, dst, total) == 0);
		fcntl(a[0], F_SETFL, fl);
		/* Guest to host: unframed bytes (the relay stops following 9P
		 * sizes and just relays). */
		size_t wsent = 0, wgot = 0;
		bool frames_ok = true;
		while (wgot < total) {
			if (wsent < total) {
				fcntl(a[0], F_SETFL, fl | O_NONBLOCK);
				ssize_t w = write(a[0], src + wsent, total - wsent);
				if (w > 0)
					wsent += (size_t)w;
			}
			if (!next_frame(5000))
				break;
			if (hf.kind != P9R_DATA || hf.channel != 7 || hf.len > 256 * 1024 ||
			    wgot + hf.len > total) {
				frames_ok = false;
				break;
			}
			memcpy(dst + wgot, hf.p, hf.len);
			wgot += hf.len;
		}
		CHECK(frames_ok && wgot == total && memcmp(src, dst, total) == 0);
		fcntl(a[0], F_SETFL, fl);
		free(src);
		free(dst);
	}

	/* The guest closes a channel (unmount): EOF to the host. */
	int c[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c) == 0);
	CHECK(add(9, c[1], 2) == 0);
	close(c[1]);
	close(c[0]);
	CHECK(next_frame(5000) && hf.kind == P9R_EOF && hf.channel == 9);
	/* The host ends one: the relay closes its end. */
	CHECK(add(10, b2[1], 2) == 0);
	close(b2[1]);
	host_send(10, P9R_EOF, NULL, 0);
	CHECK(!quiet(b2[0], 5000) && read(b2[0], rb, sizeof rb) == 0);
	close(b2[0]);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c) == 0);
	CHECK(add(10, c[1], 2) == 0); /* the id is free again */
	close(c[1]);

	/* A length over the bound: the host is ignored from then on. */
	uint8_t h[P9R_HDR];
	p9r_header(h, P9R_MAX_PAYLOAD + 1, 7, P9R_DATA);
	CHECK(write(port, h, sizeof h) == (ssize_t)sizeof h);
	host_send(7, P9R_DATA, "lost", 4);
	host_send(0, P9R_HELLO, NULL, 0);
	CHECK(quiet(port, 200) && quiet(a[0], 10));

	/* The host goes, not quiesced: after the grace for a host that blinks
	 * (ORPHAN_MS, 5 s), every channel is closed; not before. */
	close(port);
	CHECK(quiet(a[0], 3000));
	CHECK(!quiet(a[0], 8000) && read(a[0], rb, sizeof rb) == 0);
	close(a[0]);
	CHECK(!quiet(c[0], 1000) && read(c[0], rb, sizeof rb) == 0);
	close(c[0]);

	/* Its control socket's end: the relay returns. */
	close(ctl);
	int st = -1;
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	test_parser();
	test_channel_operand();
	test_relay();
	printf("p9relay: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
