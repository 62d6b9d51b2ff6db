import type { EventType, RoostEvent, RuntimeApi, RuntimeMetrics, SandboxApi, SandboxMetrics } from '@roost/api';

/*
 * What the daemon needs from the runtime: the contract's RuntimeApi and a
 * few daemon-only reads, stated structurally. `Runtime` from @roost/core
 * satisfies it; only serve.ts imports the core, and the routes depend on
 * nothing else of it (they stay thin, and the server builds without the
 * core's internals).
 */

/** A sandbox of the runtime: the contract's SandboxApi. */
export type DaemonSandbox = SandboxApi;

/** The runtime the daemon serves (`Runtime` from @roost/core). */
export interface DaemonRuntime extends Omit<RuntimeApi, 'events'> {
  /** The Roost home it owns. */
  readonly home: string;
  /** Events after `after`, then live ones, filtered by type and sandbox, until `signal` aborts. */
  events(options?: { after?: number; signal?: AbortSignal; types?: EventType[]; sandboxId?: string }): AsyncIterable<RoostEvent>;
  /** The newest event id: where a follower of new events only starts. */
  lastEventId(): number;
  metrics(): Promise<RuntimeMetrics>;
  sandboxMetrics(id: string): Promise<SandboxMetrics>;
}
