import {
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
  RoostError,
  type ActorMessageRecord,
  type ActorMessagesOptions,
  type CreateActorOptions,
} from '@roost/api';
import { describe, expect, it } from 'vitest';
import { createApp } from './app.js';
import type { DaemonRuntime } from './daemon-runtime.js';

// The actor routes over a fake ActorsApi: what reaches it, and how its answers and errors go out.
const calls: { op: string; args: unknown[] }[] = [];
const record = (seq: number): ActorMessageRecord => ({
  seq,
  actor: 'a1',
  kind: 'message',
  from: null,
  size: 1,
  ok: true,
  error: null,
  version: seq,
  ticks: 1,
  replySize: null,
  logs: [],
  at: '2026-01-01T00:00:00.000Z',
});
const actors = {
  deploy: (module: Uint8Array) => (calls.push({ op: 'deploy', args: [module.byteLength] }), Promise.resolve({ digest: 'sha256:x', size: module.byteLength })),
  create: (o: CreateActorOptions) => (calls.push({ op: 'create', args: [o] }), Promise.resolve({ id: '0123456789ab' })),
  get: (actor: string) => {
    if (actor === 'nope') return Promise.reject(new RoostError('NOT_FOUND', `no actor ${actor}`));
    return Promise.resolve({ id: 'a1' });
  },
  send: (actor: string, m: Uint8Array) => (calls.push({ op: 'send', args: [actor, m.byteLength] }), Promise.resolve({ seq: 9 })),
  call: (actor: string, m: Uint8Array, o: { timeoutMs?: number }) => {
    calls.push({ op: 'call', args: [actor, Buffer.from(m).toString(), o.timeoutMs] });
    if (Buffer.from(m).toString() === 'fail') return Promise.reject(new RoostError('ACTOR', 'returned 7', { details: { reason: 'returned' } }));
    const reply = Buffer.from(m).toString() === 'bin' ? new Uint8Array([0xff, 0]) : Buffer.from(m).toString() === 'none' ? null : new Uint8Array(m);
    return Promise.resolve({ seq: 3, version: 2, ticks: 10, reply });
  },
  messages: (actor: string, o: ActorMessagesOptions) => {
    calls.push({ op: 'messages', args: [actor, { after: o.after, follow: o.follow, limit: o.limit }] });
    return (async function* () {
      yield record(5);
      yield record(6);
    })();
  },
};
const app = createApp({ runtime: { home: '/nonexistent', actors } as unknown as DaemonRuntime, token: null, version: 'test' });
const last = () => calls.at(-1)!;
const post = (path: string, body: string | Uint8Array, headers: Record<string, string> = {}) => app.request(path, { method: 'POST', body, headers });

describe('the actor routes', () => {
  it('take a module over the JSON body limit as raw bytes, and refuse one over MAX_ACTOR_MODULE_BYTES with 413', async () => {
    const res = await post('/v1/actors/modules', new Uint8Array(2 * 1024 * 1024), { 'content-type': 'application/wasm' });
    expect(res.status).toBe(201);
    expect(last()).toEqual({ op: 'deploy', args: [2 * 1024 * 1024] });
    const big = await post('/v1/actors/modules', new Uint8Array(MAX_ACTOR_MODULE_BYTES + 1));
    expect(big.status).toBe(413);
    expect(await big.json()).toMatchObject({ error: { code: 'INVALID_ARGUMENT', details: { maxBytes: MAX_ACTOR_MODULE_BYTES } } });
    expect((await post('/v1/actors/modules', '{}', { 'content-type': 'application/json' })).status).toBe(400);
  });

  it('take a message of any type up to MAX_ACTOR_MESSAGE_BYTES (202), 413 past it', async () => {
    const ok = await post('/v1/actors/a1/messages', new Uint8Array(MAX_ACTOR_MESSAGE_BYTES), { 'content-type': 'application/json' });
    expect(ok.status).toBe(202);
    expect(await ok.json()).toEqual({ seq: 9 });
    const big = await post('/v1/actors/a1/messages', new Uint8Array(MAX_ACTOR_MESSAGE_BYTES + 1));
    expect(big.status).toBe(413);
    expect(await big.json()).toMatchObject({
      error: { message: expect.stringMatching(/the message is larger/), details: { maxBytes: MAX_ACTOR_MESSAGE_BYTES } },
    });
  });

  it('answer a call with its reply as text or base64 (or none), the ACTOR error as 422, and check timeoutMs', async () => {
    expect(await (await post('/v1/actors/a1/call?timeoutMs=250', 'hi')).json()).toEqual({ seq: 3, version: 2, ticks: 10, reply: 'hi' });
    expect(last().args).toEqual(['a1', 'hi', 250]);
    expect(await (await post('/v1/actors/a1/call', 'bin')).json()).toEqual({ seq: 3, version: 2, ticks: 10, replyBase64: '/wA=' });
    expect(await (await post('/v1/actors/a1/call', 'none')).json()).toEqual({ seq: 3, version: 2, ticks: 10 });
    const failed = await post('/v1/actors/a1/call', 'fail');
    expect(failed.status).toBe(422);
    expect(await failed.json()).toMatchObject({ error: { code: 'ACTOR', details: { reason: 'returned' } } });
    expect((await post('/v1/actors/a1/call?timeoutMs=0', 'x')).status).toBe(400);
    expect((await post('/v1/actors/a1/call?timeout=5', 'x')).status).toBe(400);
  });

  it('create with init as text or base64, as bytes for the runtime', async () => {
    const json = { 'content-type': 'application/json' };
    const digest = `sha256:${'a'.repeat(64)}`;
    expect((await post('/v1/actors', JSON.stringify({ module: digest, init: 'hé' }), json)).status).toBe(201);
    expect(Buffer.from((last().args[0] as { init: Uint8Array }).init).toString()).toBe('hé');
    await post('/v1/actors', JSON.stringify({ module: digest, initBase64: '/wA=' }), json);
    expect([...(last().args[0] as { init: Uint8Array }).init]).toEqual([0xff, 0]);
    const bad = await post('/v1/actors', JSON.stringify({ module: digest, initBase64: 'no!' }), json);
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ error: { details: { field: 'initBase64' } } });
    expect((await post('/v1/actors', JSON.stringify({ module: digest, colour: 'blue' }), json)).status).toBe(400);
  });

  it('stream records as NDJSON, or SSE with id: <seq>, with Last-Event-ID as `after`', async () => {
    const nd = await app.request('/v1/actors/a1/messages?after=2&limit=5');
    expect(nd.headers.get('content-type')).toBe('application/x-ndjson');
    expect(
      (await nd.text())
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as ActorMessageRecord).seq),
    ).toEqual([5, 6]);
    expect(last().args).toEqual(['a1', { after: 2, follow: false, limit: 5 }]);
    const sse = await app.request('/v1/actors/a1/messages?follow', { headers: { accept: 'text/event-stream', 'last-event-id': '4' } });
    expect(sse.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const text = await sse.text();
    expect([...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]))).toEqual([5, 6]);
    expect(last().args).toEqual(['a1', { after: 4, follow: true, limit: undefined }]);
    expect((await app.request('/v1/actors/a1/messages?follow=maybe')).status).toBe(400);
    expect((await app.request('/v1/actors/nope/messages')).status).toBe(404);
  });
});
