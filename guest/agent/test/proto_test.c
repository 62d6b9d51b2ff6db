/*
 * Tests of the Roost protocol codec (proto.c). Built with ASan/UBSan by
 * `make test`. Prints "N passed, M failed" and exits non-zero on failure.
 */
#include "proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Deterministic PRNG (xorshift64*), fixed seed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

static struct roost_parser parser;

/* ------------------------------------------------------------------ */

static void test_constants_frozen(void)
{
	/* Frozen by docs/PROTOCOL.md: changing any of these breaks the wire. */
	CHECK(ROOST_VERSION == 1);
	CHECK(ROOST_MAX_PAYLOAD == 65536);
	CHECK(ROOST_FRAME_HDR == 9);
	CHECK(ROOST_FRAME_MIN_LENGTH == 5);
	CHECK(ROOST_FRAME_MAX_LENGTH == 5 + 65536);
	CHECK(ROOST_TLV_HDR == 6);
	CHECK(ROOST_MAX_STREAMS == 256);
	CHECK(ROOST_MAX_ENTROPY == 512);
	CHECK(ROOST_MAX_NONCE == 64);
	CHECK(ROOST_MAX_PING == 64);
	CHECK(ROOST_DEFAULT_WINDOW == 262144);
	CHECK(ROOST_DEFAULT_ROWS == 24);
	CHECK(ROOST_DEFAULT_COLS == 80);
	CHECK(ROOST_FLAG_POWEROFF_ON_DISCONNECT == 0x1);
	CHECK(ROOST_CAP_FREEZE == 0x1);
	CHECK(ROOST_CAP_CALL == 0x2);
	CHECK(ROOST_CAP_NET == 0x4);

	CHECK(ROOST_T_HELLO == 0x01);
	CHECK(ROOST_T_PING == 0x02);
	CHECK(ROOST_T_PONG == 0x03);
	CHECK(ROOST_T_POWEROFF == 0x04);
	CHECK(ROOST_T_ERROR == 0x05);
	CHECK(ROOST_T_FREEZE == 0x06);
	CHECK(ROOST_T_THAW == 0x07);
	CHECK(ROOST_T_EXEC == 0x10);
	CHECK(ROOST_T_STARTED == 0x11);
	CHECK(ROOST_T_DATA == 0x12);
	CHECK(ROOST_T_EOF == 0x13);
	CHECK(ROOST_T_CREDIT == 0x14);
	CHECK(ROOST_T_SIGNAL == 0x15);
	CHECK(ROOST_T_RESIZE == 0x16);
	CHECK(ROOST_T_EXIT == 0x17);
	CHECK(ROOST_T_CALL == 0x18);

	CHECK(ROOST_TAG_VERSION == 0x0001);
	CHECK(ROOST_TAG_FLAGS == 0x0002);
	CHECK(ROOST_TAG_TIME_NS == 0x0003);
	CHECK(ROOST_TAG_ENTROPY == 0x0004);
	CHECK(ROOST_TAG_NONCE == 0x0005);
	CHECK(ROOST_TAG_AGENT_VERSION == 0x0006);
	CHECK(ROOST_TAG_MAX_PAYLOAD == 0x0007);
	CHECK(ROOST_TAG_NET == 0x0008);
	CHECK(ROOST_TAG_CAPABILITIES == 0x0009);
	CHECK(ROOST_TAG_CODE == 0x0010);
	CHECK(ROOST_TAG_MESSAGE == 0x0011);
	CHECK(ROOST_TAG_ARG == 0x0020);
	CHECK(ROOST_TAG_ENV == 0x0021);
	CHECK(ROOST_TAG_CWD == 0x0022);
	CHECK(ROOST_TAG_USER == 0x0023);
	CHECK(ROOST_TAG_PTY == 0x0024);
	CHECK(ROOST_TAG_ROWS == 0x0025);
	CHECK(ROOST_TAG_COLS == 0x0026);
	CHECK(ROOST_TAG_TIMEOUT_MS == 0x0027);
	CHECK(ROOST_TAG_STDIN == 0x0028);
	CHECK(ROOST_TAG_WINDOW == 0x0029);
	CHECK(ROOST_TAG_PID == 0x0030);
	CHECK(ROOST_TAG_STDIN_WINDOW == 0x0031);
	CHECK(ROOST_TAG_EXIT_CODE == 0x0040);
	CHECK(ROOST_TAG_EXIT_SIGNAL == 0x0041);
	CHECK(ROOST_TAG_TIMED_OUT == 0x0042);
	CHECK(ROOST_TAG_OP == 0x0050);
	CHECK(ROOST_TAG_MODE == 0x0051);
	CHECK(ROOST_TAG_CALL_FLAGS == 0x0052);
	CHECK(ROOST_TAG_DEPTH == 0x0053);
	CHECK(ROOST_TAG_SIZE == 0x0054);
	CHECK(ROOST_TAG_PATH == 0x0060);
	CHECK(ROOST_TAG_NAME == 0x0061);
	CHECK(ROOST_TAG_ST_MODE == 0x0062);
	CHECK(ROOST_TAG_UID == 0x0063);
	CHECK(ROOST_TAG_GID == 0x0064);
	CHECK(ROOST_TAG_MTIME_NS == 0x0065);
	CHECK(ROOST_TAG_LINK == 0x0066);
	CHECK(ROOST_TAG_EVENT == 0x0067);
	CHECK(ROOST_TAG_ERRNO == 0x0068);

	CHECK(ROOST_E_PROTOCOL == 1);
	CHECK(ROOST_E_VERSION == 2);
	CHECK(ROOST_E_BAD_REQUEST == 3);
	CHECK(ROOST_E_NOT_FOUND == 4);
	CHECK(ROOST_E_INTERNAL == 5);
}

