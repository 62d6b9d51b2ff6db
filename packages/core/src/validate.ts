import type { z } from 'zod';
import { RoostError } from './errors.js';

/**
 * Validates options with a zod schema; on failure throws INVALID_ARGUMENT
 * naming every offending field (`memoryMiB: must be at least 64`).
 */
export function parseOptions<T extends z.ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => {
    const field = i.path.length > 0 ? i.path.join('.') : i.code === 'unrecognized_keys' ? (i as { keys: string[] }).keys.join(', ') : what;
    return `${field}: ${i.message}`;
  });
  throw new RoostError('INVALID_ARGUMENT', `invalid ${what}: ${problems.join('; ')}`, {
    details: { fields: r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) },
  });
}
