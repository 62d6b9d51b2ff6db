import { describe, expect, it } from 'vitest';
import type { ActorMessageRecord } from '@roost/api';
import { createOptions, parseFrom } from './actors.js';
import { actorCallResult } from '@roost/api';
import { describeRecord } from './actors-format.js';

const flags = { ref: [] as string[], grant: [] as string[], fetchAllow: [] as string[], sandbox: [] as string[] };

describe('roost actor create flags', () => {
  it('become create options: refs, init, grants (fetch as deny plus the allow rules), limits with sizes, keepVersions', () => {
    expect(
      createOptions('a', {
        ...flags,
        module: 'x.wasm',
        ref: ['b', 'c'],
        init: 'hi',
        grant: ['random', 'clock'],
        fetchAllow: ['example.com:443', '*'],
        sandbox: ['web'],
        fuel: 5000,
        memory: '16m',
        timeout: 100,
        mailbox: 3,
        maxState: '1k',
        keepVersions: 2,
      }),
    ).toEqual({
      name: 'a',
      refs: ['b', 'c'],
      init: 'hi',
      grants: { random: true, clock: true, fetch: { default: 'deny', allow: ['example.com:443', '*'] }, sandboxes: ['web'] },
      limits: { fuel: 5000, memoryBytes: 16 * 1024 * 1024, timeoutMs: 100, mailbox: 3, stateBytes: 1024 },
      keepVersions: 2,
    });
    expect(createOptions(undefined, { ...flags, from: 'src@3' })).toEqual({ from: { actor: 'src', version: 3 } });
  });

  it('refuse what cannot work, naming the flag', () => {
    expect(() => createOptions('a', flags)).toThrow(/give what the actor runs: --module/);
    expect(() => createOptions('a', { ...flags, module: 'm', from: 'b' })).toThrow(/--module .* or --from/);
    expect(() => createOptions('a', { ...flags, module: 'm', grant: ['fetch'] })).toThrow(/--fetch-allow/);
    expect(() => createOptions('a', { ...flags, module: 'm', grant: ['x'] })).toThrow(/--grant x: unknown grant/);
    expect(() => createOptions('a', { ...flags, module: 'm', fetchAllow: ['a:b:c'] })).toThrow(/^--fetch-allow a:b:c: /);
    expect(() => createOptions('a', { ...flags, module: 'm', memory: 'big' })).toThrow(/--memory big: expected a size/);
  });

  it('--from takes ACTOR or ACTOR@VERSION', () => {
    expect(parseFrom('counter')).toEqual({ actor: 'counter' });
    expect(parseFrom('counter@12')).toEqual({ actor: 'counter', version: 12 });
    expect(parseFrom('a@b')).toEqual({ actor: 'a@b' });
  });
});

describe('roost actor output', () => {
  it('a reply in JSON is text, or base64 when not UTF-8, or absent', () => {
    expect(actorCallResult({ seq: 1, version: 2, ticks: 3, reply: Buffer.from('ok') })).toEqual({ seq: 1, version: 2, ticks: 3, reply: 'ok' });
    expect(actorCallResult({ seq: 1, version: 2, ticks: 3, reply: Uint8Array.from([0xff]) })).toEqual({ seq: 1, version: 2, ticks: 3, replyBase64: '/w==' });
    expect(actorCallResult({ seq: 1, version: 2, ticks: 3, reply: null })).toEqual({ seq: 1, version: 2, ticks: 3 });
  });

  it('a log record: one line of outcome, then its log lines, control characters quoted', () => {
    const base: ActorMessageRecord = {
      seq: 7,
      actor: 'a',
      kind: 'message',
      from: null,
      size: 1,
      ok: true,
      error: null,
      version: 3,
      ticks: 10,
      replySize: 2,
      reply: 'a\nb',
      logs: ['one', 'two\tthree'],
      at: '2026-01-01T00:00:00.000Z',
    };
    expect(describeRecord(base)).toBe('#7  2026-01-01T00:00:00.000Z  from outside  ok v3  10 ticks  reply "a\\nb"\n    one\n    "two\\tthree"\n');
    const failed = {
      ...base,
      ok: false,
      version: null,
      replySize: null,
      logs: [],
      error: { code: 'ACTOR', reason: 'trap', message: 'unreachable', at: base.at },
    };
    expect(describeRecord(failed)).toBe('#7  2026-01-01T00:00:00.000Z  from outside  error (trap): unreachable  10 ticks\n');
  });
});
