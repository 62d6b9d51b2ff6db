import { createHash } from 'node:crypto';

/*
 * Actor ids are derived, as primea's are, from the parent and a nonce: a
 * child's id is a hash of its parent's id and the parent's count of
 * children so far, so a replay creates the same ids. Actors made from
 * outside have the home's root as parent and a nonce from the database.
 * 12 hex digits, the form of Roost's other ids (names may not take it).
 */

export const ACTOR_ID_RE = /^[0-9a-f]{12}$/;

/** The id of the `nonce`-th actor created by `parent` ('' for the home's root). */
export function deriveActorId(parent: string, nonce: number): string {
  return createHash('sha256').update(`roost-actor\0${parent}\0${nonce}`).digest('hex').slice(0, 12);
}

/** `sha256:<hex>` of a module's bytes. */
export function moduleDigest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}
