/*
 * Roost host <-> agent wire protocol, version 1: frame and TLV codec.
 *
 * Pure data handling, no I/O and no allocation. The authoritative description
 * is docs/PROTOCOL.md; the constants below are frozen by test/proto_test.c.
 *
 * Frame:   [length u32 BE][stream u32 BE][type u8][payload]
 *          length = 5 + payload length, 5 <= length <= 5 + ROOST_MAX_PAYLOAD
 * TLV:     [tag u16 BE][len u32 BE][value]
 */
#ifndef ROOST_PROTO_H
#define ROOST_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define ROOST_VERSION          1u
#define ROOST_MAX_PAYLOAD      65536u
#define ROOST_FRAME_HDR        9u /* length + stream + type */
#define ROOST_FRAME_MIN_LENGTH 5u
#define ROOST_FRAME_MAX_LENGTH (5u + ROOST_MAX_PAYLOAD)
#define ROOST_TLV_HDR          6u /* tag + len */

/* Limits (PROTOCOL.md "Limits"). */
#define ROOST_MAX_STREAMS 256u
#define ROOST_MAX_ENTROPY 512u
#define ROOST_MAX_NONCE   64u
/* HELLO's NET value: mac[6] mtu(u16) address[4] prefix(u8) gateway[4] dns[4] */
#define ROOST_NET_LEN     21u
#define ROOST_MAX_PING    64u

/* Defaults. */
#define ROOST_DEFAULT_WINDOW 262144u
#define ROOST_DEFAULT_ROWS   24u
#define ROOST_DEFAULT_COLS   80u

/* HELLO FLAGS bits. */
#define ROOST_FLAG_POWEROFF_ON_DISCONNECT 0x1u

/* CAPABILITIES bits (the agent's HELLO): what the agent serves of what was
 * added to version 1 after its first release. An agent without the TLV
 * announces none of them (docs/PROTOCOL.md "Versions and capabilities"). */
#define ROOST_CAP_FREEZE   0x1u  /* FREEZE and THAW */
#define ROOST_CAP_CALL     0x2u  /* CALL: the built-in file operations */
#define ROOST_CAP_NET      0x4u  /* NET in HELLO: eth0's configuration */
#define ROOST_CAP_LAYERS   0x8u  /* CALL commit, archive LAYER: an image builder's layers */
#define ROOST_CAP_P9_RELAY 0x10u /* CALL mount with RELAY: 9P over the roost.p9 port */

/* Message types. */
enum roost_type {
	ROOST_T_HELLO = 0x01,
	ROOST_T_PING = 0x02,
	ROOST_T_PONG = 0x03,
	ROOST_T_POWEROFF = 0x04,
	ROOST_T_ERROR = 0x05,
	ROOST_T_FREEZE = 0x06,
	ROOST_T_THAW = 0x07,
	ROOST_T_EXEC = 0x10,
	ROOST_T_STARTED = 0x11,
	ROOST_T_DATA = 0x12,
	ROOST_T_EOF = 0x13,
	ROOST_T_CREDIT = 0x14,
	ROOST_T_SIGNAL = 0x15,
	ROOST_T_RESIZE = 0x16,
	ROOST_T_EXIT = 0x17,
	ROOST_T_CALL = 0x18,
};

/* TLV tags. */
enum roost_tag {
	ROOST_TAG_VERSION = 0x0001,
	ROOST_TAG_FLAGS = 0x0002,
	ROOST_TAG_TIME_NS = 0x0003,
	ROOST_TAG_ENTROPY = 0x0004,
	ROOST_TAG_NONCE = 0x0005,
	ROOST_TAG_AGENT_VERSION = 0x0006,
	ROOST_TAG_MAX_PAYLOAD = 0x0007,
	ROOST_TAG_NET = 0x0008,
	ROOST_TAG_CAPABILITIES = 0x0009,
	ROOST_TAG_CODE = 0x0010,
	ROOST_TAG_MESSAGE = 0x0011,
	ROOST_TAG_ARG = 0x0020,
	ROOST_TAG_ENV = 0x0021,
	ROOST_TAG_CWD = 0x0022,
	ROOST_TAG_USER = 0x0023,
	ROOST_TAG_PTY = 0x0024,
	ROOST_TAG_ROWS = 0x0025,
	ROOST_TAG_COLS = 0x0026,
	ROOST_TAG_TIMEOUT_MS = 0x0027,
	ROOST_TAG_STDIN = 0x0028,
	ROOST_TAG_WINDOW = 0x0029,
	ROOST_TAG_PID = 0x0030,
	ROOST_TAG_STDIN_WINDOW = 0x0031,
	ROOST_TAG_EXIT_CODE = 0x0040,
	ROOST_TAG_EXIT_SIGNAL = 0x0041,
	ROOST_TAG_TIMED_OUT = 0x0042,
	ROOST_TAG_OP = 0x0050,
	ROOST_TAG_MODE = 0x0051,
	ROOST_TAG_CALL_FLAGS = 0x0052,
	ROOST_TAG_DEPTH = 0x0053,
	ROOST_TAG_SIZE = 0x0054,
	ROOST_TAG_PATH = 0x0060,
	ROOST_TAG_NAME = 0x0061,
	ROOST_TAG_ST_MODE = 0x0062,
	ROOST_TAG_UID = 0x0063,
	ROOST_TAG_GID = 0x0064,
	ROOST_TAG_MTIME_NS = 0x0065,
	ROOST_TAG_LINK = 0x0066,
	ROOST_TAG_EVENT = 0x0067,
	ROOST_TAG_ERRNO = 0x0068,
};

