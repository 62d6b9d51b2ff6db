import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import wabtInit from 'wabt';
import { MAX_ACTOR_MESSAGE_BYTES, type ActorMessageRecord } from '@roost/api';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient } from './api-client.js';
import { exampleModule, text, watModule } from './actor-modules.js';
import { expectCode, TestHome } from './helpers.js';

/*
 * Actors over the daemon's REST face, through @roost/client (and raw HTTP
 * for the 413s and SSE): the same behaviour as the embedded runtime.actors
 * (test/actors.test.ts). No VM.
 */

const home = new TestHome();
let daemon: ServeHandle;
let client: RoostClient;
let api: ApiClient;

beforeAll(async () => {
  daemon = await serve({ home: home.root, limits: { sseHeartbeatMs: 200 } });
  client = new RoostClient({ host: `unix://${daemon.socketPath}`, token: daemon.token, home: home.root });
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
});

afterAll(async () => {
  await client?.close();
  api?.close();
  await daemon?.close();
  await home.cleanup();
});

/** A valid module (a `handle` that returns 0) with a data segment of `bytes` bytes. */
async function bigModule(bytes: number): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const pages = Math.ceil(bytes / 65536) + 1;
  const wat = `(module (memory (export "memory") ${pages}) (data (i32.const 0) "${'a'.repeat(bytes)}") (func (export "handle") (param i32) (result i32) (i32.const 0)))`;
  const parsed = wabt.parseWat('big.wat', wat);
  try {
    return new Uint8Array(parsed.toBinary({}).buffer);
  } finally {
    parsed.destroy();
  }
}

interface RawSse {
  status: number;
  contentType: string;
  events: { id?: string; event?: string; data: string }[];
}

/** GET with Accept: text/event-stream over the daemon's socket, reading `count` events (comments skipped), then dropping the connection. */
function rawSse(path: string, count: number, headers: Record<string, string> = {}): Promise<RawSse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { socketPath: daemon.socketPath, path, method: 'GET', headers: { authorization: `Bearer ${daemon.token}`, accept: 'text/event-stream', ...headers } },
      (res: IncomingMessage) => {
        const out: RawSse = { status: res.statusCode!, contentType: String(res.headers['content-type']), events: [] };
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          let end: number;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const ev: RawSse['events'][number] = { data: '' };
            const data: string[] = [];
            for (const l of block.split('\n')) {
              if (l.startsWith('id:')) ev.id = l.slice(3).trim();
              else if (l.startsWith('event:')) ev.event = l.slice(6).trim();
              else if (l.startsWith('data:')) data.push(l.slice(5).trimStart());
            }
            if (data.length === 0) continue;
            ev.data = data.join('\n');
            out.events.push(ev);
            if (out.events.length === count) {
              req.destroy();
              resolve(out);
            }
          }
        });
        res.on('end', () => resolve(out));
        res.on('error', () => {});
      },
    );
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`${path}: no ${count} events within 10 s`)));
    req.end();
  });
}

