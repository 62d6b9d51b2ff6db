/*
 * Stream 0 and the dispatch of every frame from the host: HELLO (the
 * session; the answer carries the agent's version and capabilities), PING,
 * POWEROFF, FREEZE/THAW; stream frames go to exec.c, EXEC/CALL to spawn.c.
 */
#ifndef ROOST_CONTROL_H
#define ROOST_CONTROL_H

#include "proto.h"

#include <stdbool.h>
#include <stdint.h>

/* What this agent announces in HELLO's CAPABILITIES. */
#define AGENT_CAPABILITIES                                                                         \
	(ROOST_CAP_FREEZE | ROOST_CAP_CALL | ROOST_CAP_NET | ROOST_CAP_LAYERS | ROOST_CAP_P9_RELAY)

/* The current session (one per HELLO). */
struct session {
	bool established; /* a HELLO with a VERSION this agent speaks was received */
	uint32_t flags;   /* its FLAGS */
};
extern struct session session;

/* Acts on one complete frame from the host. */
void handle_frame(const struct roost_frame *f);

#endif