static void test_big_endian(void)
{
	uint8_t b[8];
	roost_put_u16(b, 0x0102);
	CHECK(b[0] == 1 && b[1] == 2);
	CHECK(roost_get_u16(b) == 0x0102);
	roost_put_u32(b, 0x01020304u);
	CHECK(memcmp(b, "\x01\x02\x03\x04", 4) == 0);
	CHECK(roost_get_u32(b) == 0x01020304u);
	roost_put_u64(b, 0x0102030405060708ull);
	CHECK(memcmp(b, "\x01\x02\x03\x04\x05\x06\x07\x08", 8) == 0);
	CHECK(roost_get_u64(b) == 0x0102030405060708ull);
	roost_put_u32(b, 0xffffffffu);
	CHECK(roost_get_u32(b) == 0xffffffffu);
}

static void test_frame_encoding_exact(void)
{
	uint8_t mem[64];
	struct roost_buf b;
	roost_buf_init(&b, mem, sizeof mem);
	size_t s = roost_frame_begin(&b, 0x01020304u, ROOST_T_DATA);
	roost_buf_put(&b, "ab", 2);
	CHECK(roost_frame_end(&b, s) == 0);
	CHECK(b.len == 11);
	CHECK(memcmp(mem,
		     "\x00\x00\x00\x07\x01\x02\x03\x04\x12"
		     "ab",
		     11) == 0);

	/* Empty payload: length 5. */
	roost_buf_init(&b, mem, sizeof mem);
	s = roost_frame_begin(&b, 0, ROOST_T_POWEROFF);
	CHECK(roost_frame_end(&b, s) == 0);
	CHECK(b.len == 9 && memcmp(mem, "\x00\x00\x00\x05\x00\x00\x00\x00\x04", 9) == 0);

	/* FREEZE (host -> agent, empty) and its answer: ERRNO, and MESSAGE on failure. */
	roost_buf_init(&b, mem, sizeof mem);
	s = roost_frame_begin(&b, 0, ROOST_T_FREEZE);
	CHECK(roost_frame_end(&b, s) == 0);
	CHECK(b.len == 9 && memcmp(mem, "\x00\x00\x00\x05\x00\x00\x00\x00\x06", 9) == 0);
	roost_buf_init(&b, mem, sizeof mem);
	s = roost_frame_begin(&b, 0, ROOST_T_THAW);
	roost_tlv_put_u32(&b, ROOST_TAG_ERRNO, 95);
	roost_tlv_put_str(&b, ROOST_TAG_MESSAGE, "no");
	CHECK(roost_frame_end(&b, s) == 0);
	CHECK(b.len == 9 + 10 + 8);
	CHECK(memcmp(mem,
		     "\x00\x00\x00\x17\x00\x00\x00\x00\x07"
		     "\x00\x68\x00\x00\x00\x04\x00\x00\x00\x5f"
		     "\x00\x11\x00\x00\x00\x02no",
		     27) == 0);

	/* TLV encoding. */
	roost_buf_init(&b, mem, sizeof mem);
	roost_tlv_put_u32(&b, ROOST_TAG_CODE, 3);
	roost_tlv_put_str(&b, ROOST_TAG_MESSAGE, "x");
	roost_tlv_put_u64(&b, ROOST_TAG_TIME_NS, 0x0102030405060708ull);
	CHECK(!b.overflow);
	CHECK(b.len == 10 + 7 + 14);
	CHECK(memcmp(mem,
		     "\x00\x10\x00\x00\x00\x04\x00\x00\x00\x03"
		     "\x00\x11\x00\x00\x00\x01x"
		     "\x00\x03\x00\x00\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08",
		     31) == 0);

	uint8_t hdr[9];
	roost_frame_header(hdr, 7, ROOST_T_EXIT, 65536);
	CHECK(memcmp(hdr, "\x00\x01\x00\x05\x00\x00\x00\x07\x17", 9) == 0);
}