describe('actors over REST (@roost/client)', () => {
  let counter: string;
  let digest: string;

  it('deploys the counter, creates an actor and calls it: replies 1, 2, 3; state, versions and a snapshot say so', async () => {
    const mod = await client.actors.deploy(exampleModule('counter'));
    expect(mod.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    digest = mod.digest;
    expect((await client.actors.deploy(exampleModule('counter'))).digest).toBe(digest);
    expect((await client.actors.modules()).map((m) => m.digest)).toContain(digest);

    const a = await client.actors.create({ name: 'counter-1', module: digest });
    counter = a.id;
    expect(a).toMatchObject({ name: 'counter-1', version: 0, handled: 0 });
    for (const n of [1, 2, 3]) {
      const r = await client.actors.call('counter-1', 'tick');
      expect(r.reply).toBeInstanceOf(Uint8Array);
      expect(text(r.reply)).toBe(String(n));
      expect(r.version).toBe(n);
    }
    expect(await client.actors.get(counter.slice(0, 6))).toMatchObject({ id: counter, version: 3, handled: 3, failed: 0 });
    expect((await client.actors.list()).map((x) => x.id)).toContain(counter);
    expect((await client.actors.state(counter)).entries).toEqual([{ key: 'count', value: '3' }]);
    expect((await client.actors.state(counter, { version: 1 })).entries).toEqual([{ key: 'count', value: '1' }]);
    expect((await client.actors.versions(counter)).map((v) => v.version)).toEqual([0, 1, 2, 3]);
    expect(await client.actors.snapshot(counter)).toMatchObject({ version: 3, pinned: true });

    // The answers match docs/openapi.json.
    expect((await api.get(`/v1/actors/${counter}`)).status).toBe(200);
    expect((await api.get(`/v1/actors/${counter}/state?version=2`)).body).toMatchObject({ version: 2 });
    const created = await api.post('/v1/actors', { module: digest, init: 'hello' });
    expect(created.status).toBe(201);
    expect(created.headers.location).toBe(`/v1/actors/${(created.body as { id: string }).id}`);
    const called = await api.request('POST', `/v1/actors/${counter}/call?timeoutMs=5000`, { raw: 'x', headers: { 'content-type': 'text/plain' } });
    expect(called).toMatchObject({ status: 200, body: { reply: '4', version: 4 } });
  });

  it('sends (202, durable) and follows the message stream until the record arrives', async () => {
    const last: ActorMessageRecord[] = [];
    for await (const r of client.actors.messages(counter, { limit: 1 })) last.push(r);
    expect(last.length).toBe(1);
    const ac = new AbortController();
    const seen: ActorMessageRecord[] = [];
    let sent = -1;
    // From the last record seen: nothing handled in between is missed, however late the stream opens.
    const reading = (async () => {
      for await (const r of client.actors.messages(counter, { follow: true, after: last[0]!.seq, signal: ac.signal })) {
        seen.push(r);
        if (r.seq === sent) ac.abort();
      }
    })();
    const s = await client.actors.send(counter, new Uint8Array([0x74, 0x69, 0x63, 0x6b]));
    sent = s.seq;
    expect(s.seq).toBeGreaterThan(0);
    await reading;
    // A send has no reply port: its record has no reply.
    expect(seen).toEqual([expect.objectContaining({ seq: s.seq, ok: true, version: 5, replySize: null, kind: 'message', from: null })]);

    // The history: oldest first, `after` and `limit` as the embedded runtime reads them.
    const all: ActorMessageRecord[] = [];
    for await (const r of client.actors.messages(counter)) all.push(r);
    expect(all.map((r) => [r.version, r.reply])).toEqual([
      [1, '1'],
      [2, '2'],
      [3, '3'],
      [4, '4'],
      [5, undefined],
    ]);
    const after: ActorMessageRecord[] = [];
    for await (const r of client.actors.messages(counter, { after: all[2]!.seq, limit: 1 })) after.push(r);
    expect(after.map((r) => r.reply)).toEqual(['4']);
    const raw = await api.get(`/v1/actors/${counter}/messages?limit=2`);
    expect(raw.headers['content-type']).toMatch(/^application\/x-ndjson/);
    expect(raw.text.trim().split('\n').length).toBe(2);
  });

  it('serves the stream as SSE with id: <seq> on each record, and resumes after Last-Event-ID', async () => {
    const first = await rawSse(`/v1/actors/${counter}/messages`, 5);
    expect(first.status).toBe(200);
    expect(first.contentType).toMatch(/^text\/event-stream/);
    const seqs = first.events.map((e) => (JSON.parse(e.data) as ActorMessageRecord).seq);
    expect(first.events.map((e) => e.id)).toEqual(seqs.map(String));
    expect(first.events.every((e) => e.event === 'message')).toBe(true);

    // A reconnect with Last-Event-ID gets what came after, then follows.
    const resumed = rawSse(`/v1/actors/${counter}/messages?follow=true`, 3, { 'last-event-id': String(seqs[2]) });
    const later = await client.actors.send(counter, 'tick');
    const r = await resumed;
    expect(r.events.map((e) => Number(e.id))).toEqual([seqs[3], seqs[4], later.seq]);
    expect(JSON.parse(r.events[2]!.data)).toMatchObject({ seq: later.seq, version: 6 });
  });

  it("gives a handler's failure as the ACTOR error with its reason, and NOT_FOUND for what is not there", async () => {
    const probe = await client.actors.deploy(watModule('probe'));
    const p = await client.actors.create({ module: probe.digest, limits: { fuel: 1_000_000 } });
    const returned = await expectCode(client.actors.call(p.id, 'r'), 'ACTOR', /returned 7/);
    expect((returned as unknown as { details: Record<string, unknown> }).details).toMatchObject({ reason: 'returned' });
    const fuel = await expectCode(client.actors.call(p.id, 'l'), 'ACTOR', /out of fuel/);
    expect((fuel as unknown as { details: Record<string, unknown> }).details).toMatchObject({ reason: 'out_of_fuel' });
    const wire = await api.request('POST', `/v1/actors/${p.id}/call`, { raw: 'r' });
    expect(wire).toMatchObject({ status: 422, body: { error: { code: 'ACTOR', details: { reason: 'returned' } } } });
    // Replies that are not UTF-8 come back as the same bytes.
    const bytes = new Uint8Array([0x78, 0xff, 0x00, 0xfe]);
    expect(Buffer.from((await client.actors.call(p.id, bytes)).reply!).equals(Buffer.from(bytes))).toBe(true);
    expect((await api.request('POST', `/v1/actors/${p.id}/call`, { raw: Buffer.from(bytes) })).body).toMatchObject({ replyBase64: 'eP8A/g==' });

    await expectCode(client.actors.get('no-such-actor'), 'NOT_FOUND');
    await expectCode(client.actors.call('no-such-actor', 'x'), 'NOT_FOUND');
    await expectCode(client.actors.create({ module: `sha256:${'0'.repeat(64)}` }), 'NOT_FOUND');
    await expectCode(client.actors.removeModule(probe.digest), 'INVALID_STATE');
    await expectCode(client.actors.deploy(Buffer.from('not wasm at all')), 'INVALID_ARGUMENT');
    expect((await api.get('/v1/actors/no-such-actor/messages')).status).toBe(404);
  });

  it('aborts a call when its signal aborts (the daemon sees the client go), and bounds it by timeoutMs', async () => {
    const probe = await client.actors.deploy(watModule('probe'));
    const p = await client.actors.create({ module: probe.digest, limits: { fuel: 1e12, timeoutMs: 1_500 } });
    const started = Date.now();
    await expectCode(client.actors.call(p.id, 'l', { signal: AbortSignal.timeout(200) }), 'TIMEOUT');
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expectCode(client.actors.call(p.id, 'l', { signal: ac.signal }), 'ABORTED');
    // The daemon's own wait: 504 TIMEOUT from the daemon, before the HTTP request's longer one.
    await expectCode(client.actors.call(p.id, 'sx', { timeoutMs: 100 }), 'TIMEOUT', /did not handle/);
    expect(Date.now() - started).toBeLessThan(1_400);
  });

  it('bounds messages by MAX_ACTOR_MESSAGE_BYTES (413 over the wire; INVALID_ARGUMENT from the client without a request)', async () => {
    const big = Buffer.alloc(MAX_ACTOR_MESSAGE_BYTES + 1, 0x61);
    for (const route of ['messages', 'call']) {
      const r = await api.request('POST', `/v1/actors/${counter}/${route}`, { raw: big });
      expect(r.status).toBe(413);
      expect(r.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', details: { maxBytes: MAX_ACTOR_MESSAGE_BYTES } } });
      expect((r.body as { error: { message: string } }).error.message).toMatch(/the message is larger than the limit of 1048576/);
      // Chunked (no Content-Length): refused as it arrives.
      expect((await api.request('POST', `/v1/actors/${counter}/${route}`, { raw: big, chunked: true })).status).toBe(413);
    }
    await expectCode(client.actors.send(counter, big), 'INVALID_ARGUMENT', /over 1048576/);
    // Exactly the limit is a message.
    expect((await client.actors.send(counter, big.subarray(1))).seq).toBeGreaterThan(0);
  });

  it('deploys a module over the JSON body limit (2 MiB of data), over the wire as raw bytes', async () => {
    const mod = await bigModule(2 * 1024 * 1024);
    expect(mod.byteLength).toBeGreaterThan(2 * 1024 * 1024);
    const info = await client.actors.deploy(mod);
    expect(info.size).toBe(mod.byteLength);
    const a = await client.actors.create({ module: info.digest });
    expect((await client.actors.call(a.id, 'x')).reply).toBeNull();
    const wrongType = await api.request('POST', '/v1/actors/modules', { raw: Buffer.from(mod), headers: { 'content-type': 'application/json' } });
    expect(wrongType.status).toBe(400);
  });

  it('removes an actor (its followers end) and a module no actor uses', async () => {
    const a = await client.actors.create({ module: digest });
    const following = (async () => {
      const got: ActorMessageRecord[] = [];
      for await (const r of client.actors.messages(a.id, { follow: true, after: 0 })) got.push(r);
      return got;
    })();
    await client.actors.call(a.id, 'tick');
    await client.actors.remove(a.id);
    expect((await following).filter((r) => r.kind === 'message').map((r) => r.reply)).toEqual(['1']);
    await expectCode(client.actors.get(a.id), 'NOT_FOUND');

    const mod = await bigModule(16);
    const info = await client.actors.deploy(mod);
    await client.actors.removeModule(info.digest);
    expect((await client.actors.modules()).map((m) => m.digest)).not.toContain(info.digest);
    await expectCode(client.actors.removeModule(info.digest), 'NOT_FOUND');
  });
});
