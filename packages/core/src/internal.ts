/**
 * @roost/core/internal: the machinery under the public entry point, for
 * Roost's own packages (the CLI, the test kit), its integration tests and
 * its benchmarks. Not a stable API: names here move when the code does.
 */
export * from './index.js';
export { HomeLock, type HomeOwner } from './state/lock.js';
export { EventLog } from './state/events.js';
export { Settings } from './state/settings.js';
export { stateDb, closeStateDbs, SCHEMA_VERSION } from './state/db.js';
export { sweepTempFiles, tempOwner } from './state/sweep.js';
export { secureHome } from './state/private.js';
export { isAlive, processUsage, type ProcessUsage } from './proc.js';
export { StoreImages, imageInfoBody } from './image/images-api.js';
export { BlobStore } from './image/blobs.js';
export { RegistryClient, RegistrySource, parseWwwAuthenticate, type RegistryClientOptions, type RetryEvent, type AuthChallenge } from './image/registry.js';
export { pullImage, type PullImageOptions, type PulledImage } from './image/pull.js';
export { pushImage, pushDestination, mountSources, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_THRESHOLD, type PushSource } from './image/push.js';
export { openOciLayout, openDockerArchive, writeOciLayout, type LocalImageSource, type LocalImageRef } from './image/archive.js';
export {
  MediaType,
  parseManifest,
  parseImageConfig,
  selectPlatform,
  type Descriptor,
  type ImageManifest,
  type ImageIndex,
  type ImageSource,
} from './image/manifest.js';
export { buildRootfs, ROOTFS_FORMAT, type RootfsBuild } from './image/rootfs.js';
export { registryApiHost, DOCKER_HUB } from './image/reference.js';
export { Commands, CommandHandle } from './commands.js';
export { Files, runCall, callError, errnoName, toEntryInfo, MAX_CALL_OUTPUT, type RunCallOptions } from './files.js';
export { loadAssets, sourceRoot, ensureDebianPackages, REQUIRED_PACKAGES } from './assets.js';
export { HomeLayout } from './home.js';
export { chooseAccel, hostCpu } from './vmm/accel.js';
export { QemuVmm } from './vmm/qemu/vmm.js';
export { qemuArgs, kernelCmdline, vmPaths, QEMU_BINARY } from './vmm/qemu/args.js';
export { QmpClient, type QmpEvent } from './vmm/qemu/qmp.js';
export { AgentConnection, ExecChannel } from './agent/connection.js';
// The host end of the 9P relay port: the volumes benchmark puts Debian's diod behind it (bench/volumes.js).
export { RelayLink, ChannelStream, type RelayLinkEvents } from './fileserver/link.js';