static void test_builder_bounds(void)
{
	uint8_t mem[16];
	struct roost_buf b;
	roost_buf_init(&b, mem, sizeof mem);
	size_t s = roost_frame_begin(&b, 1, ROOST_T_DATA);
	roost_buf_put(&b, "1234567", 7); /* exactly 16 */
	CHECK(!b.overflow && b.len == 16);
	roost_buf_put_u8(&b, 1);
	CHECK(b.overflow && b.len == 16);
	CHECK(roost_frame_end(&b, s) == -1);

	roost_buf_init(&b, mem, sizeof mem);
	roost_tlv_put(&b, 1, "0123456789", 10); /* 16 bytes: fits */
	CHECK(!b.overflow && b.len == 16);
	roost_buf_init(&b, mem, sizeof mem);
	roost_tlv_put(&b, 1, "0123456789a", 11); /* 17: does not, nothing written */
	CHECK(b.overflow && b.len == 0);

	/* A payload above MAX_PAYLOAD is refused by frame_end. */
	size_t cap = ROOST_FRAME_HDR + ROOST_MAX_PAYLOAD + 16;
	uint8_t *big = malloc(cap);
	CHECK(big != NULL);
	if (!big)
		return;
	roost_buf_init(&b, big, cap);
	s = roost_frame_begin(&b, 1, ROOST_T_DATA);
	memset(big + b.len, 'z', ROOST_MAX_PAYLOAD);
	b.len += ROOST_MAX_PAYLOAD;
	CHECK(roost_frame_end(&b, s) == 0);
	CHECK(roost_get_u32(big) == 5 + ROOST_MAX_PAYLOAD);
	roost_buf_put_u8(&b, 0);
	CHECK(roost_frame_end(&b, s) == -1 && b.overflow);
	free(big);
}

/* Builds a test stream of frames; returns its length. */
struct built_frame {
	uint32_t stream;
	uint8_t type;
	uint32_t len;
	size_t payload_off; /* offset of the payload in the stream */
};