/* ERROR codes. */
enum roost_err {
	ROOST_E_PROTOCOL = 1,
	ROOST_E_VERSION = 2,
	ROOST_E_BAD_REQUEST = 3,
	ROOST_E_NOT_FOUND = 4,
	ROOST_E_INTERNAL = 5,
};

/* ---- big-endian helpers (no alignment assumptions) ---- */
uint16_t roost_get_u16(const uint8_t *p);
uint32_t roost_get_u32(const uint8_t *p);
uint64_t roost_get_u64(const uint8_t *p);
void roost_put_u16(uint8_t *p, uint16_t v);
void roost_put_u32(uint8_t *p, uint32_t v);
void roost_put_u64(uint8_t *p, uint64_t v);

/* Writes a 9-byte frame header for a payload of payload_len bytes.
 * payload_len must be <= ROOST_MAX_PAYLOAD (checked by the caller). */
void roost_frame_header(uint8_t hdr[ROOST_FRAME_HDR], uint32_t stream, uint8_t type,
			uint32_t payload_len);

/* ---- incremental frame parser ---- */

struct roost_frame {
	uint32_t stream;
	uint8_t type;
	uint32_t len;           /* payload length, <= ROOST_MAX_PAYLOAD */
	const uint8_t *payload; /* points into the parser; valid until the next feed */
};

enum roost_parse_result {
	ROOST_PARSE_MORE = 0,  /* every byte given was consumed; need more input */
	ROOST_PARSE_FRAME = 1, /* a complete frame is in *out */
	ROOST_PARSE_ERROR = 2, /* bad length field; parser has been reset */
};

struct roost_parser {
	uint32_t hdr_have;     /* header bytes collected (0..9) */
	uint32_t payload_have; /* payload bytes collected */
	uint32_t payload_len;  /* from the header, valid once hdr_have == 9 */
	uint32_t bad_length;   /* the offending length after ROOST_PARSE_ERROR */
	uint8_t hdr[ROOST_FRAME_HDR];
	uint8_t payload[ROOST_MAX_PAYLOAD];
};

void roost_parser_reset(struct roost_parser *p);

/*
 * Feeds up to len bytes. Returns how many bytes were consumed and stores the
 * outcome in *res:
 *   ROOST_PARSE_FRAME: *out holds a complete frame; call again with the rest.
 *   ROOST_PARSE_MORE:  all len bytes consumed, no complete frame yet.
 *   ROOST_PARSE_ERROR: the 4-byte length field just completed is < 5 or
 *                      > 5 + MAX_PAYLOAD; the bytes up to and including it
 *                      were consumed and the parser was reset.
 * Never reads outside buf[0..len).
 */
size_t roost_parser_feed(struct roost_parser *p, const uint8_t *buf, size_t len,
			 struct roost_frame *out, int *res);

/* ---- TLV reading ---- */

struct roost_tlv {
	uint16_t tag;
	uint32_t len;
	const uint8_t *value;
};

struct roost_tlv_iter {
	const uint8_t *p;
	size_t len;
	size_t off;
};

void roost_tlv_iter_init(struct roost_tlv_iter *it, const uint8_t *p, size_t len);
/* 1: *out filled; 0: clean end; -1: malformed (header or value runs past the end). */
int roost_tlv_next(struct roost_tlv_iter *it, struct roost_tlv *out);
/* 0 if the whole payload is a well-formed TLV sequence, -1 otherwise. */
int roost_tlv_validate(const uint8_t *p, size_t len);
/* 0 and *v set if the field is exactly 4 (resp. 8) bytes, -1 otherwise. */
int roost_tlv_u32(const struct roost_tlv *t, uint32_t *v);
int roost_tlv_u64(const struct roost_tlv *t, uint64_t *v);
/* 1 if the value contains no NUL byte (a valid protocol string), else 0. */
int roost_tlv_str_ok(const struct roost_tlv *t);

/* ---- building into a bounded buffer ---- */

/*
 * A bounded output buffer. Every append checks the bound; an append that does
 * not fit sets overflow and writes nothing (the buffer stays as it was before
 * that append, so len is always a valid prefix).
 */
struct roost_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	int overflow;
};

void roost_buf_init(struct roost_buf *b, uint8_t *mem, size_t cap);
void roost_buf_put(struct roost_buf *b, const void *data, size_t n);
void roost_buf_put_u8(struct roost_buf *b, uint8_t v);
void roost_buf_put_u16(struct roost_buf *b, uint16_t v);
void roost_buf_put_u32(struct roost_buf *b, uint32_t v);

/* Starts a frame: writes a header with a zero length and returns the offset of
 * the frame start, to be passed to roost_frame_end. */
size_t roost_frame_begin(struct roost_buf *b, uint32_t stream, uint8_t type);
/* Fills in the length. Sets overflow if the payload exceeds MAX_PAYLOAD.
 * Returns 0 on success, -1 if the buffer overflowed at any point. */
int roost_frame_end(struct roost_buf *b, size_t start);

void roost_tlv_put(struct roost_buf *b, uint16_t tag, const void *value, size_t len);
void roost_tlv_put_u32(struct roost_buf *b, uint16_t tag, uint32_t v);
void roost_tlv_put_u64(struct roost_buf *b, uint16_t tag, uint64_t v);
void roost_tlv_put_str(struct roost_buf *b, uint16_t tag, const char *s);

#endif
