import { describe, expect, it } from 'vitest';
import { errorFromResponse, parseHost } from './http.js';
import { LineSplitter, NdjsonParser, SseParser, type SseEvent } from './wire.js';
import { isRoostError } from '@roost/api';

/** Feeds `text` to a parser cut at every possible pair of points, and checks the result never depends on the cuts. */
function everySplit<T>(text: string, make: () => { push(c: Uint8Array): T[]; end?(): T[] }): T[] {
  const bytes = Buffer.from(text);
  const whole = make();
  const expected = [...whole.push(bytes), ...(whole.end?.() ?? [])];
  for (let i = 0; i <= bytes.length; i++) {
    for (let j = i; j <= bytes.length; j += Math.max(1, Math.floor(bytes.length / 7))) {
      const p = make();
      const got = [...p.push(bytes.subarray(0, i)), ...p.push(bytes.subarray(i, j)), ...p.push(bytes.subarray(j)), ...(p.end?.() ?? [])];
      expect(got, `cut at ${i}, ${j}`).toEqual(expected);
    }
  }
  return expected;
}

describe('NDJSON line splitter', () => {
  it('splits on LF, drops CR before it and empty lines, joins lines and UTF-8 split across chunks', () => {
    const lines = everySplit('{"a":1}\n{"b":"é€😀"}\r\n\n{"c":[]}\n{"tail":true}', () => new LineSplitter());
    expect(lines).toEqual(['{"a":1}', '{"b":"é€😀"}', '{"c":[]}', '{"tail":true}']);
  });

  it('parses each line as JSON and rejects a line that is not', () => {
    const p = new NdjsonParser();
    expect(p.push('{"type":"started","pid":1}\n{"type":"exit"')).toEqual([{ type: 'started', pid: 1 }]);
    expect(p.push(',"exitCode":0}\n')).toEqual([{ type: 'exit', exitCode: 0 }]);
    expect(() => p.push('not json\n')).toThrow(/not JSON/);
  });

  it('refuses a line longer than its bound instead of buffering it', () => {
    const p = new LineSplitter(16);
    expect(p.push('0123456789')).toEqual([]);
    expect(() => p.push('0123456789')).toThrow(/longer than 16/);
  });
});

describe('SSE parser', () => {
  const ev = (data: string, event = 'message', id?: string): SseEvent => ({ event, data, id });

  it('dispatches on a blank line; joins data lines; keeps the last id; ignores comments and unknown fields', () => {
    const text =
      ': connected\nretry: 1500\n\nid: 1\nevent: sandbox.created\ndata: {"id":1}\n\n: heartbeat\n\ndata: line one\ndata: line two\nfoo: bar\n\nid: 7\nevent: exec.exited\ndata:no-space\n\n';
    const got = everySplit(text, () => new SseParser());
    expect(got).toEqual([ev('{"id":1}', 'sandbox.created', '1'), ev('line one\nline two', 'message', '1'), ev('no-space', 'exec.exited', '7')]);
    const p = new SseParser();
    p.push(text);
    expect(p.retry).toBe(1500);
    expect(p.lastEventId).toBe('7');
  });

  it('treats CRLF, CR and LF alike, also when a CRLF is split between chunks', () => {
    const crlf = everySplit('id: 3\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\r', () => new SseParser());
    expect(crlf).toEqual([ev('a\nb', 'message', '3'), ev('c', 'message', '3')]);
    const p = new SseParser();
    expect(p.push('data: x\r')).toEqual([]);
    expect(p.push('\n')).toEqual([]);
    expect(p.push('\r')).toEqual([ev('x')]);
  });

  it('keeps empty data lines, drops one leading space only, strips a BOM, and does not dispatch without data', () => {
    const got = everySplit('\uFEFFdata\ndata:  two spaces\ndata:\n\nevent: nothing\nid: 9\n\n', () => new SseParser());
    expect(got).toEqual([ev('\n two spaces\n', 'message', undefined)]);
  });

  it('ignores an id with NUL and a retry that is not a number', () => {
    const p = new SseParser();
    p.push('id: 1\nretry: soon\ndata: a\n\nid: 2\0x\ndata: b\n\n');
    expect(p.lastEventId).toBe('1');
    expect(p.retry).toBeUndefined();
  });
});

describe('host addresses', () => {
  it('reads unix, http, tcp, bare host:port and socket paths', () => {
    expect(parseHost('unix:///run/roost/roost.sock')).toMatchObject({ socketPath: '/run/roost/roost.sock', display: 'unix:///run/roost/roost.sock' });
    expect(parseHost('/tmp/x.sock')).toMatchObject({ socketPath: '/tmp/x.sock' });
    expect(parseHost('http://127.0.0.1:7423')).toMatchObject({ hostname: '127.0.0.1', port: 7423, protocol: 'http:' });
    expect(parseHost('http://[::1]')).toMatchObject({ hostname: '::1', port: 7423 });
    expect(parseHost('tcp://10.0.0.2:9000')).toMatchObject({ hostname: '10.0.0.2', port: 9000, protocol: 'http:' });
    expect(parseHost('localhost:8000')).toMatchObject({ hostname: 'localhost', port: 8000 });
    expect(() => parseHost('ftp://x')).toThrow(/unsupported scheme/);
    expect(() => parseHost('http://h:1/api')).toThrow(/without a path/);
  });
});

describe('error bodies', () => {
  it('rebuilds the daemon RoostError, and falls back on the status table', () => {
    const e = errorFromResponse(
      404,
      JSON.stringify({ error: { code: 'NOT_FOUND', message: 'no sandbox abc', details: { id: 'abc' } } }),
      'GET /v1/sandboxes/abc',
      'unix:///x',
    );
    expect(isRoostError(e, 'NOT_FOUND')).toBe(true);
    expect(e.message).toBe('no sandbox abc');
    expect(e.details).toMatchObject({ id: 'abc', status: 404 });
    const proxy = errorFromResponse(429, '<html>slow down</html>', 'GET /v1/sandboxes', 'http://h:1');
    expect(proxy.code).toBe('RESOURCE_EXHAUSTED');
    expect(proxy.message).toMatch(/answered 429: <html>slow down/);
    expect(errorFromResponse(502, '', 'x', 'y').code).toBe('UNAVAILABLE');
  });
});
