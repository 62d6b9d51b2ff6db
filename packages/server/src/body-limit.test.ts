import { MAX_JSON_BODY, RoostError } from '@roost/api';
import { describe, expect, it } from 'vitest';
import { createApp } from './app.js';
import type { DaemonRuntime } from './daemon-runtime.js';
import { openapiDocument } from './openapi.js';

// The limit answers before any route reaches the runtime, so none is needed
// but a lookup that finds no sandbox (what a streamed upload reaches).
const runtime = {
  home: '/nonexistent',
  get: (id: string) => {
    throw new RoostError('NOT_FOUND', `no sandbox ${id}`);
  },
};
const app = createApp({ runtime: runtime as unknown as DaemonRuntime, token: null, version: 'test' });
const big = JSON.stringify({ env: { A: 'x'.repeat(MAX_JSON_BODY) } });

describe('a JSON body over the limit', () => {
  for (const [method, path] of [
    ['POST', '/v1/sandboxes'],
    ['POST', '/v1/volumes'],
    ['POST', '/v1/sandboxes/0123456789ab/exec'],
    ['POST', '/v1/sandboxes/0123456789ab/snapshot'],
    ['POST', '/v1/templates'],
  ] as const) {
    it(`${method} ${path} is 413 naming the limit and the streamed routes`, async () => {
      const res = await app.request(path, { method, body: big, headers: { 'content-type': 'application/json' } });
      expect(res.status).toBe(413);
      const body = (await res.json()) as { error: { code: string; message: string; details: { maxBytes: number } } };
      expect(body.error.code).toBe('INVALID_ARGUMENT');
      expect(body.error.message).toMatch(/limit of 1048576 bytes/);
      expect(body.error.message).toMatch(/files\/content/);
      expect(body.error.details.maxBytes).toBe(MAX_JSON_BODY);
      // The document says so.
      const op = (openapiDocument().paths as Record<string, Record<string, { responses: Record<string, unknown> }>>)[path.replace('0123456789ab', '{id}')]?.[
        method.toLowerCase()
      ];
      expect(op?.responses['413']).toEqual({ $ref: '#/components/responses/PayloadTooLarge' });
    });
  }

  it('does not bound the streamed uploads (a file upload is not refused by the JSON limit)', async () => {
    const res = await app.request('/v1/sandboxes/0123456789ab/files/content?path=/x', { method: 'PUT', body: big });
    // Past the limit, to the route: the lookup's answer, not a 413.
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('NOT_FOUND');
  });
});
