/**
 * @roost/core: the embeddable Roost runtime. Boot microVM sandboxes and run
 * commands in them from TypeScript.
 *
 * ```ts
 * await using sandbox = await Sandbox.create({ memoryMiB: 256 });
 * const { exitCode, stdout } = await sandbox.commands.run('uname -a');
 * ```
 */
export { Sandbox, type SandboxInfo, type SandboxOptions, type SandboxStatus, type SandboxImage, type PullPolicy } from './sandbox.js';
export { Runtime, type RuntimeOptions, type CreateSandboxOptions, type EventsOptions } from './runtime.js';
export { Volumes } from './volumes.js';
export { HomeLock, type HomeOwner } from './state/lock.js';
export { EventLog } from './state/events.js';
export { Settings } from './state/settings.js';
export { processUsage, type ProcessUsage } from './proc.js';
export type { RoostEvent, EventType, ListFilter, RuntimeMetrics, SandboxMetrics, CommandHandleApi, SandboxApi, RuntimeApi } from '@roost/api';
export { ImageStore, type ImageInfo, type PullOptions, type ImportOptions } from './image/store.js';
export { StoreImages, imageInfoBody } from './image/images-api.js';
export { BlobStore } from './image/blobs.js';
export { CredentialStore, normalizeRegistry, type Credentials, type CredentialStoreOptions } from './image/auth.js';
export { RegistryClient, RegistrySource, parseWwwAuthenticate, type RegistryClientOptions, type RetryEvent, type AuthChallenge } from './image/registry.js';
export { pullImage, type PullImageOptions, type PulledImage } from './image/pull.js';
export { openOciLayout, openDockerArchive, writeOciLayout, type LocalImageSource, type LocalImageRef, type ExportImage, type ExportOptions, type ExportFormat } from './image/archive.js';
export { MediaType, parseManifest, parseImageConfig, selectPlatform, type Descriptor, type ImageConfig, type ImageManifest, type ImageIndex, type ImageSource, type PullProgress, type Platform } from './image/manifest.js';
export { buildRootfs, ROOTFS_FORMAT, type RootfsBuild } from './image/rootfs.js';
export { stateDb, closeStateDbs, SCHEMA_VERSION } from './state/db.js';
export { parseImageReference, formatImageReference, familiarImageReference, registryApiHost, DOCKER_HUB, type ImageReference } from './image/reference.js';
export { Commands, CommandHandle, type CommandResult, type RunOptions, type OutputCallback } from './commands.js';
export { Files, runCall, callError, errnoName, toEntryInfo, MAX_CALL_OUTPUT, type RunCallOptions } from './files.js';
export { RoostError, isRoostError, ERROR_STATUS, type RoostErrorCode } from './errors.js';
export { setup, loadAssets, sourceRoot, ensureDebianPackages, REQUIRED_PACKAGES, type Assets, type SetupOptions, type ProgressFn } from './assets.js';
export { roostHome, HomeLayout } from './home.js';
export { chooseAccel, hostCpu, type Accel } from './vmm/accel.js';
export { QemuVmm } from './vmm/qemu/vmm.js';
export { qemuArgs, kernelCmdline, vmPaths, QEMU_BINARY } from './vmm/qemu/args.js';
export { registerVmm, vmmNames, DEFAULT_VMM, type VmmFactory } from './vmm/registry.js';
export type { Vmm, VmmDisks, VmConfig, VmControlOptions, VmHandle, VmExit, VmNic, VmPaths, VmRestore, VmShare, VmStateTarget, SavedMemory } from './vmm/types.js';
export { QmpClient, type QmpEvent } from './vmm/qemu/qmp.js';
export { AgentConnection, ExecChannel } from './agent/connection.js';
