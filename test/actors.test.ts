import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ActorMessageRecord } from '@roost/api';
import { Runtime } from '@roost/core';
import { exampleModule, text, watModule } from './actor-modules.js';
import { eventually, expectCode, TestHome } from './helpers.js';

// Actors through the embedded runtime: real worker threads, real SQLite, the examples as built. No VM.
const home = new TestHome();
let runtime: Runtime;

beforeAll(async () => {
  runtime = await home.runtime();
});
afterAll(() => home.cleanup());

describe('actors', () => {
  it('counter (AssemblyScript): each message increments count and replies with it; versions, state and history say so', async () => {
    const mod = await runtime.actors.deploy(exampleModule('counter'));
    expect(mod.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(mod.exports).toEqual(expect.arrayContaining(['memory', 'handle']));
    // The same bytes twice: one module.
    expect((await runtime.actors.deploy(exampleModule('counter'))).digest).toBe(mod.digest);

    const a = await runtime.actors.create({ name: 'counter-1', module: mod.digest });
    expect(a.id).toMatch(/^[0-9a-f]{12}$/);
    expect(a.version).toBe(0);
    for (const n of [1, 2, 3]) expect(text((await runtime.actors.call('counter-1', 'tick')).reply)).toBe(String(n));

    const info = await runtime.actors.get('counter-1');
    expect(info).toMatchObject({ version: 3, handled: 3, failed: 0, mailbox: 0, state: { entries: 1 } });
    expect(info.ticks).toBeGreaterThan(0);
    const state = await runtime.actors.state(a.id);
    expect(state.entries).toEqual([{ key: 'count', value: '3' }]);
    expect(state.root).toBe(info.root);
    const versions = await runtime.actors.versions(a.id);
    expect(versions.map((v) => v.version)).toEqual([0, 1, 2, 3]);
    expect((await runtime.actors.state(a.id, { version: 1 })).entries).toEqual([{ key: 'count', value: '1' }]);

    const history: ActorMessageRecord[] = [];
    for await (const r of runtime.actors.messages(a.id)) history.push(r);
    expect(history.map((r) => [r.ok, r.reply, r.version])).toEqual([
      [true, '1', 1],
      [true, '2', 2],
      [true, '3', 3],
    ]);
  });

  it('is deterministic: the same module and messages give the same replies and state roots', async () => {
    const mod = await runtime.actors.deploy(exampleModule('kv'));
    const roots: string[] = [];
    for (const name of ['kv-a', 'kv-b']) {
      await runtime.actors.create({ name, module: mod.digest });
      const replies: string[] = [];
      for (const m of ['set x 1', 'set y hello world', 'get y', 'del x', 'count', 'get x']) replies.push(text((await runtime.actors.call(name, m)).reply));
      expect(replies).toEqual(['ok', 'ok', 'hello world', '1', '1', 'not found']);
      roots.push((await runtime.actors.get(name)).root);
    }
    expect(roots[0]).toBe(roots[1]);
  });

  it('a message is one transaction: a trap or a non-zero return leaves no state, no sends, and says why', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const sink = await runtime.actors.create({ module: probe.digest });
    const p = await runtime.actors.create({ module: probe.digest, refs: [sink.id] });
    expect(text((await runtime.actors.call(p.id, 'sbefore')).reply)).toBe('before');
    const err = await expectCode(runtime.actors.call(p.id, 'tafter'), 'ACTOR', /trap/);
    expect((err as unknown as { details: Record<string, unknown> }).details).toMatchObject({ reason: 'trap' });
    await expectCode(runtime.actors.call(p.id, 'r'), 'ACTOR', /returned 7/);
    expect((await runtime.actors.state(p.id)).entries).toEqual([{ key: 'k', value: 'before' }]);
    const info = await runtime.actors.get(p.id);
    expect(info).toMatchObject({ version: 1, handled: 3, failed: 2 });
    expect(info.lastError).toMatchObject({ code: 'ACTOR', reason: 'returned' });
    // The trapped message's send never reached the sink.
    expect((await runtime.actors.get(sink.id)).handled).toBe(0);
  });

  it('ends an infinite loop by fuel, and by wall time when the fuel is huge, and keeps serving other actors meanwhile', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const fuel = await runtime.actors.create({ module: probe.digest, limits: { fuel: 1_000_000 } });
    const e1 = await expectCode(runtime.actors.call(fuel.id, 'l'), 'ACTOR', /out of fuel/);
    expect((e1 as unknown as { details: Record<string, unknown> }).details).toMatchObject({ reason: 'out_of_fuel', ticks: 1_000_000 });

    const wall = await runtime.actors.create({ module: probe.digest, limits: { fuel: 1e12, timeoutMs: 300 } });
    const other = await runtime.actors.create({ module: probe.digest });
    const looping = runtime.actors.call(wall.id, 'l');
    // Another actor is served while one loops (the threads are more than one, or the loop ends first).
    expect(text((await runtime.actors.call(other.id, 'hello')).reply)).toBe('hello');
    await expectCode(looping, 'ACTOR', /wall time/);
    expect((await runtime.actors.get(wall.id)).lastError).toMatchObject({ reason: 'timeout' });
    // The actor works afterwards.
    expect(text((await runtime.actors.call(wall.id, 'sstill here')).reply)).toBe('still here');
  });

  it('caps memory at the limit: growing without bound fails that message only', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const a = await runtime.actors.create({ module: probe.digest, limits: { memoryBytes: 4 * 1024 * 1024 } });
    await expectCode(runtime.actors.call(a.id, 'g'), 'ACTOR', /unreachable|trap/);
    expect(text((await runtime.actors.call(a.id, 'sok')).reply)).toBe('ok');
  });

  it('refuses hostile and malformed modules with clear errors', async () => {
    await expectCode(runtime.actors.deploy(watModule('bad-import')), 'INVALID_ARGUMENT', /roost\.open_socket/);
    await expectCode(runtime.actors.deploy(new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 5, 1])), 'INVALID_ARGUMENT');
    await expectCode(runtime.actors.deploy(Buffer.from('not wasm at all')), 'INVALID_ARGUMENT');
    // A data segment outside its memory: deployable, but no instance of it can exist.
    const bad = await runtime.actors.deploy(watModule('bad-data'));
    const a = await runtime.actors.create({ module: bad.digest });
    await expectCode(runtime.actors.call(a.id, 'x'), 'ACTOR', /instantiat/);
    // An import that needs a grant.
    const random = await runtime.actors.deploy(watModule('random'));
    await expectCode(runtime.actors.create({ module: random.digest }), 'INVALID_ARGUMENT', /grant.*random/);
    const r = await runtime.actors.create({ module: random.digest, grants: { random: true } });
    const one = (await runtime.actors.call(r.id, 'x')).reply!;
    expect(one.length).toBe(16);
    expect(Buffer.from((await runtime.actors.call(r.id, 'x')).reply!).equals(Buffer.from(one))).toBe(false);
  });

  it('checks create options as the contract says, embedded as over REST', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    await expectCode(runtime.actors.create({ name: 'modules', module: probe.digest }), 'INVALID_ARGUMENT', /modules/);
    await expectCode(runtime.actors.create({ name: 'bad name!', module: probe.digest }), 'INVALID_ARGUMENT', /name/);
    await expectCode(runtime.actors.create({ module: probe.digest, limits: { fuel: 1 } }), 'INVALID_ARGUMENT', /fuel/);
    await expectCode(runtime.actors.create({ module: probe.digest, from: { actor: 'x' } }), 'INVALID_ARGUMENT', /module and from/);
    await expectCode(runtime.actors.create({ module: `sha256:${'0'.repeat(64)}` }), 'NOT_FOUND', /deploy it first/);
  });

  it('a failed init fails the create and leaves no actor', async () => {
    const mod = await runtime.actors.deploy(watModule('init-fails'));
    const before = (await runtime.actors.list()).length;
    await expectCode(runtime.actors.create({ name: 'never', module: mod.digest }), 'ACTOR', /returned 3/);
    expect((await runtime.actors.list()).length).toBe(before);
    await expectCode(runtime.actors.get('never'), 'NOT_FOUND');
  });

  it('a full mailbox refuses sends from outside (RESOURCE_EXHAUSTED) and takes them again once drained', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const a = await runtime.actors.create({ module: probe.digest, limits: { mailbox: 20 } });
    const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => runtime.actors.send(a.id, `s${i}`)));
    const refused = results.filter((r) => r.status === 'rejected');
    expect(refused.length).toBeGreaterThan(0);
    expect((refused[0] as PromiseRejectedResult).reason).toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    const accepted = results.length - refused.length;
    await eventually(async () => (await runtime.actors.get(a.id)).handled === accepted, 10_000, 'the accepted messages handled');
    expect(text((await runtime.actors.call(a.id, 'again')).reply)).toBe('again');
  });

  it('pingpong (AssemblyScript): a pair of actors messaging each other, one made by the other with create', async () => {
    const mod = await runtime.actors.deploy(exampleModule('pingpong'));
    const a = await runtime.actors.create({ module: mod.digest });
    const b = await runtime.actors.create({ module: mod.digest, refs: [a.id] });
    await runtime.actors.send(b.id, 'start 50');
    await eventually(async () => text((await runtime.actors.call(b.id, 'pongs')).reply) === '50', 10_000, '50 pongs');
    expect((await runtime.actors.get(a.id)).refs.map((r) => r.actor)).toContain(b.id);

    const ref = text((await runtime.actors.call(a.id, `spawn ${mod.digest}`)).reply);
    expect(Number(ref)).toBeGreaterThan(0);
    const child = (await runtime.actors.list()).find((x) => x.parent === a.id)!;
    expect(child.refs[0]).toEqual({ ref: 1, actor: a.id });
    await runtime.actors.send(a.id, 'start-child 10');
    await eventually(async () => text((await runtime.actors.call(a.id, 'pongs')).reply) === '10', 10_000, '10 pongs with the child');
  });

  it('timers are durable: one set before a close fires after the reopen', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const a = await runtime.actors.create({ name: 'timed', module: probe.digest });
    await runtime.actors.call(a.id, 'mstimer-fired');
    await home.release();
    runtime = await home.runtime();
    await eventually(async () => (await runtime.actors.state('timed')).entries[0]?.value === 'timer-fired', 10_000, 'the timer message');
    const last = [];
    for await (const r of runtime.actors.messages('timed', { limit: 1 })) last.push(r);
    expect(last[0]).toMatchObject({ kind: 'timer', ok: true, from: null });
    // Counter state survived the close too.
    expect(text((await runtime.actors.call('counter-1', 'tick')).reply)).toBe('4');
  });

  it('forks from a version and pins snapshots; prunes old versions by policy', async () => {
    const mod = await runtime.actors.deploy(exampleModule('counter'));
    const a = await runtime.actors.create({ module: mod.digest, keepVersions: 3 });
    for (let i = 0; i < 5; i++) await runtime.actors.call(a.id, 'x');
    const snap = await runtime.actors.snapshot(a.id);
    expect(snap).toMatchObject({ version: 5, pinned: true });
    for (let i = 0; i < 5; i++) await runtime.actors.call(a.id, 'x');
    const versions = (await runtime.actors.versions(a.id)).map((v) => v.version);
    expect(versions).toContain(5);
    expect(versions.filter((v) => v !== 5).length).toBeLessThanOrEqual(3);
    const fork = await runtime.actors.create({ from: { actor: a.id, version: 5 } });
    expect((await runtime.actors.get(fork.id)).root).toBe(snap.root);
    expect(text((await runtime.actors.call(fork.id, 'x')).reply)).toBe('6');
    expect(text((await runtime.actors.call(a.id, 'x')).reply)).toBe('11');
  });

  it('follows the message stream and records events for created, trapped and removed', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const a = await runtime.actors.create({ module: probe.digest });
    const ac = new AbortController();
    const seen: ActorMessageRecord[] = [];
    const reading = (async () => {
      for await (const r of runtime.actors.messages(a.id, { follow: true, signal: ac.signal })) {
        seen.push(r);
        if (seen.length === 3) ac.abort();
      }
    })();
    await runtime.actors.send(a.id, 'one');
    await runtime.actors.call(a.id, 'r').catch(() => {});
    await runtime.actors.send(a.id, 'xthree');
    await reading;
    expect(seen.map((r) => r.ok)).toEqual([true, false, true]);
    await runtime.actors.remove(a.id);
    await expectCode(runtime.actors.get(a.id), 'NOT_FOUND');
    const types = [];
    for await (const e of runtime.events({ after: 0, signal: AbortSignal.timeout(500) })) if (e.data.actor === a.id) types.push(e.type);
    expect(types).toEqual(['actor.created', 'actor.trapped', 'actor.removed']);
  });

  it('fetch goes through the egress policy of its grant: the host only by a host rule, other names only when allowed', async () => {
    // /hang answers only after 1.5 s: past the wall time of the actor that asks.
    const server: Server = createServer((req, res) => {
      if (req.url === '/hang') setTimeout(() => res.end('too late'), 1500);
      else res.end(`hello from ${req.url}`);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      const mod = await runtime.actors.deploy(watModule('fetch'));
      await expectCode(runtime.actors.create({ module: mod.digest }), 'INVALID_ARGUMENT', /fetch/);
      const req = JSON.stringify({ url: `http://127.0.0.1:${port}/x` });
      const open = await runtime.actors.create({ module: mod.digest, grants: { fetch: { default: 'deny', allow: ['host'] } } });
      const res = JSON.parse(text((await runtime.actors.call(open.id, req)).reply)) as { status: number; body: string };
      expect(res).toMatchObject({ status: 200, body: 'hello from /x' });
      // `allow` everything still does not reach the host (it is special), nor a name the policy does not list.
      const wide = await runtime.actors.create({ module: mod.digest, grants: { fetch: 'allow' } });
      await expectCode(runtime.actors.call(wide.id, req), 'ACTOR', /returned 106/);
      const named = await runtime.actors.create({ module: mod.digest, grants: { fetch: { default: 'deny', allow: ['example.com'] } } });
      await expectCode(runtime.actors.call(named.id, JSON.stringify({ url: 'http://other.invalid/' })), 'ACTOR', /returned 106/);
      await expectCode(runtime.actors.call(named.id, JSON.stringify({ url: 'file:///etc/passwd' })), 'ACTOR', /returned 105/);
      // A fetch that outlives the message's wall time fails that message; its late answer reaches no later one.
      const hasty = await runtime.actors.create({ module: mod.digest, grants: { fetch: { default: 'deny', allow: ['host'] } }, limits: { timeoutMs: 300 } });
      await expectCode(runtime.actors.call(hasty.id, JSON.stringify({ url: `http://127.0.0.1:${port}/hang` })), 'ACTOR', /wall time|returned 105/);
      await new Promise((r) => setTimeout(r, 1500));
      const after = JSON.parse(text((await runtime.actors.call(hasty.id, req)).reply)) as { body: string };
      expect(after.body).toBe('hello from /x');
    } finally {
      server.close();
    }
  });

  it('a follower from an old seq gets every record after it (more than a page), then the live ones', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const a = await runtime.actors.create({ module: probe.digest, limits: { mailbox: 5000 } });
    await Promise.all(Array.from({ length: 900 }, (_, i) => runtime.actors.send(a.id, `e${i}`)));
    await eventually(async () => (await runtime.actors.get(a.id)).handled === 900, 20_000, '900 handled');
    const ac = new AbortController();
    const seqs: number[] = [];
    const reading = (async () => {
      for await (const r of runtime.actors.messages(a.id, { after: 0, follow: true, signal: ac.signal })) {
        seqs.push(r.seq);
        if (seqs.length === 901) ac.abort();
      }
    })();
    await eventually(() => seqs.length === 900, 10_000, 'the backlog');
    await runtime.actors.send(a.id, 'elive');
    await reading;
    expect(new Set(seqs).size).toBe(901);
    expect([...seqs].sort((x, y) => x - y)).toEqual(seqs);
  });

  it('bounds the state: a write over stateBytes gets E_LIMIT and changes nothing; modules too big or too hungry are refused', async () => {
    const probe = await runtime.actors.deploy(watModule('probe'));
    const a = await runtime.actors.create({ module: probe.digest, limits: { stateBytes: 2048 } });
    expect(text((await runtime.actors.call(a.id, 'ssmall')).reply)).toBe('small');
    // The probe ignores state_set's code and replies: the write was refused, the state is as it was.
    await runtime.actors.call(a.id, `s${'x'.repeat(3000)}`);
    expect((await runtime.actors.state(a.id)).entries).toEqual([{ key: 'k', value: 'small' }]);
    expect((await runtime.actors.get(a.id)).state.bytes).toBe(6);

    // A 17 MiB data segment: over the module size limit, refused at deploy.
    await expectCode(runtime.actors.deploy(moduleWithData(17 * 1024 * 1024)), 'INVALID_ARGUMENT', /16777216|limit/);
    // 300 pages of initial memory: over the default limit of 16 MiB, refused at create.
    const hungry = await runtime.actors.deploy(moduleWithData(16, 300));
    await expectCode(runtime.actors.create({ module: hungry.digest }), 'INVALID_ARGUMENT', /memory/);
    const fed = await runtime.actors.create({ module: hungry.digest, limits: { memoryBytes: 32 * 1024 * 1024 } });
    expect(text((await runtime.actors.call(fed.id, 'x')).reply)).toBe('<none>');
  });
});

