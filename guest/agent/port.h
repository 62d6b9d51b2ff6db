/*
 * The virtio-serial port to the host: finding and opening it, noticing a host
 * connect and disconnect, reading frames (handed to control.c), and the one
 * outbound buffer every frame to the host goes through.
 */
#ifndef ROOST_PORT_H
#define ROOST_PORT_H

#include "proto.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Outbound buffer bounds: process pipes are not read above OUT_PIPE_LIMIT,
 * the port is not read above OUT_PORT_LIMIT (every host frame produces a
 * bounded answer), and nothing is ever queued above OUT_HARD_LIMIT. */
#define OUT_PIPE_LIMIT (1u << 20)
#define OUT_PORT_LIMIT (2u << 20)
#define OUT_HARD_LIMIT (16u << 20)

/* Bytes queued for the host: data[off, off + len). */
struct out_queue {
	uint8_t *data;
	size_t off, len, cap;
	bool overflow_logged;
};

extern struct out_queue out;
extern int port_fd;
/* A host holds the port open; false: frames to the host are dropped. */
extern bool port_connected;
/* HELLOs handled, to order them against hangups. */
extern unsigned hello_count;
/* While disconnected: when port_check looks again (CLOCK_MONOTONIC ms). */
extern uint64_t next_port_check;
/* Room for one frame being built (single-threaded: one at a time). */
extern uint8_t scratch[ROOST_FRAME_HDR + ROOST_MAX_PAYLOAD];

/* Makes room for n more bytes in out: 0, or -1 (logged) if it cannot. */
int out_reserve(size_t n);
/* Writes out to the port until it would block. */
void port_flush(void);

void send_raw(uint32_t stream, uint8_t type, const void *payload, size_t len);
/* Ends the frame started at `start` in b and queues it. */
void send_buf(struct roost_buf *b, size_t start);
__attribute__((format(printf, 3, 0))) void send_error_v(uint32_t stream, uint32_t code,
							const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) void send_error(uint32_t stream, uint32_t code,
						      const char *fmt, ...);
void send_eof(uint32_t stream, uint8_t fd);
void send_credit(uint32_t stream, uint8_t fd, uint32_t n);

/* Waits (for ever) until the port named `name` exists, opens it and checks
 * whether a host is connected. */
void port_start(const char *name);
/* Reads the port until it would block; hup: the poll saw a hangup. */
void port_read(bool hup);
/* While disconnected: checks whether a host has connected. */
void port_check(void);

#endif
