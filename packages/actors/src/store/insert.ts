import type { ActorGrants, ResolvedActorLimits } from '@roost/api';
import { EMPTY_ROOT, type SqliteNodes } from '../state/index.js';
import type { Statements } from './rows.js';

/** An actor about to be stored: made from outside (create, fork) or by its parent's message. */
export interface NewActor {
  id: string;
  name: string | null;
  parent: string | null;
  module: string;
  grants: ActorGrants;
  limits: ResolvedActorLimits;
  keepVersions: number;
  /** Its first state: a fork's version root (stored already), or the empty state. */
  root?: { hash: Buffer; entries: number; bytes: number };
  /** The actors its refs 1, 2, ... point at. */
  refs: string[];
  /** The init message, when its module exports `init`. */
  init: Uint8Array | null;
}

/**
 * Stores a new actor inside the caller's transaction: its row, version 0
 * (retaining its root), its references and its init message. Returns the
 * init message's seq, or null.
 */
export function insertActor(q: Statements, nodes: SqliteNodes, a: NewActor, at: string): number | null {
  const root = a.root ?? { hash: EMPTY_ROOT, entries: 0, bytes: 0 };
  nodes.retain(root.hash, []);
  q.actorInsert.run({
    id: a.id,
    name: a.name,
    parent: a.parent,
    module: a.module,
    grants_json: JSON.stringify(a.grants),
    limits_json: JSON.stringify(a.limits),
    keep_versions: a.keepVersions,
    created_at: at,
    version: 0,
    root: root.hash,
    state_entries: root.entries,
    state_bytes: root.bytes,
    clock: 0,
    nonce: 0,
  });
  q.versionInsert.run(a.id, 0, root.hash, null, at);
  a.refs.forEach((target, i) => q.refInsert.run(a.id, i + 1, target));
  if (a.init === null) return null;
  return Number(q.mailInsert.run(a.id, 'init', a.parent ?? '', 0, 0, 1, Buffer.from(a.init)).lastInsertRowid);
}
