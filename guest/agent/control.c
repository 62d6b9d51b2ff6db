/* Stream 0 and frame dispatch: see control.h. */
#include "control.h"

#include "agent.h"
#include "boot.h"
#include "exec.h"
#include "freeze.h"
#include "net.h"
#include "port.h"
#include "spawn.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* <linux/random.h>: RNDADDENTROPY = _IOW('R', 0x03, int[2]), argument
 * struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }. */
#define ROOST_RNDADDENTROPY _IOW('R', 0x03, int[2])
struct roost_rand_pool_info {
	int entropy_count; /* bits */
	int buf_size;      /* bytes */
	uint8_t buf[ROOST_MAX_ENTROPY];
};
/* <linux/random.h>: RNDRESEEDCRNG = _IO('R', 0x07): re-key the CRNG from the
 * input pool now (needs CAP_SYS_ADMIN; ENODATA before the CRNG is ready). */
#define ROOST_RNDRESEEDCRNG _IO('R', 0x07)

struct session session;

/* ------------------------------------------------------------------ */
/* other host frames */

static void set_clock(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
			      .tv_nsec = (long)(ns % 1000000000u)};
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
		case ROOST_TAG_VERSION:
			bad = roost_tlv_u32(&t, &version);
			break;
		case ROOST_TAG_FLAGS:
			bad = roost_tlv_u32(&t, &flags);
			break;
		case ROOST_TAG_TIME_NS:
			bad = roost_tlv_u64(&t, &time_ns);
			break;
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
		default:
			break;
		}
		if (bad) {
			send_error(0, ROOST_E_PROTOCOL, "bad HELLO field 0x%04x (length %u)", t.tag,
				   t.len);
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
	/* Additive: a host that does not know the tag skips it. */
	roost_tlv_put_u32(&b, ROOST_TAG_CAPABILITIES, AGENT_CAPABILITIES);
	if (nonce)
		roost_tlv_put(&b, ROOST_TAG_NONCE, nonce, nonce_len);
	send_buf(&b, s);
	if (!session.established)
		send_error(0, ROOST_E_VERSION, "unsupported protocol version %u (agent speaks %u)",
			   version, ROOST_VERSION);
}

void handle_frame(const struct roost_frame *f)
{
	switch (f->type) {
	case ROOST_T_HELLO:
		handle_hello(f->stream, f->payload, f->len);
		return;
	case ROOST_T_PING:
		if (f->stream != 0 || f->len > ROOST_MAX_PING) {
			send_error(
				0, ROOST_E_PROTOCOL,
				"PING must be on stream 0 with <= %u bytes (stream %u, %u bytes)",
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
		send_error(0, ROOST_E_PROTOCOL,
			   "message type 0x%02x (stream %u) is agent-to-host only", f->type,
			   f->stream);
		return;
	default:
		/* On stream 0, leaving any stream it names alone: a newer host
		 * may use a message type this agent does not know. */
		send_error(0, ROOST_E_PROTOCOL, "unknown message type 0x%02x (stream %u)", f->type,
			   f->stream);
		return;
	}
}
