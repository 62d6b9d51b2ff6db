/* The port to the host: see port.h. */
#include "port.h"

#include "boot.h"
#include "control.h"
#include "exec.h"
#include "freeze.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define DISCONNECTED_RECHECK_MS 20

struct out_queue out;
int port_fd = -1;
bool port_connected;
unsigned hello_count;
uint64_t next_port_check;
uint8_t scratch[ROOST_FRAME_HDR + ROOST_MAX_PAYLOAD];

static struct roost_parser parser;

/* ------------------------------------------------------------------ */
/* outbound buffer */

int out_reserve(size_t n)
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

void port_flush(void)
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

void send_raw(uint32_t stream, uint8_t type, const void *payload, size_t len)
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

void send_buf(struct roost_buf *b, size_t start)
{
	if (roost_frame_end(b, start) < 0) {
		logmsg("internal: frame too large");
		return;
	}
	out_append(b->data + start, b->len - start);
}

__attribute__((format(printf, 3, 0))) void send_error_v(uint32_t stream, uint32_t code,
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

__attribute__((format(printf, 3, 4))) void send_error(uint32_t stream, uint32_t code,
						      const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	send_error_v(stream, code, fmt, ap);
	va_end(ap);
}

void send_eof(uint32_t stream, uint8_t fd)
{
	send_raw(stream, ROOST_T_EOF, &fd, 1);
}

void send_credit(uint32_t stream, uint8_t fd, uint32_t n)
{
	uint8_t p[5];
	p[0] = fd;
	roost_put_u32(p + 1, n);
	send_raw(stream, ROOST_T_CREDIT, p, sizeof p);
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
	bool off = !restored && session.established &&
		   (session.flags & ROOST_FLAG_POWEROFF_ON_DISCONNECT);
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
void port_read(bool hup)
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
void port_check(void)
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

static void open_port(const char *name)
{
	char dev[PATH_MAX];
	uint64_t start = now_ms();
	bool complained = false;
	int last_err = 0;
	for (;;) {
		if (find_virtio_port(name, dev, sizeof dev)) {
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
				logmsg("cannot open port %s (%s): %s; still trying", name, dev,
				       strerror(last_err));
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

void port_start(const char *name)
{
	open_port(name);
	roost_parser_reset(&parser);
	port_check();
}
