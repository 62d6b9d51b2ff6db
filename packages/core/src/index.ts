/**
 * @roost/core: the embeddable Roost runtime. Boot microVM sandboxes and run
 * commands in them from TypeScript.
 *
 * ```ts
 * await using sandbox = await Sandbox.create({ memoryMiB: 256 });
 * const { exitCode, stdout } = await sandbox.commands.run('uname -a');
 * ```
 */
export { Sandbox, type SandboxInfo, type SandboxOptions, type SandboxStatus } from './sandbox.js';
export { Runtime } from './runtime.js';
export { parseImageReference, formatImageReference, familiarImageReference, registryApiHost, DOCKER_HUB, type ImageReference } from './image/reference.js';
export { Commands, CommandHandle, type CommandResult, type RunOptions, type OutputCallback } from './commands.js';
export { RoostError, isRoostError, type RoostErrorCode } from './errors.js';
export { setup, loadAssets, sourceRoot, ensureDebianPackages, REQUIRED_PACKAGES, type Assets, type SetupOptions, type ProgressFn } from './assets.js';
export { roostHome, HomeLayout } from './home.js';
export { chooseAccel, hostCpu, type Accel } from './vmm/accel.js';
export { QemuVmm, qemuArgs, kernelCmdline, vmPaths, QEMU_BINARY } from './vmm/qemu.js';
export type { Vmm, VmConfig, VmHandle, VmExit, VmPaths } from './vmm/types.js';
export { QmpClient, type QmpEvent } from './vmm/qmp.js';
export { AgentConnection, ExecChannel } from './agent/connection.js';