static size_t build_stream(uint8_t *mem, size_t cap, struct built_frame *fr, int *nfr,
			   const uint32_t *lens, int n)
{
	struct roost_buf b;
	roost_buf_init(&b, mem, cap);
	for (int i = 0; i < n; i++) {
		size_t s =
			roost_frame_begin(&b, (uint32_t)i * 0x01010101u + 1, (uint8_t)(0x10 + i));
		fr[i].stream = (uint32_t)i * 0x01010101u + 1;
		fr[i].type = (uint8_t)(0x10 + i);
		fr[i].len = lens[i];
		fr[i].payload_off = b.len;
		for (uint32_t k = 0; k < lens[i]; k++)
			roost_buf_put_u8(&b, (uint8_t)(k * 7 + (uint32_t)i));
		roost_frame_end(&b, s);
	}
	*nfr = n;
	return b.overflow ? 0 : b.len;
}

/* Feeds buf in the given chunk sizes and checks the frames against fr. */
static int feed_and_compare(const uint8_t *buf, size_t len, const struct built_frame *fr, int nfr,
			    const size_t *cuts, int ncuts)
{
	roost_parser_reset(&parser);
	int got = 0, bad = 0;
	size_t pos = 0;
	for (int c = 0; c <= ncuts; c++) {
		size_t end = c < ncuts ? cuts[c] : len;
		while (pos < end) {
			struct roost_frame f;
			int res;
			size_t used = roost_parser_feed(&parser, buf + pos, end - pos, &f, &res);
			if (used == 0 || used > end - pos)
				return -1;
			pos += used;
			if (res == ROOST_PARSE_ERROR)
				return -1;
			if (res == ROOST_PARSE_FRAME) {
				if (got >= nfr)
					return -1;
				const struct built_frame *w = &fr[got++];
				if (f.stream != w->stream || f.type != w->type || f.len != w->len ||
				    memcmp(f.payload, buf + w->payload_off, f.len) != 0)
					bad = 1;
			} else if (pos != end) {
				return -1;
			}
		}
	}
	return bad || got != nfr || parser.hdr_have != 0 ? -1 : 0;
}

static void test_round_trip_and_splits(void)
{
	static uint8_t mem[4 * (ROOST_FRAME_HDR + ROOST_MAX_PAYLOAD)];
	struct built_frame fr[8];
	int nfr;

	/* Every split point (two chunks) and byte-at-a-time, small frames. */
	const uint32_t small[] = {0, 1, 2, 9, 30, 0, 5};
	size_t len = build_stream(mem, sizeof mem, fr, &nfr, small, 7);
	CHECK(len > 0);
	int fails = 0;
	for (size_t cut = 0; cut <= len; cut++) {
		size_t cuts[1] = {cut};
		if (feed_and_compare(mem, len, fr, nfr, cuts, 1) < 0)
			fails++;
	}
	CHECK(fails == 0);
	/* Three chunks: every pair of split points. */
	fails = 0;
	for (size_t c1 = 0; c1 <= len; c1++)
		for (size_t c2 = c1; c2 <= len; c2++) {
			size_t cuts[2] = {c1, c2};
			if (feed_and_compare(mem, len, fr, nfr, cuts, 2) < 0)
				fails++;
		}
	CHECK(fails == 0);
	{
		size_t *cuts = malloc(len * sizeof *cuts);
		CHECK(cuts != NULL);
		if (cuts) {
			for (size_t i = 0; i < len; i++)
				cuts[i] = i + 1;
			CHECK(feed_and_compare(mem, len, fr, nfr, cuts, (int)len) == 0);
			free(cuts);
		}
	}

	/* Maximum-size frames split at every boundary near the edges and at
	 * random points in between. */
	const uint32_t large[] = {ROOST_MAX_PAYLOAD, 3, ROOST_MAX_PAYLOAD, 0};
	len = build_stream(mem, sizeof mem, fr, &nfr, large, 4);
	CHECK(len == 4 * 9 + 2 * ROOST_MAX_PAYLOAD + 3);
	fails = 0;
	for (size_t cut = 0; cut <= len; cut++) {
		int edge = cut < 64 || (cut > 65536 && cut < 65620) || cut + 64 > len ||
			   rnd() % 512 == 0;
		if (!edge)
			continue;
		size_t cuts[1] = {cut};
		if (feed_and_compare(mem, len, fr, nfr, cuts, 1) < 0)
			fails++;
	}
	CHECK(fails == 0);
	CHECK(feed_and_compare(mem, len, fr, nfr, NULL, 0) == 0);
}

