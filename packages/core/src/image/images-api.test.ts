import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import type { BuildImageOptions, BuildResult } from '@roost/api';
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

/** A tar stream of entries (name, body or a symlink target). */
async function* tarOf(entries: { name: string; body?: string; link?: string }[]): AsyncGenerator<Uint8Array> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.link !== undefined) pack.entry({ name: e.name, type: 'symlink', linkname: e.link });
    else pack.entry({ name: e.name, mode: 0o644 }, e.body ?? '');
  }
  pack.finalize();
  for await (const c of pack) yield c as Buffer;
}

// A context given as a tar stream (the daemon's request body) is unpacked into the home's tmp/, built from, and removed.
describe('StoreImages.build({ tar })', () => {
  const withTmp = async (fn: (tmp: string, base: string) => Promise<void>) => {
    const base = mkdtempSync(join(tmpdir(), 'roost-ctx-'));
    try {
      await fn(join(base, 'home', 'tmp'), base);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  };
  const result = { image: {} as BuildResult['image'], ran: 1, cached: 0 };

  it('hands the builder a directory of the home with the files, and removes it after, built or not', async () => {
    await withTmp(async (tmpDir) => {
      let seen: { dir: string; files: string[]; dockerfile: string } | undefined;
      const builder = async (dir: string, o: BuildImageOptions) => {
        seen = { dir, files: readdirSync(dir).sort(), dockerfile: readFileSync(join(dir, 'Dockerfile'), 'utf8') };
        if (o.target === 'fail') throw new Error('the build failed');
        return result;
      };
      const images = new StoreImages({ tmpDir } as ImageStore, builder);
      const files = [
        { name: 'Dockerfile', body: 'FROM scratch\n' },
        { name: 'src/a.txt', body: 'a' },
      ];
      await expect(images.build({ tar: tarOf(files) }, { tags: ['app:1'] })).resolves.toBe(result);
      expect(seen?.dir.startsWith(join(tmpDir, `context.tmp-${process.pid}-`))).toBe(true);
      expect(seen?.files).toEqual(['Dockerfile', 'src']);
      expect(seen?.dockerfile).toBe('FROM scratch\n');
      expect(existsSync(seen!.dir)).toBe(false);
      await expect(images.build({ tar: tarOf(files) }, { target: 'fail' })).rejects.toThrow('the build failed');
      expect(readdirSync(tmpDir)).toEqual([]);
    });
  });

  it('refuses a hostile context before building, writing nothing outside and leaving nothing behind', async () => {
    await withTmp(async (tmpDir, base) => {
      const images = new StoreImages({ tmpDir } as ImageStore, () => {
        throw new Error('the builder was called for a refused context');
      });
      for (const [entries, why] of [
        [[{ name: '../../../escaped', body: 'x' }], /climbs out/],
        [[{ name: join(base, 'escaped'), body: 'x' }], /absolute path/],
        [
          [
            { name: 'link', link: base },
            { name: 'link/escaped', body: 'x' },
          ],
          /below the symlink link/,
        ],
      ] as const) {
        await expect(images.build({ tar: tarOf([...entries]) })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: why });
      }
      expect(readdirSync(base)).toEqual(['home']);
      expect(readdirSync(tmpDir)).toEqual([]);
      await expect(images.build({ tar: 'not a stream' } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /\{ tar \}/ });
    });
  });
});
