/*
 * JSON Schemas as the faces publish them (the OpenAPI document, the MCP
 * tools' schemas), from what zod's toJSONSchema makes.
 */

/**
 * The `format` values zod gives `startsWith`, `endsWith` and `includes`
 * strings: they are not JSON Schema formats (validators that check formats
 * refuse or warn about unknown ones), and the `pattern` beside them already
 * says the same.
 */
const ZOD_ONLY_FORMATS = new Set(['starts_with', 'ends_with', 'includes']);

/** Removes, in place and at every depth, the `format`s only zod knows (the `pattern` beside each stays); returns `schema`. */
export function withStandardFormats<T>(schema: T): T {
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) return v.forEach(visit);
    if (v === null || typeof v !== 'object') return;
    const o = v as Record<string, unknown>;
    if (typeof o.format === 'string' && ZOD_ONLY_FORMATS.has(o.format) && typeof o.pattern === 'string') delete o.format;
    for (const child of Object.values(o)) visit(child);
  };
  visit(schema);
  return schema;
}