static void test_length_limits(void)
{
	struct roost_frame f;
	int res;
	uint8_t hdr[9];

	/* length 5: an empty frame. */
	roost_parser_reset(&parser);
	memcpy(hdr, "\x00\x00\x00\x05\x00\x00\x00\x09\x02", 9);
	size_t used = roost_parser_feed(&parser, hdr, 9, &f, &res);
	CHECK(used == 9 && res == ROOST_PARSE_FRAME && f.len == 0 && f.stream == 9 && f.type == 2);

	/* length 0..4: rejected as soon as the length field is complete. */
	for (uint32_t l = 0; l < 5; l++) {
		roost_parser_reset(&parser);
		roost_put_u32(hdr, l);
		used = roost_parser_feed(&parser, hdr, 9, &f, &res);
		CHECK(used == 4 && res == ROOST_PARSE_ERROR && parser.bad_length == l);
		CHECK(parser.hdr_have == 0);
	}
	/* length 5 + MAX_PAYLOAD + 1 and 0xffffffff: rejected. */
	const uint32_t bad[] = {5 + ROOST_MAX_PAYLOAD + 1, 0x7fffffffu, 0xffffffffu, 0x80000000u};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		roost_parser_reset(&parser);
		roost_put_u32(hdr, bad[i]);
		/* fed one byte at a time: the error comes with the 4th byte */
		int errs = 0;
		for (int k = 0; k < 4; k++) {
			used = roost_parser_feed(&parser, hdr + k, 1, &f, &res);
			if (res == ROOST_PARSE_ERROR)
				errs += k == 3 ? 1 : 100;
		}
		CHECK(errs == 1);
	}
	/* length 5 + MAX_PAYLOAD: accepted (the payload is awaited). */
	roost_parser_reset(&parser);
	roost_put_u32(hdr, 5 + ROOST_MAX_PAYLOAD);
	used = roost_parser_feed(&parser, hdr, 9, &f, &res);
	CHECK(used == 9 && res == ROOST_PARSE_MORE);

	/* After an error the following bytes are parsed afresh. */
	roost_parser_reset(&parser);
	uint8_t two[13] = {0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 3, 2};
	used = roost_parser_feed(&parser, two, sizeof two, &f, &res);
	CHECK(used == 4 && res == ROOST_PARSE_ERROR);
	used = roost_parser_feed(&parser, two + 4, sizeof two - 4, &f, &res);
	CHECK(used == 9 && res == ROOST_PARSE_FRAME && f.stream == 3 && f.type == 2 && f.len == 0);

	/* Zero-length feed. */
	roost_parser_reset(&parser);
	used = roost_parser_feed(&parser, two, 0, &f, &res);
	CHECK(used == 0 && res == ROOST_PARSE_MORE);
}

/*
 * Reference parser over a whole buffer with the same error semantics (after a
 * bad length the next byte starts a new frame). Produces an event log.
 */
struct event {
	int kind;         /* 1 frame, 2 error */
	uint32_t a, b, c; /* frame: stream, type, len; error: length */
	size_t payload_off;
};

static int reference_parse(const uint8_t *buf, size_t len, struct event *ev, int max)
{
	size_t pos = 0;
	int n = 0;
	while (pos + 4 <= len && n < max) {
		uint32_t l = roost_get_u32(buf + pos);
		if (l < 5 || l > 5 + ROOST_MAX_PAYLOAD) {
			ev[n++] = (struct event){.kind = 2, .a = l};
			pos += 4;
			continue;
		}
		if (len - pos < 4 + (size_t)l)
			break;
		ev[n++] = (struct event){.kind = 1,
					 .a = roost_get_u32(buf + pos + 4),
					 .b = buf[pos + 8],
					 .c = l - 5,
					 .payload_off = pos + 9};
		pos += 4 + l;
	}
	return n;
}

