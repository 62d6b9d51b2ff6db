import { InvalidArgumentError } from 'commander';
import { RoostError } from '@roost/api';

/** A commander parser for a flag that takes a whole number. */
export function int(flag: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`${flag} takes a whole number, not "${v}"`);
    return n;
  };
}

/** Repeated `NAME=VALUE` flags (`-e`, `-l`) as a record. */
export function parsePairs(pairs: string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new RoostError('INVALID_ARGUMENT', `${flag} ${p}: expected NAME=VALUE`);
    out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}
