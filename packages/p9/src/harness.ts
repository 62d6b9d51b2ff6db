/**
 * In-process wiring of a client to a server session: for tests, and for
 * code that speaks 9P to a local export without a socket.
 */
import { P9Client } from './client.js';
import { P9Error } from './errors.js';
import type { P9Server } from './server.js';
import type { AttachEnd, Session, SessionOptions } from './session.js';
import { duplexPair } from './streams.js';

/** A client connected to a new session of `server` through an in-memory stream pair. */
export interface Connected {
  client: P9Client;
  session: Session;
  /** Resolves when the session lets go of its stream. */
  ended: Promise<AttachEnd>;
}

/** Connects a client to a new session of `server`, and negotiates `msize` unless it is 0. */
export async function connectInProcess(server: P9Server, msize = 262144, options?: SessionOptions): Promise<Connected> {
  const [serverEnd, clientEnd] = duplexPair();
  const session = server.createSession(options);
  const ended = session.attach(serverEnd);
  const client = new P9Client(clientEnd);
  if (msize > 0) await client.version(msize);
  return { client, session, ended };
}

/** The errno of the Rlerror `p` rejects with (anything else is rethrown; a success is an error). */
export async function errnoOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    if (err instanceof P9Error) return err.errno;
    throw err;
  }
  throw new Error('expected an Rlerror');
}
