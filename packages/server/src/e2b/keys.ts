import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RoostError } from '@roost/api';

/*
 * E2B API keys, issued and revoked by Roost (`roost e2b key create|ls|rm`):
 * `e2b_` and 40 hex digits, as E2B's SDK expects them. Only their SHA-256
 * is kept, in `<home>/e2b-keys.json` (mode 0600), so a copy of the home
 * gives no key away. The daemon reads the file on each check (it is small),
 * so a key made or revoked by the CLI counts at once.
 */

/** The file the keys' hashes live in. */
export const E2B_KEYS_FILE = 'e2b-keys.json';

/** One issued key, as listed (never the key itself). */
export interface E2bKeyInfo {
  /** Its id: the first 8 hex digits of its hash. */
  id: string;
  name: string;
  createdAt: string;
}

interface StoredKey extends E2bKeyInfo {
  /** SHA-256 of the key, hex. */
  hash: string;
}

const KEY_PATTERN = /^e2b_[0-9a-f]{40}$/;

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The E2B keys of one Roost home. Concurrency: each call reads and writes the whole file; a write replaces it atomically. */
export class E2bKeys {
  readonly path: string;

  constructor(home: string) {
    this.path = join(home, E2B_KEYS_FILE);
  }

  #read(): StoredKey[] {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const parsed = JSON.parse(text) as { keys?: StoredKey[] };
    return Array.isArray(parsed.keys) ? parsed.keys : [];
  }

  #write(keys: StoredKey[]): void {
    const tmp = `${this.path}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ keys }, null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, this.path);
  }

  /** Issues a key named `name`; the key is returned once, and only its hash is kept. */
  create(name: string): { key: string; info: E2bKeyInfo } {
    const key = `e2b_${randomBytes(20).toString('hex')}`;
    const hash = sha256(key);
    const info: E2bKeyInfo = { id: hash.slice(0, 8), name, createdAt: new Date().toISOString() };
    this.#write([...this.#read(), { ...info, hash }]);
    return { key, info };
  }

  /** The issued keys (without their hashes). */
  list(): E2bKeyInfo[] {
    return this.#read().map(({ id, name, createdAt }) => ({ id, name, createdAt }));
  }

  /** Revokes a key by id (or name); NOT_FOUND when none matches. */
  remove(idOrName: string): E2bKeyInfo {
    const keys = this.#read();
    const i = keys.findIndex((k) => k.id === idOrName || k.name === idOrName);
    if (i < 0) throw new RoostError('NOT_FOUND', `no E2B key ${idOrName} (see \`roost e2b key ls\`)`);
    const [gone] = keys.splice(i, 1);
    this.#write(keys);
    return { id: gone!.id, name: gone!.name, createdAt: gone!.createdAt };
  }

  /** True when `key` is an issued key (compared by hash, in constant time). */
  verify(key: string | undefined | null): boolean {
    if (!key || !KEY_PATTERN.test(key)) return false;
    const wanted = Buffer.from(sha256(key), 'hex');
    let ok = false;
    for (const k of this.#read()) {
      const have = Buffer.from(k.hash, 'hex');
      if (have.length === wanted.length && timingSafeEqual(have, wanted)) ok = true;
    }
    return ok;
  }
}
