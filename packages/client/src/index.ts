/**
 * @roost/client: the Roost SDK for a daemon (`roost serve`). The same
 * `RuntimeApi` / `SandboxApi` interfaces as the embedded runtime in
 * @roost/core, over HTTP or a unix socket, with streaming exec output,
 * interactive stdin, image pulls and Server-Sent Events.
 *
 * ```ts
 * import { RoostClient } from '@roost/client';
 *
 * await using client = new RoostClient(); // $ROOST_HOST, else ~/.roost/roost.sock
 * await using sandbox = await client.create({ image: 'alpine' });
 * const { exitCode, stdout } = await sandbox.commands.run('uname -a');
 * ```
 */
export { RoostClient, type RoostClientOptions, type Health, type EventsOptions } from './client.js';
export { RemoteImages } from './images.js';
export { RemoteSandbox } from './sandbox.js';
export { RemoteVolumes } from './volumes.js';
export { RemoteSnapshots, RemoteTemplates } from './snapshots.js';
export { RemotePools } from './pools.js';
export { RemoteDeployments } from './deployments.js';
export { RemoteActors } from './actors.js';
export { RemoteCommands, RemoteCommandHandle } from './command.js';
export { RemoteFiles } from './files.js';
export { parseHost, defaultEndpoint, resolveHome, type Endpoint } from './http.js';
export { RoostError, isRoostError, type RoostErrorCode } from '@roost/api';
export type {
  RuntimeApi,
  SandboxApi,
  CommandHandleApi,
  CommandsApi,
  CommandResult,
  RunOptions,
  CreateOptions,
  ListFilter,
  SandboxInfo,
  SandboxStatus,
  RoostEvent,
  ImageInfoBody,
  ImagesApi,
  PullProgress,
  PullImageOptions,
  PushProgress,
  PushImageOptions,
  PushResult,
  ImageRemoval,
  FilesApi,
  FileWatchApi,
  EntryInfo,
  FileEvent,
  SnapshotInfo,
  SnapshotsApi,
  TemplateInfo,
  TemplatesApi,
  CreateTemplateRequest,
  PortsApi,
  PortSpec,
  PortMapping,
  PortBinding,
  PortProtocol,
  NetworkMode,
  NetworkInfo,
  NetworkStats,
  EgressSpec,
  EgressPolicyInput,
  ActorsApi,
  ActorInfo,
  ActorModuleInfo,
  ActorMessage,
  ActorMessageRecord,
  ActorMessagesOptions,
  ActorReply,
  ActorSendResult,
  ActorState,
  ActorVersion,
  CreateActorOptions,
} from '@roost/api';
