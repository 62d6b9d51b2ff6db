import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const packagesDir = fileURLToPath(new URL('./packages/', import.meta.url));

/** Each workspace package (@roost/<dir>) by its source entry, so unit tests need no `tsc -b` first. */
const sourceAliases = [
  // Subpath entries first: `@roost/core/internal` is not `@roost/core` + '/internal'.
  { find: /^@roost\/core\/internal$/, replacement: `${packagesDir}core/src/internal.ts` },
  ...readdirSync(packagesDir)
    .filter((dir) => existsSync(`${packagesDir}${dir}/src/index.ts`))
    .map((dir) => ({ find: new RegExp(`^@roost/${dir}$`), replacement: `${packagesDir}${dir}/src/index.ts` })),
];

export default defineConfig({
  test: {
    // Integration tests boot real VMs: one process per file keeps a crashed
    // file from taking the others down, and lets QEMU die with its owner.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 600_000,
    projects: [
      {
        extends: true,
        resolve: { alias: sourceAliases },
        test: {
          // The tests beside the code (`npm run test:unit`): no build, no VM, no global setup.
          // net/user/netns.test.ts and net/bridge.test.ts use network namespaces when run as
          // root (and skip without it): seconds, no VM, so they belong here too.
          name: 'unit',
          include: ['packages/*/src/**/*.test.ts'],
        },
      },
      {
        extends: true,
        test: {
          // Tests that boot real VMs, against the built packages (`npm test` builds them first).
          name: 'integration',
          include: ['test/**/*.test.ts'],
          globalSetup: ['test/global-setup.ts'],
        },
      },
    ],
  },
});
