import type {
  CommandHandleApi,
  CreateOptions,
  EventType,
  ListFilter,
  RoostEvent,
  RunOptions,
  RuntimeMetrics,
  SandboxApi,
  SandboxMetrics,
  SnapshotsApi,
  TemplatesApi,
  VolumesApi,
} from '@roost/api';

/*
 * What the daemon needs from the runtime, stated structurally: `Runtime`
 * from @roost/core satisfies it, and the routes depend on nothing else of
 * the core (they stay thin, and the server builds without the core's
 * internals).
 */

/** Pull progress of one blob, as the core's image store reports it. */
export interface DaemonPullProgress {
  image: string;
  digest: string;
  kind: 'config' | 'layer';
  current: number;
  total: number;
  status: 'waiting' | 'downloading' | 'verifying' | 'exists' | 'done' | 'retrying' | 'failed';
}

/** An image as the core's store describes it (the route maps it to the API's ImageInfo). */
export interface DaemonImageInfo {
  id: string;
  tags: string[];
  size: number;
  configDigest: string;
  layers: readonly unknown[];
  config: { entrypoint: string[]; cmd: string[]; env: string[]; workingDir: string; user: string };
  created?: string;
  addedAt: string;
  source: string;
  rootfsSize?: number;
}

/** The image store of the runtime. */
export interface DaemonImages {
  pull(reference: string, options?: { signal?: AbortSignal; onProgress?: (p: DaemonPullProgress) => void }): Promise<DaemonImageInfo>;
  list(): DaemonImageInfo[];
  inspect(reference: string): DaemonImageInfo;
  remove(reference: string, options?: { force?: boolean }): Promise<{ untagged: string[]; deleted: string[] }>;
}

/** A sandbox of the runtime. */
export interface DaemonSandbox extends SandboxApi {
  /** The guest's serial console log. */
  readonly consoleLogPath: string;
  readonly commands: {
    start(cmd: string | string[], options?: RunOptions): Promise<CommandHandleApi>;
    run: SandboxApi['commands']['run'];
  };
}

/** The runtime the daemon serves (`Runtime` from @roost/core). */
export interface DaemonRuntime {
  readonly home: string;
  readonly images: DaemonImages;
  /** The named volumes of the home. */
  readonly volumes: VolumesApi;
  /** The snapshots of the home (user snapshots, fork bases, template warm starts). */
  readonly snapshots: SnapshotsApi;
  /** The templates of the home, each kept ready as a snapshot. */
  readonly templates: TemplatesApi;
  create(options?: CreateOptions & { onPullProgress?: (p: DaemonPullProgress) => void }): Promise<DaemonSandbox>;
  get(id: string): Promise<DaemonSandbox>;
  list(filter?: ListFilter): Promise<SandboxApi['info'][]>;
  events(options?: { after?: number; signal?: AbortSignal; types?: EventType[]; sandboxId?: string }): AsyncIterable<RoostEvent>;
  /** The newest event id: where a follower of new events only starts. */
  lastEventId(): number;
  metrics(): Promise<RuntimeMetrics>;
  sandboxMetrics(id: string): Promise<SandboxMetrics>;
  close(): Promise<void>;
}
