import { describe, expect, it } from 'vitest';
import { StoreImages } from './images-api.js';
import type { ImageStore } from './store.js';

// The contract's schemas guard runtime.images before the store is touched.
describe('StoreImages', () => {
  const untouched = new Proxy({} as ImageStore, {
    get: (_t, name) => {
      throw new Error(`the store was used (${String(name)}) for input the contract refuses`);
    },
  });
  const images = new StoreImages(untouched, () => {
    throw new Error('the builder was called for input the contract refuses');
  });

  it('refuses bad build options with INVALID_ARGUMENT before building', async () => {
    await expect(images.build('/ctx', { tags: [''] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /tags/ });
    await expect(images.build('/ctx', { network: 'bridge' } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /network/ });
    await expect(images.build('/ctx', { buildArgs: { 'no-dash': 'x' } })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /buildArgs/ });
  });

  it('refuses an empty reference and unknown options with INVALID_ARGUMENT', async () => {
    await expect(images.pull('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(images.pull('alpine', { onProgress: 'no' } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /onProgress/ });
    await expect(images.pull('alpine', { retries: 3 } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /retries/ });
    await expect(images.remove('alpine', { force: 'yes' } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /force/ });
  });

  it('refuses a push with an empty source or destination, or unknown options', async () => {
    await expect(images.push('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(images.push('alpine', { destination: '' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /destination/ });
    await expect(images.push('alpine', { chunkSize: 1 } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /chunkSize/ });
  });
});
