import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * The Roost home: caches (kernel, agent, root filesystems) and one directory
 * per sandbox. `$ROOST_HOME`, else `~/.roost`.
 */
export function roostHome(explicit?: string): string {
  return resolve(explicit ?? process.env.ROOST_HOME ?? join(homedir(), '.roost'));
}

/** Paths under one Roost home. */
export class HomeLayout {
  constructor(readonly root: string) {}
  get cache(): string {
    return join(this.root, 'cache');
  }
  get sandboxes(): string {
    return join(this.root, 'sandboxes');
  }
  sandbox(id: string): string {
    return join(this.sandboxes, id);
  }
  get snapshots(): string {
    return join(this.root, 'snapshots');
  }
  /** The actors' database: modules, actors, state versions, mailboxes (docs/actors.md). */
  get actorsDb(): string {
    return join(this.root, 'actors.db');
  }
  /** A snapshot's files: memory, state, disk.qcow2, manifest.json. */
  snapshot(id: string): string {
    return join(this.snapshots, id);
  }
}
