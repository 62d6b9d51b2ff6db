import { describe, expect, it } from 'vitest';
import { RoostError } from '../errors.js';
import { gather, type Call } from './call.js';

/** A call whose output has all arrived and which has settled: cancelling it changes nothing. */
function settledCall(chunks: Uint8Array[]): Call {
  return {
    stdout: (async function* () {
      yield* chunks;
    })(),
    done: Promise.resolve(),
    cancel: async () => {},
  } as unknown as Call;
}

describe('gather', () => {
  it('refuses output past its limit even when the call has already settled (no silent truncation)', async () => {
    const tooLarge = () => new RoostError('RESOURCE_EXHAUSTED', 'too large');
    await expect(gather(settledCall([new Uint8Array(65_536), new Uint8Array(1)]), 65_536, tooLarge)).rejects.toThrow('too large');
    expect((await gather(settledCall([new Uint8Array(65_536)]), 65_536, tooLarge)).length).toBe(65_536);
  });
});
