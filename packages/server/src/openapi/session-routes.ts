import { SessionSchema } from '@roost/api';
import { z } from 'zod';
import { sessionHeaderParam, type Route } from './route.js';

/*
 * The routes of client sessions: what a sandbox that is not detached
 * belongs to (see @roost/api's sessions.ts).
 */

/** Session routes, in the order the document lists them. */
export const SESSION_ROUTES: readonly Route[] = [
  {
    method: 'post',
    path: '/v1/sessions',
    operationId: 'openSession',
    tag: 'sessions',
    summary: "Open (or resume) a client's session: the owner of the sandboxes it creates that are not detached",
    description:
      'The response stays open: a JSON line naming the session first, then the same line every `keepaliveMs`. Send the id in the `Roost-Session` header of each create (or fork) ' +
      'whose sandboxes are not detached. When the stream ends (the client closed it, exited or was killed) the daemon waits `graceMs` for a resume ' +
      '(this request with the `Roost-Session` header), then ends the sandboxes the session owns: killed and kept stopped, or removed when created with `autoRemove`. ' +
      'Detached sandboxes never belong to a session. Resuming a session that has ended is 404.',
    params: [{ ...sessionHeaderParam, description: 'Resume this session instead of opening a new one.' }],
    body: { schema: z.object({}).strict(), required: false },
    ok: { 200: { description: 'The session stream.', bodies: [{ ndjson: SessionSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'delete',
    path: '/v1/sessions/{session}',
    operationId: 'endSession',
    tag: 'sessions',
    summary: 'End a session now (a client closing cleanly): its sandboxes are ended before the answer',
    params: [{ name: 'session', in: 'path', required: true, description: 'The session id.', schema: { type: 'string', pattern: '^[0-9a-f]{32}$' } }],
    ok: { 204: { description: 'Ended, and so are its sandboxes.', bodies: [{ none: true }] } },
    errors: [400, 404],
  },
];