static void test_random_bytes(void)
{
	enum { ITER = 200000, MAXLEN = 300, MAXEV = 200 };
	static uint8_t buf[MAXLEN];
	static struct event ref[MAXEV];
	int mismatches = 0, frames = 0, errors = 0;
	for (int it = 0; it < ITER; it++) {
		size_t len = rnd() % MAXLEN;
		for (size_t i = 0; i < len; i++)
			buf[i] = (uint8_t)rnd();
		/* Bias towards plausible frames so both paths get exercised. */
		if (rnd() % 2) {
			size_t pos = 0;
			while (pos + 4 <= len && rnd() % 4) {
				uint32_t l = 5 + rnd() % 40;
				if (rnd() % 8 == 0)
					l = rnd() % 5;
				roost_put_u32(buf + pos, l);
				pos += 4 + l;
			}
		}
		int nref = reference_parse(buf, len, ref, MAXEV);
		roost_parser_reset(&parser);
		int k = 0;
		size_t pos = 0;
		while (pos < len) {
			size_t chunk = 1 + rnd() % 64;
			if (chunk > len - pos)
				chunk = len - pos;
			size_t end = pos + chunk;
			while (pos < end) {
				struct roost_frame f;
				int res;
				size_t used =
					roost_parser_feed(&parser, buf + pos, end - pos, &f, &res);
				if (used == 0 || used > end - pos) {
					mismatches++;
					pos = end;
					break;
				}
				pos += used;
				if (res == ROOST_PARSE_MORE)
					continue;
				if (k >= nref) {
					mismatches++;
					continue;
				}
				const struct event *e = &ref[k++];
				if (res == ROOST_PARSE_ERROR) {
					errors++;
					if (e->kind != 2 || e->a != parser.bad_length)
						mismatches++;
				} else {
					frames++;
					if (e->kind != 1 || f.stream != e->a || f.type != e->b ||
					    f.len != e->c || f.len > ROOST_MAX_PAYLOAD ||
					    memcmp(f.payload, buf + e->payload_off, f.len) != 0)
						mismatches++;
				}
			}
		}
		if (k != nref)
			mismatches++;
	}
	CHECK(mismatches == 0);
	CHECK(frames > 10000 && errors > 10000);
}

