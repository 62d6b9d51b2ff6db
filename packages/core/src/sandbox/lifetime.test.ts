import { describe, expect, it } from 'vitest';
import { Lifetimes } from './lifetime.js';

const inMs = (ms: number) => new Date(Date.now() + ms).toISOString();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('Lifetimes', () => {
  it('ends each sandbox at its time, the soonest first, and only once', async () => {
    const ended: string[] = [];
    const lifetimes = new Lifetimes(async (id) => void ended.push(id));
    lifetimes.set('b', inMs(80));
    lifetimes.set('a', inMs(30));
    lifetimes.set('never', null);
    lifetimes.set('past', inMs(-1000)); // ended while no runtime was open: at once
    await sleep(10);
    expect(ended).toEqual(['past']);
    await sleep(50);
    expect(ended).toEqual(['past', 'a']);
    await sleep(60);
    expect(ended).toEqual(['past', 'a', 'b']);
    await sleep(50);
    expect(ended).toEqual(['past', 'a', 'b']);
    lifetimes.close();
  });

  it('moves an end, forgets a removed sandbox, and fires nothing once closed', async () => {
    const ended: string[] = [];
    const lifetimes = new Lifetimes(async (id) => void ended.push(id));
    lifetimes.set('moved', inMs(20));
    lifetimes.set('moved', inMs(120));
    lifetimes.set('gone', inMs(20));
    lifetimes.delete('gone');
    lifetimes.set('cleared', inMs(20));
    lifetimes.set('cleared', undefined);
    await sleep(60);
    expect(ended).toEqual([]);
    expect(lifetimes.dueAt('moved')).toBeGreaterThan(Date.now());
    lifetimes.close();
    await sleep(100);
    expect(ended).toEqual([]);
  });

  it('keeps going when ending one sandbox fails', async () => {
    const ended: string[] = [];
    const lifetimes = new Lifetimes(async (id) => {
      if (id === 'bad') throw new Error('no');
      ended.push(id);
    });
    const errors: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (errors.push(String(s)), true)) as typeof process.stderr.write;
    try {
      lifetimes.set('bad', inMs(5));
      lifetimes.set('good', inMs(10));
      await sleep(40);
    } finally {
      process.stderr.write = write;
    }
    expect(ended).toEqual(['good']);
    expect(errors.join('')).toMatch(/ending sandbox bad at the end of its lifetime failed: no/);
    lifetimes.close();
  });
});