/** A module (memory `pages` pages, a handle that returns 0) with one data segment of `size` bytes, built by hand. */
function moduleWithData(size: number, pages = 1): Uint8Array {
  const leb = (n: number): number[] => {
    const out: number[] = [];
    do {
      let b = n & 0x7f;
      n = Math.floor(n / 128);
      if (n > 0) b |= 0x80;
      out.push(b);
    } while (n > 0);
    return out;
  };
  const section = (id: number, body: number[] | Buffer): Buffer => Buffer.concat([Buffer.from([id, ...leb(body.length)]), Buffer.from(body)]);
  const name = (s: string) => [s.length, ...Buffer.from(s)];
  return Buffer.concat([
    Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]),
    section(1, [1, 0x60, 1, 0x7f, 1, 0x7f]),
    section(3, [1, 0]),
    section(5, [1, 0, ...leb(pages)]),
    section(7, [2, ...name('memory'), 2, 0, ...name('handle'), 0, 0]),
    section(10, [1, 4, 0, 0x41, 0, 0x0b]),
    section(11, Buffer.concat([Buffer.from([1, 0, 0x41, 0, 0x0b, ...leb(size)]), Buffer.alloc(size, 7)])),
  ]);
}

describe('a damaged actors database', () => {
  it('does not keep the runtime (and its sandboxes) from opening; using actors says what is wrong', async () => {
    const other = new TestHome();
    try {
      writeFileSync(join(other.root, 'actors.db'), 'not a database '.repeat(500));
      const rt = await other.runtime();
      expect(await rt.list()).toEqual([]);
      await expectCode(() => rt.actors.list(), 'INTERNAL', /actors' database .* not a database/);
    } finally {
      await other.cleanup();
    }
  });
});
