/* Roost protocol codec: see proto.h and docs/PROTOCOL.md. */
#include "proto.h"

#include <string.h>

uint16_t roost_get_u16(const uint8_t *p)
{
	return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

uint32_t roost_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t roost_get_u64(const uint8_t *p)
{
	return (uint64_t)roost_get_u32(p) << 32 | roost_get_u32(p + 4);
}

void roost_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

void roost_put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

void roost_put_u64(uint8_t *p, uint64_t v)
{
	roost_put_u32(p, (uint32_t)(v >> 32));
	roost_put_u32(p + 4, (uint32_t)v);
}

void roost_frame_header(uint8_t hdr[ROOST_FRAME_HDR], uint32_t stream, uint8_t type,
			uint32_t payload_len)
{
	roost_put_u32(hdr, ROOST_FRAME_MIN_LENGTH + payload_len);
	roost_put_u32(hdr + 4, stream);
	hdr[8] = type;
}

/* ---- parser ---- */

void roost_parser_reset(struct roost_parser *p)
{
	p->hdr_have = 0;
	p->payload_have = 0;
	p->payload_len = 0;
}

size_t roost_parser_feed(struct roost_parser *p, const uint8_t *buf, size_t len,
			 struct roost_frame *out, int *res)
{
	size_t used = 0;

	while (used < len) {
		if (p->hdr_have < ROOST_FRAME_HDR) {
			p->hdr[p->hdr_have++] = buf[used++];
			if (p->hdr_have == 4) {
				uint32_t l = roost_get_u32(p->hdr);
				if (l < ROOST_FRAME_MIN_LENGTH || l > ROOST_FRAME_MAX_LENGTH) {
					p->bad_length = l;
					roost_parser_reset(p);
					*res = ROOST_PARSE_ERROR;
					return used;
				}
				p->payload_len = l - ROOST_FRAME_MIN_LENGTH;
				p->payload_have = 0;
			}
			if (p->hdr_have < ROOST_FRAME_HDR || p->payload_len > 0)
				continue;
		} else {
			size_t want = p->payload_len - p->payload_have;
			size_t n = len - used < want ? len - used : want;
			memcpy(p->payload + p->payload_have, buf + used, n);
			p->payload_have += (uint32_t)n;
			used += n;
			if (p->payload_have < p->payload_len)
				continue;
		}
		/* Header complete and payload complete: a frame. */
		out->stream = roost_get_u32(p->hdr + 4);
		out->type = p->hdr[8];
		out->len = p->payload_len;
		out->payload = p->payload;
		p->hdr_have = 0;
		p->payload_have = 0;
		p->payload_len = 0;
		*res = ROOST_PARSE_FRAME;
		return used;
	}
	*res = ROOST_PARSE_MORE;
	return used;
}

/* ---- TLV reading ---- */

void roost_tlv_iter_init(struct roost_tlv_iter *it, const uint8_t *p, size_t len)
{
	it->p = p;
	it->len = len;
	it->off = 0;
}

int roost_tlv_next(struct roost_tlv_iter *it, struct roost_tlv *out)
{
	size_t rest = it->len - it->off;
	if (rest == 0)
		return 0;
	if (rest < ROOST_TLV_HDR)
		return -1;
	const uint8_t *h = it->p + it->off;
	uint32_t vlen = roost_get_u32(h + 2);
	if ((size_t)vlen > rest - ROOST_TLV_HDR)
		return -1;
	out->tag = roost_get_u16(h);
	out->len = vlen;
	out->value = h + ROOST_TLV_HDR;
	it->off += ROOST_TLV_HDR + (size_t)vlen;
	return 1;
}

int roost_tlv_validate(const uint8_t *p, size_t len)
{
	struct roost_tlv_iter it;
	struct roost_tlv t;
	int r;
	roost_tlv_iter_init(&it, p, len);
	while ((r = roost_tlv_next(&it, &t)) == 1)
		;
	return r == 0 ? 0 : -1;
}

int roost_tlv_u32(const struct roost_tlv *t, uint32_t *v)
{
	if (t->len != 4)
		return -1;
	*v = roost_get_u32(t->value);
	return 0;
}

int roost_tlv_u64(const struct roost_tlv *t, uint64_t *v)
{
	if (t->len != 8)
		return -1;
	*v = roost_get_u64(t->value);
	return 0;
}

int roost_tlv_str_ok(const struct roost_tlv *t)
{
	return t->len == 0 || memchr(t->value, 0, t->len) == NULL;
}

/* ---- building ---- */

void roost_buf_init(struct roost_buf *b, uint8_t *mem, size_t cap)
{
	b->data = mem;
	b->len = 0;
	b->cap = cap;
	b->overflow = 0;
}

void roost_buf_put(struct roost_buf *b, const void *data, size_t n)
{
	if (b->overflow || n > b->cap - b->len) {
		b->overflow = 1;
		return;
	}
	if (n)
		memcpy(b->data + b->len, data, n);
	b->len += n;
}

void roost_buf_put_u8(struct roost_buf *b, uint8_t v)
{
	roost_buf_put(b, &v, 1);
}

void roost_buf_put_u16(struct roost_buf *b, uint16_t v)
{
	uint8_t t[2];
	roost_put_u16(t, v);
	roost_buf_put(b, t, 2);
}

void roost_buf_put_u32(struct roost_buf *b, uint32_t v)
{
	uint8_t t[4];
	roost_put_u32(t, v);
	roost_buf_put(b, t, 4);
}

size_t roost_frame_begin(struct roost_buf *b, uint32_t stream, uint8_t type)
{
	uint8_t hdr[ROOST_FRAME_HDR];
	size_t start = b->len;
	roost_frame_header(hdr, stream, type, 0);
	roost_buf_put(b, hdr, sizeof hdr);
	return start;
}

int roost_frame_end(struct roost_buf *b, size_t start)
{
	if (b->overflow || start > b->len || b->len - start < ROOST_FRAME_HDR)
		return -1;
	size_t payload = b->len - start - ROOST_FRAME_HDR;
	if (payload > ROOST_MAX_PAYLOAD) {
		b->overflow = 1;
		return -1;
	}
	roost_put_u32(b->data + start, (uint32_t)(ROOST_FRAME_MIN_LENGTH + payload));
	return 0;
}

void roost_tlv_put(struct roost_buf *b, uint16_t tag, const void *value, size_t len)
{
	uint8_t h[ROOST_TLV_HDR];
	if (b->overflow || len > UINT32_MAX || ROOST_TLV_HDR + len > b->cap - b->len) {
		b->overflow = 1;
		return;
	}
	roost_put_u16(h, tag);
	roost_put_u32(h + 2, (uint32_t)len);
	roost_buf_put(b, h, sizeof h);
	roost_buf_put(b, value, len);
}

void roost_tlv_put_u32(struct roost_buf *b, uint16_t tag, uint32_t v)
{
	uint8_t t[4];
	roost_put_u32(t, v);
	roost_tlv_put(b, tag, t, 4);
}

void roost_tlv_put_u64(struct roost_buf *b, uint16_t tag, uint64_t v)
{
	uint8_t t[8];
	roost_put_u64(t, v);
	roost_tlv_put(b, tag, t, 8);
}

void roost_tlv_put_str(struct roost_buf *b, uint16_t tag, const char *s)
{
	roost_tlv_put(b, tag, s, strlen(s));
}
