/**
 * @roost/testkit: fixtures shared by the tests and the benchmarks (not
 * published). A real registry on 127.0.0.1, OCI image builders (busybox,
 * Debian minbase, E2B-style Debian), and the Debian packages they need.
 */
export * from './deps.js';
export * from './registry.js';
export * from './fake-registry.js';
export * from './images.js';
// The layout writer's public part; its building blocks (clean, initLayout, tagInIndex) stay inside.
export {
  FIXED_MTIME,
  MEDIA_TYPES,
  tarEntries,
  treeEntries,
  writeBlob,
  writeLayerFile,
  writeOciIndex,
  writeOciLayout,
  type BuiltImage,
  type ImageConfig,
  type ImageSpec,
  type LayerEntry,
  type LayerInfo,
  type LayerSpec,
  type TreeOptions,
} from './oci-layout.js';
