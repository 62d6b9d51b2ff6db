import type {
  CommandHandleApi,
  CreateOptions,
  EventType,
  ImagesApi,
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

/** A sandbox of the runtime. */
export interface DaemonSandbox extends SandboxApi {
  readonly commands: {
    start(cmd: string | string[], options?: RunOptions): Promise<CommandHandleApi>;
    run: SandboxApi['commands']['run'];
  };
}

/** The runtime the daemon serves (`Runtime` from @roost/core). */
export interface DaemonRuntime {
  readonly home: string;
  /** The image store of the home. */
  readonly images: ImagesApi;
  /** The named volumes of the home. */
  readonly volumes: VolumesApi;
  /** The snapshots of the home (user snapshots, fork bases, template warm starts). */
  readonly snapshots: SnapshotsApi;
  /** The templates of the home, each kept ready as a snapshot. */
  readonly templates: TemplatesApi;
  create(options?: CreateOptions): Promise<DaemonSandbox>;
  get(id: string): Promise<DaemonSandbox>;
  list(filter?: ListFilter): Promise<SandboxApi['info'][]>;
  events(options?: { after?: number; signal?: AbortSignal; types?: EventType[]; sandboxId?: string }): AsyncIterable<RoostEvent>;
  /** The newest event id: where a follower of new events only starts. */
  lastEventId(): number;
  metrics(): Promise<RuntimeMetrics>;
  sandboxMetrics(id: string): Promise<SandboxMetrics>;
  close(): Promise<void>;
}
