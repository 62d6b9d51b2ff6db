// PLACEHOLDER: replaced by the h-ids branch at merge.
import type Database from 'better-sqlite3';
export interface JailIdRange {
  start: number;
  count: number;
}
export const DEFAULT_JAIL_IDS: JailIdRange = { start: 2_000_000_000, count: 65536 };
export function parseJailIds(_text: string): JailIdRange {
  return DEFAULT_JAIL_IDS;
}
export function checkJailIdRange(_range: JailIdRange): string[] {
  return [];
}
export class JailIds {
  #next = 0;
  readonly #ids = new Map<string, number>();
  constructor(_db: Database.Database, _home: string, readonly range: JailIdRange, _options?: { claimsDir?: string }) {}
  acquire(sandboxId: string): number {
    let id = this.#ids.get(sandboxId);
    if (id === undefined) this.#ids.set(sandboxId, (id = this.range.start + this.#next++));
    return id;
  }
  release(sandboxId: string): void {
    this.#ids.delete(sandboxId);
  }
  get(sandboxId: string): number | null {
    return this.#ids.get(sandboxId) ?? null;
  }
}
