import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { roostHome, setup } from '@roost/core';
import { ensureTestTools } from '@roost/testkit';

/**
 * Builds (or finds cached) the kernel, agent, initramfs and base rootfs once
 * before any test file runs. The cache lives in the real Roost home so a
 * second `npm test` is instant; tests themselves use throwaway homes that
 * link to it (test/helpers.ts).
 */
export default async function globalSetup(): Promise<void> {
  const home = roostHome();
  mkdirSync(join(home, 'cache'), { recursive: true });
  const started = Date.now();
  await setup({
    home,
    progress: (line) => process.stderr.write(`[roost setup] ${line}\n`),
  });
  // Tools of the image tests: a local registry, skopeo, debootstrap, ...
  await ensureTestTools((line) => process.stderr.write(`[roost setup] ${line}\n`));
  process.stderr.write(`[roost setup] done in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  process.env.ROOST_TEST_CACHE = join(home, 'cache');
}
