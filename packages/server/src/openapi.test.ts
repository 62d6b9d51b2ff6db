import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createApp } from './app.js';
import { e2bFaceOf } from './e2b/index.js';
import type { DaemonRuntime } from './daemon-runtime.js';
import { openapiDocument, openapiJson, ROUTES } from './openapi.js';

const committed = fileURLToPath(new URL('../../../docs/openapi.json', import.meta.url));

describe('the OpenAPI document', () => {
  it('is the committed docs/openapi.json (regenerate: node packages/server/dist/write-openapi.js)', () => {
    expect(readFileSync(committed, 'utf8')).toBe(openapiJson());
  });

  it('describes exactly the routes the app serves', () => {
    // Registering routes touches no runtime: none is needed to list them.
    const app = createApp({ runtime: {} as DaemonRuntime, token: 't'.repeat(32), version: 'test' });
    const served = app.routes
      // E2B's face speaks E2B's API (its own specification, docs/e2b-wire.md), not Roost's.
      .filter((r) => r.method !== 'ALL' && e2bFaceOf(r.path.replace(/:([A-Za-z]+)/g, 'x')) === null)
      .map((r) => `${r.method} ${r.path.replace(/:([A-Za-z]+)/g, '{$1}')}`)
      .sort();
    const documented = ROUTES.map((r) => `${r.method.toUpperCase()} ${r.path}`).sort();
    expect(served).toEqual(documented);
  });

  it('is OpenAPI 3.1 with components for every $ref and an error response on every operation', () => {
    const doc = openapiDocument() as {
      openapi: string;
      paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
      components: { schemas: Record<string, unknown>; responses: Record<string, unknown> };
    };
    expect(doc.openapi).toBe('3.1.0');
    const text = JSON.stringify(doc);
    for (const [, kind, name] of text.matchAll(/"#\/components\/(schemas|responses)\/([^"]+)"/g)) {
      expect(doc.components[kind as 'schemas' | 'responses'][name!], `${kind}/${name}`).toBeDefined();
    }
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item)) {
        expect(Object.keys(op.responses), `${method} ${path}`).toEqual(expect.arrayContaining(['401', '503', 'default']));
      }
    }
  });
});
