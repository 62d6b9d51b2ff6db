import { describe, expect, it } from 'vitest';
import { RoostError } from './errors.js';
import { OutputBuffer } from './output-buffer.js';

const bytes = (s: string) => new TextEncoder().encode(s);

function buffer(callback?: (s: string) => void | Promise<void>, options = {}) {
  const credited: number[] = [];
  const out = new OutputBuffer({ credit: (n) => credited.push(n) }, callback, options);
  return { out, credited };
}

describe('OutputBuffer', () => {
  it('holds chunks nobody reads, and releases them to an iterator as it consumes them', async () => {
    const { out, credited } = buffer();
    out.push(bytes('ab'));
    out.push(bytes('cde'));
    expect(out.held).toBe(5);
    expect(credited).toEqual([]);
    out.end();
    const seen: string[] = [];
    for await (const c of out) seen.push(new TextDecoder().decode(c));
    expect(seen).toEqual(['ab', 'cde']);
    expect(credited).toEqual([2, 3]);
    expect(out.held).toBe(0);
  });

  it('collects for text(), releasing what was queued at once', async () => {
    const { out, credited } = buffer();
    out.push(bytes('one '));
    out.collect();
    out.push(bytes('two'));
    out.end();
    expect(await out.text()).toBe('one two');
    expect(credited.reduce((a, b) => a + b, 0)).toBe(7);
  });

  it('releases credit only after a slow callback handled the chunk', async () => {
    let finish!: () => void;
    const gate = new Promise<void>((r) => (finish = r));
    const heard: string[] = [];
    const { out, credited } = buffer(async (s) => {
      heard.push(s);
      await gate;
    });
    out.push(bytes('x'));
    await new Promise((r) => setTimeout(r, 5));
    expect(heard).toEqual(['x']);
    expect(credited).toEqual([]);
    finish();
    await new Promise((r) => setTimeout(r, 5));
    expect(credited).toEqual([1]);
  });

  it('decodes UTF-8 split across chunks for the callback', async () => {
    const heard: string[] = [];
    const { out } = buffer((s) => void heard.push(s));
    const euro = bytes('€');
    out.push(euro.subarray(0, 1));
    out.push(euro.subarray(1));
    out.end();
    await out.text();
    expect(heard.join('')).toBe('€');
  });

  it('refuses a second reader, and throws the end error to the iterator', async () => {
    const { out } = buffer();
    const it1 = out[Symbol.asyncIterator]();
    const first = it1.next();
    await expect(out[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: 'INVALID_STATE' });
    out.end(new RoostError('TIMEOUT', 'late'));
    await expect(first).rejects.toMatchObject({ code: 'TIMEOUT' });
  });

  it('with onEarlyReturn, a reader that stops discards the rest and reports it', async () => {
    let stopped = 0;
    const { out, credited } = buffer(undefined, { onEarlyReturn: () => stopped++ });
    out.push(bytes('a'));
    out.push(bytes('bb'));
    for await (const c of out) {
      expect(c.length).toBe(1);
      break;
    }
    expect(stopped).toBe(1);
    out.push(bytes('ccc'));
    expect(credited).toEqual([1, 2, 3]);
    expect(out.held).toBe(0);
  });
});
