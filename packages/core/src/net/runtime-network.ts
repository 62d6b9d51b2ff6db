import type Database from 'better-sqlite3';
import { BridgeNetwork, type BridgeConfig } from './bridge-network.js';
import { Ipam, type Lease } from './ipam.js';

/** The bridge a runtime uses unless told otherwise: ROOST_BRIDGE (roost0) with ROOST_BRIDGE_SUBNET (10.88.0.0/16). */
export function bridgeConfig(options: Partial<BridgeConfig> = {}, env: NodeJS.ProcessEnv = process.env): BridgeConfig {
  return {
    name: options.name ?? (env.ROOST_BRIDGE || 'roost0'),
    subnet: options.subnet ?? (env.ROOST_BRIDGE_SUBNET || '10.88.0.0/16'),
    ...(options.gateway ? { gateway: options.gateway } : {}),
  };
}

/**
 * A runtime's networking state: bridge mode's bridge (set up on first use:
 * the privilege check, the bridge, NAT and DNS) and its address leases.
 * User-mode networks need nothing runtime-wide.
 */
export class RuntimeNetwork {
  readonly #db: Database.Database;
  readonly config: BridgeConfig;
  #bridge: Promise<BridgeNetwork> | null = null;
  #ipam: Ipam | null = null;

  constructor(db: Database.Database, config: BridgeConfig) {
    this.#db = db;
    this.config = config;
  }

  /** The bridge, set up once per runtime (idempotently: a bridge left by a crash is reused). */
  bridge(): Promise<BridgeNetwork> {
    if (!this.#bridge) {
      this.#bridge = BridgeNetwork.open(this.#leases());
      this.#bridge.catch(() => (this.#bridge = null));
    }
    return this.#bridge;
  }

  /** Frees a removed sandbox's address (no privileges needed: it is a row in the database). */
  releaseLease(sandboxId: string): void {
    this.#leases().release(sandboxId);
  }

  /** Frees the addresses of sandboxes this home no longer has (a runtime that crashed between lease and record). */
  reclaimLeases(keep: (sandboxId: string) => boolean): Lease[] {
    return this.#leases().reclaim(keep);
  }

  close(): void {
    void this.#bridge?.then((b) => b.close()).catch(() => {});
    this.#bridge = null;
  }

  #leases(): Ipam {
    this.#ipam ??= new Ipam(this.#db, {
      network: this.config.name,
      subnet: this.config.subnet,
      ...(this.config.gateway ? { gateway: this.config.gateway } : {}),
    });
    return this.#ipam;
  }
}