static void test_tlv(void)
{
	uint8_t mem[256];
	struct roost_buf b;
	roost_buf_init(&b, mem, sizeof mem);
	roost_tlv_put_str(&b, ROOST_TAG_ARG, "ls");
	roost_tlv_put_str(&b, ROOST_TAG_ARG, "");
	roost_tlv_put_u32(&b, ROOST_TAG_PTY, 1);
	roost_tlv_put_u64(&b, ROOST_TAG_TIME_NS, 123456789012345ull);
	roost_tlv_put(&b, 0xbeef, "\x00\x01", 2);
	CHECK(!b.overflow);
	CHECK(roost_tlv_validate(mem, b.len) == 0);

	struct roost_tlv_iter it;
	struct roost_tlv t;
	roost_tlv_iter_init(&it, mem, b.len);
	CHECK(roost_tlv_next(&it, &t) == 1 && t.tag == ROOST_TAG_ARG && t.len == 2 &&
	      memcmp(t.value, "ls", 2) == 0 && roost_tlv_str_ok(&t));
	CHECK(roost_tlv_next(&it, &t) == 1 && t.tag == ROOST_TAG_ARG && t.len == 0 &&
	      roost_tlv_str_ok(&t));
	uint32_t v32 = 0;
	uint64_t v64 = 0;
	CHECK(roost_tlv_next(&it, &t) == 1 && t.tag == ROOST_TAG_PTY &&
	      roost_tlv_u32(&t, &v32) == 0 && v32 == 1 && roost_tlv_u64(&t, &v64) == -1);
	CHECK(roost_tlv_next(&it, &t) == 1 && t.tag == ROOST_TAG_TIME_NS &&
	      roost_tlv_u64(&t, &v64) == 0 && v64 == 123456789012345ull &&
	      roost_tlv_u32(&t, &v32) == -1);
	CHECK(roost_tlv_next(&it, &t) == 1 && t.tag == 0xbeef && t.len == 2 &&
	      !roost_tlv_str_ok(&t));
	CHECK(roost_tlv_next(&it, &t) == 0);
	CHECK(roost_tlv_next(&it, &t) == 0);

	/* Empty payload is a valid, empty TLV sequence. */
	CHECK(roost_tlv_validate(mem, 0) == 0);

	/* Every truncation of the sequence is rejected, except at field
	 * boundaries (which are valid shorter sequences). */
	size_t bounds[] = {0, 8, 14, 24, 38, 46};
	int wrong = 0;
	for (size_t cut = 0; cut <= b.len; cut++) {
		int boundary = 0;
		for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++)
			boundary |= bounds[i] == cut;
		/* Copy to an exact-size heap buffer so ASan sees any overread. */
		uint8_t *copy = malloc(cut ? cut : 1);
		if (!copy)
			return;
		memcpy(copy, mem, cut);
		int r = roost_tlv_validate(copy, cut);
		free(copy);
		if ((r == 0) != boundary)
			wrong++;
	}
	CHECK(b.len == 46);
	CHECK(wrong == 0);

	/* A value length that runs past the end, including huge ones. */
	uint8_t bad[10] = {0, 0x20, 0, 0, 0, 5, 'a', 'b', 'c', 'd'};
	CHECK(roost_tlv_validate(bad, sizeof bad) == -1);
	bad[5] = 4;
	CHECK(roost_tlv_validate(bad, sizeof bad) == 0);
	bad[2] = 0xff;
	bad[3] = 0xff;
	bad[4] = 0xff;
	bad[5] = 0xff;
	CHECK(roost_tlv_validate(bad, sizeof bad) == -1);
	/* A header cut short. */
	for (size_t n = 1; n < 6; n++)
		CHECK(roost_tlv_validate(bad, n) == -1);

	/* NUL inside strings, at each position. */
	const char *withnul[] = {"\0abc", "a\0bc", "abc\0"};
	for (int i = 0; i < 3; i++) {
		struct roost_tlv s = {
			.tag = ROOST_TAG_ARG, .len = 4, .value = (const uint8_t *)withnul[i]};
		CHECK(!roost_tlv_str_ok(&s));
	}
	struct roost_tlv s = {.tag = ROOST_TAG_ARG, .len = 4, .value = (const uint8_t *)"abcd"};
	CHECK(roost_tlv_str_ok(&s));
}

static void test_tlv_random(void)
{
	enum { ITER = 100000, MAXLEN = 64 };
	int wrong = 0;
	for (int it = 0; it < ITER; it++) {
		size_t len = rnd() % MAXLEN;
		uint8_t *p = malloc(len ? len : 1);
		if (!p)
			return;
		for (size_t i = 0; i < len; i++)
			p[i] = (uint8_t)rnd();
		if (rnd() % 2) /* plausible lengths */
			for (size_t pos = 0; pos + 6 <= len;) {
				uint32_t l = rnd() % 12;
				roost_put_u32(p + pos + 2, l);
				pos += 6 + l;
			}
		/* Reference: walk the fields. */
		size_t pos = 0;
		int expect = 0;
		while (pos < len) {
			if (len - pos < 6) {
				expect = -1;
				break;
			}
			uint32_t l = roost_get_u32(p + pos + 2);
			if (l > len - pos - 6) {
				expect = -1;
				break;
			}
			pos += 6 + l;
		}
		struct roost_tlv_iter iter;
		struct roost_tlv t;
		roost_tlv_iter_init(&iter, p, len);
		size_t sum = 0;
		int r;
		while ((r = roost_tlv_next(&iter, &t)) == 1) {
			if (t.value < p || t.value + t.len > p + len)
				wrong++;
			sum += 6 + t.len;
		}
		if (r != expect || (r == 0 && sum != len) || roost_tlv_validate(p, len) != expect)
			wrong++;
		free(p);
	}
	CHECK(wrong == 0);
}

