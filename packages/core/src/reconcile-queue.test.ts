import { describe, expect, it } from 'vitest';
import { ReconcileQueue } from './reconcile-queue.js';

describe('ReconcileQueue', () => {
  it('runs one pass at a time and queues at most one more', async () => {
    let running = 0;
    let most = 0;
    let passes = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const q = new ReconcileQueue(async () => {
      running++;
      most = Math.max(most, running);
      passes++;
      if (passes === 1) await gate;
      running--;
    });
    q.kick();
    await new Promise((r) => setTimeout(r, 5));
    for (let i = 0; i < 5; i++) q.kick();
    expect(q.queued).toBe(true);
    release();
    await q.settled();
    expect(passes).toBe(2);
    expect(most).toBe(1);
  });

  it('hands a failing pass to `failed`, backs off doubling to a ceiling, and retries once per timer', async () => {
    const errors: unknown[] = [];
    let passes = 0;
    const q = new ReconcileQueue(
      async () => {
        passes++;
        throw new Error('no');
      },
      (e) => errors.push(e),
      { baseMs: 10, maxMs: 25 },
    );
    q.kick();
    await q.settled();
    expect(errors).toHaveLength(1);
    expect([q.backOff(), q.backOff(), q.backOff()]).toEqual([10, 20, 25]);
    q.retryIn(10);
    q.retryIn(10);
    expect(q.retrying).toBe(true);
    await new Promise((r) => setTimeout(r, 40));
    await q.settled();
    expect(passes).toBe(2);
    q.succeeded();
    expect(q.failures).toBe(0);
    q.retryIn(1_000);
    q.cancelRetry();
    expect(q.retrying).toBe(false);
  });
});
