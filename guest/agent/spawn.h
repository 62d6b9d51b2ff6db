/*
 * EXEC and CALL requests: decoding and checking them, resolving the user,
 * setting up pipes or a PTY, and starting the child (vfork + execve for a
 * command, fork + fop_run for a call) chrooted into the command root with
 * the user's ids. The started process becomes a stream (exec.c).
 */
#ifndef ROOST_SPAWN_H
#define ROOST_SPAWN_H

#include <stdbool.h>
#include <stdint.h>

/* EXEC (is_call false) or CALL on `stream`: answers STARTED, or an ERROR. */
void handle_exec(uint32_t stream, const uint8_t *p, uint32_t len, bool is_call);

#endif
