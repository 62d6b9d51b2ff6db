/**
 * @roost/core: the embeddable Roost runtime. Boot microVM sandboxes and run
 * commands in them from TypeScript.
 *
 * ```ts
 * await using sandbox = await Sandbox.create({ memoryMiB: 256 });
 * const { exitCode, stdout } = await sandbox.commands.run('uname -a');
 * ```
 *
 * This entry point is what users call. Roost's own packages, tests and
 * benchmarks reach the machinery below it through `@roost/core/internal`,
 * which is not a stable API.
 */
export { Sandbox, type SandboxInfo, type SandboxOptions, type SandboxStatus, type SandboxImage, type PullPolicy } from './sandbox.js';
export { Runtime, type RuntimeOptions, type CreateSandboxOptions, type EventsOptions } from './runtime.js';
export { Volumes } from './volumes.js';
export { serveVolume, parseListen, type ServeVolumeOptions, type VolumeServer } from './fileserver/serve-remote.js';
export type { RoostEvent, EventType, ListFilter, RuntimeMetrics, SandboxMetrics, CommandHandleApi, SandboxApi, RuntimeApi, ImagesApi } from '@roost/api';
export { ImageStore, type ImageInfo, type PullOptions, type ImportOptions } from './image/store.js';
export type { PushImageOptions as PushOptions } from './image/push.js';
export type { PushProgress, PushResult } from '@roost/api';
export { CredentialStore, normalizeRegistry, type Credentials, type CredentialStoreOptions } from './image/auth.js';
export type { ExportImage, ExportOptions, ExportFormat } from './image/archive.js';
export type { ImageConfig, PullProgress, Platform } from './image/manifest.js';
export { parseImageReference, formatImageReference, familiarImageReference, type ImageReference } from './image/reference.js';
export type { Commands, CommandHandle, CommandResult, RunOptions, OutputCallback } from './commands.js';
export type { Files } from './files.js';
export { RoostError, isRoostError, ERROR_STATUS, type RoostErrorCode } from './errors.js';
export { setup, type Assets, type SetupOptions, type ProgressFn } from './assets.js';
export { roostHome } from './home.js';
export type { Accel } from './vmm/accel.js';
// The VMM seam: a backend other than QEMU registers here and is chosen with Runtime.open({ vmm }).
export { registerVmm, vmmNames, DEFAULT_VMM, type VmmFactory } from './vmm/registry.js';
export type { Vmm, VmmDisks, VmConfig, VmControlOptions, VmHandle, VmExit, VmNic, VmPaths, VmRestore, VmStateTarget, SavedMemory } from './vmm/types.js';
