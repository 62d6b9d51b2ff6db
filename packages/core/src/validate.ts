import { totalmem } from 'node:os';
import { CreateOptionsSchema, parseInput } from '@roost/api';
import { z } from 'zod';

/** Validates a call's input with its schema (INVALID_ARGUMENT naming every offending field): the contract's parseInput. */
export const parseOptions = parseInput;

/**
 * `Sandbox.create` options: the contract's create schema, with the static
 * helper's `home`, and memory checked against this host's RAM (a limit the
 * contract cannot know).
 */
export const sandboxOptionsSchema = CreateOptionsSchema.extend({
  /** Roost home (default $ROOST_HOME or ~/.roost); only for the static `Sandbox.create`. */
  home: z.string().min(1).optional(),
})
  .strict()
  .superRefine((opts, ctx) => {
    const hostMiB = Math.floor(totalmem() / 2 ** 20);
    if (opts.memoryMiB !== undefined && opts.memoryMiB > hostMiB) {
      ctx.addIssue({
        code: 'custom',
        input: opts.memoryMiB,
        path: ['memoryMiB'],
        message: `Too big: expected number to be <=${hostMiB} (this host's memory in MiB)`,
      });
    }
  });
