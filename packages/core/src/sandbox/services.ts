import type { SandboxInfo } from '@roost/api';
import type { Assets } from '../assets.js';
import type { HomeLayout } from '../home.js';
import type { ImageStore } from '../image/store.js';
import type { RuntimeNetwork } from '../net/runtime-network.js';
import type { SnapshotStore } from '../snapshot/store.js';
import type { EventLog } from '../state/events.js';
import type { SandboxRecords } from '../state/sandboxes.js';
import type { SandboxWitnesses } from '../state/witness.js';
import type { Volumes } from '../volumes.js';
import type { Vmm } from '../vmm/types.js';
import type { RuntimeJail } from '../jail/policy.js';
import type { SandboxOptions } from './plan.js';

/** Runtime-wide counters a sandbox adds to. */
export interface RuntimeCounters {
  sandboxesCreated: number;
  sandboxesDestroyed: number;
  execs: number;
  execBytes: { stdin: number; stdout: number; stderr: number };
}

/**
 * @internal What a sandbox uses of the runtime that owns it. Each module
 * under sandbox/ takes only its part of this (see their contexts). One
 * runtime owns a home at a time, so a Sandbox object is the only writer of
 * its record.
 */
export interface SandboxServices<S> {
  readonly home: string;
  readonly layout: HomeLayout;
  readonly records: SandboxRecords;
  readonly events: EventLog;
  /** The records' copies in the sandboxes' directories. */
  readonly witnesses: SandboxWitnesses;
  readonly counters: RuntimeCounters;
  readonly images: ImageStore;
  readonly volumes: Volumes;
  readonly snapshots: SnapshotStore;
  /** Bridge mode's bridge and leases. */
  readonly network: RuntimeNetwork;
  /** The VMM backend the runtime uses. */
  readonly vmm: Vmm;
  /** Confines each VM (null: the runtime runs them unconfined, `jail: false`). */
  readonly jail: RuntimeJail | null;
  assets(): Promise<Assets>;
  /** Creates a sandbox through the runtime (its limits and tracking): forks use it. */
  create(options: SandboxOptions): Promise<S>;
  /** The sandbox has a record: the runtime lists it from now on (even if its boot then fails). */
  adopted(sandbox: S): void;
  /** The sandbox was removed: forget it. */
  released(id: string): void;
  /** The sandbox's VM is gone (stopped, killed, failed): its record says so now. */
  exited?(id: string): void;
  /** The end of the sandbox's lifetime changed (null: it has none). */
  lifetimeChanged(id: string, expiresAt: string | null): void;
}

/** The process's shared runtime of a home, as the static `Sandbox` helpers use it (runtime.ts provides it). */
export interface SharedRuntime<S> {
  create(options: SandboxOptions): Promise<S>;
  get(id: string): Promise<S>;
  list(): Promise<SandboxInfo[]>;
}
