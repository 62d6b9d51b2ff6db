/**
 * @roost/testkit: fixtures shared by the tests and the benchmarks (not
 * published). A real registry on 127.0.0.1, OCI image builders (busybox,
 * Debian minbase), and the Debian packages they need.
 */
export * from './deps.js';
export * from './registry.js';
export * from './images.js';
