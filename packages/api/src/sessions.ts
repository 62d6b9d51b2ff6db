import { z } from 'zod';

/*
 * Client sessions of the daemon: how a sandbox that is not detached ends
 * with the client that made it. A client opens a session (POST
 * /v1/sessions: a response the daemon holds open, a line every keepalive)
 * and sends its id in the `Roost-Session` header of each create (or fork)
 * whose sandboxes are not detached. When the session's connection ends (the
 * client closed it, exited or was killed) the daemon waits `graceMs` for
 * the client to resume it (POST /v1/sessions with the header), then ends
 * its sandboxes as the embedded runtime ends its own when it closes: killed
 * (kept, stopped), or removed when created with `autoRemove`.
 */

/** The request header that names the client's session (HTTP headers are case-insensitive). */
export const SESSION_HEADER = 'Roost-Session';

/** How a session id looks: 32 lowercase hex digits (128 random bits). */
export const SESSION_ID_PATTERN = /^[0-9a-f]{32}$/;

/** Default of how long the daemon waits for a client to resume its session before ending its sandboxes. */
export const DEFAULT_SESSION_GRACE_MS = 5_000;

/** Default interval of the session stream's keepalive lines. */
export const DEFAULT_SESSION_KEEPALIVE_MS = 15_000;

/** Each line of a session stream: the first names the session; the same line repeats as the keepalive. */
export const SessionSchema = z
  .object({
    /** The session id, for the `Roost-Session` header. */
    id: z.string().regex(SESSION_ID_PATTERN),
    /** How long after the stream ends the daemon waits for a resume before ending the session's sandboxes (ms). */
    graceMs: z.number().int().nonnegative(),
    /** The interval of keepalive lines (ms). */
    keepaliveMs: z.number().int().positive(),
  })
  .meta({ id: 'Session' });
export type Session = z.infer<typeof SessionSchema>;