static void test_hello_round_trip(void)
{
	static uint8_t mem[ROOST_FRAME_HDR + ROOST_MAX_PAYLOAD];
	struct roost_buf b;
	roost_buf_init(&b, mem, sizeof mem);
	uint8_t nonce[ROOST_MAX_NONCE], entropy[ROOST_MAX_ENTROPY];
	for (size_t i = 0; i < sizeof nonce; i++)
		nonce[i] = (uint8_t)rnd();
	for (size_t i = 0; i < sizeof entropy; i++)
		entropy[i] = (uint8_t)rnd();
	size_t s = roost_frame_begin(&b, 0, ROOST_T_HELLO);
	roost_tlv_put_u32(&b, ROOST_TAG_VERSION, ROOST_VERSION);
	roost_tlv_put_u32(&b, ROOST_TAG_FLAGS, ROOST_FLAG_POWEROFF_ON_DISCONNECT);
	roost_tlv_put_u64(&b, ROOST_TAG_TIME_NS, 1700000000123456789ull);
	roost_tlv_put(&b, ROOST_TAG_ENTROPY, entropy, sizeof entropy);
	roost_tlv_put(&b, ROOST_TAG_NONCE, nonce, sizeof nonce);
	CHECK(roost_frame_end(&b, s) == 0);

	roost_parser_reset(&parser);
	struct roost_frame f;
	int res;
	size_t used = roost_parser_feed(&parser, mem, b.len, &f, &res);
	CHECK(used == b.len && res == ROOST_PARSE_FRAME && f.type == ROOST_T_HELLO &&
	      f.stream == 0);
	CHECK(roost_tlv_validate(f.payload, f.len) == 0);
	struct roost_tlv_iter it;
	struct roost_tlv t;
	roost_tlv_iter_init(&it, f.payload, f.len);
	int seen = 0;
	while (roost_tlv_next(&it, &t) == 1) {
		uint32_t v;
		uint64_t w;
		switch (t.tag) {
		case ROOST_TAG_VERSION:
			seen += roost_tlv_u32(&t, &v) == 0 && v == 1;
			break;
		case ROOST_TAG_FLAGS:
			seen += roost_tlv_u32(&t, &v) == 0 && v == 1;
			break;
		case ROOST_TAG_TIME_NS:
			seen += roost_tlv_u64(&t, &w) == 0 && w == 1700000000123456789ull;
			break;
		case ROOST_TAG_ENTROPY:
			seen += t.len == 512 && memcmp(t.value, entropy, 512) == 0;
			break;
		case ROOST_TAG_NONCE:
			seen += t.len == 64 && memcmp(t.value, nonce, 64) == 0;
			break;
		}
	}
	CHECK(seen == 5);

	/* An EXEC frame filling MAX_PAYLOAD exactly. */
	roost_buf_init(&b, mem, sizeof mem);
	s = roost_frame_begin(&b, 42, ROOST_T_EXEC);
	static char arg[ROOST_MAX_PAYLOAD];
	memset(arg, 'a', sizeof arg);
	roost_tlv_put(&b, ROOST_TAG_ARG, arg, ROOST_MAX_PAYLOAD - ROOST_TLV_HDR);
	CHECK(roost_frame_end(&b, s) == 0 && b.len == sizeof mem);
	roost_parser_reset(&parser);
	used = roost_parser_feed(&parser, mem, b.len, &f, &res);
	CHECK(used == b.len && res == ROOST_PARSE_FRAME && f.len == ROOST_MAX_PAYLOAD &&
	      f.stream == 42);
	CHECK(roost_tlv_validate(f.payload, f.len) == 0);
}

int main(void)
{
	test_constants_frozen();
	test_big_endian();
	test_frame_encoding_exact();
	test_builder_bounds();
	test_round_trip_and_splits();
	test_length_limits();
	test_random_bytes();
	test_tlv();
	test_tlv_random();
	test_hello_round_trip();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
