import { z } from 'zod';

/*
 * Names of the things users name (snapshots, templates, volumes). Where a
 * name and an id are both accepted (`roost snapshots rm NAME|ID`,
 * `create({ snapshot })`), a name that looked like an id would shadow it,
 * or be shadowed: so a name may not look like one. The one rule, for every
 * named thing.
 */

/** The forms of Roost's ids: 12 lowercase hex digits (sandboxes, snapshots), or 64 (image ids). */
export const ID_LIKE_RE = /^(?:[0-9a-f]{12}|[0-9a-f]{64})$/;

/** Matches a name that is not id-like (for a second `.regex` of a name schema, so the OpenAPI pattern says it too). */
export const NOT_ID_LIKE_RE = /^(?![0-9a-f]{12}$)(?![0-9a-f]{64}$)/;

/** True when `name` has the form of an id (and so cannot be a name). */
export function looksLikeId(name: string): boolean {
  return ID_LIKE_RE.test(name);
}

/** The shape of names: 1-128 letters, digits, `_`, `.` and `-`, starting with a letter or digit. */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** The schema of a name of `what` ("snapshot and template", "volume"): its shape, and not the form of an id. */
export function nameSchema(what: string): z.ZodString {
  return z
    .string()
    .regex(NAME_RE, `${what} names are 1-128 characters of letters, digits, "_", "." and "-", starting with a letter or digit`)
    .regex(NOT_ID_LIKE_RE, `${what} names may not look like ids (12 or 64 lowercase hex digits): an id would mean another thing; add a letter outside a-f`);
}
