import type Database from 'better-sqlite3';
import { formatCidr, intToIpv4, ipv4ToInt, isIpv4, parseCidr, prefixMask } from '@roost/api';
import { RoostError } from '../errors.js';

/** An address pool: one bridge and its subnet. */
export interface IpamPool {
  /** The bridge's name: the pool's key in the database. */
  network: string;
  /** The subnet, as a CIDR (`10.88.0.0/16`). */
  subnet: string;
  /** The host's address on the bridge (default: the subnet's first host address). */
  gateway?: string;
}

/** A sandbox's address on a bridge. */
export interface Lease {
  network: string;
  sandboxId: string;
  address: string;
  /** The subnet's prefix length. */
  prefix: number;
  gateway: string;
  /** Locally administered, unicast, derived from the address (so unique in the pool). */
  mac: string;
  createdAt: string;
}

interface LeaseRow {
  network: string;
  sandbox_id: string;
  address: number;
  mac: string;
  created_at: string;
}

/** Interface names: at most 15 bytes (IFNAMSIZ - 1); this charset is safe in every command line. */
const INTERFACE_NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$/;

/** The first byte of a leased MAC: 0x02 is locally administered (bit 1) and unicast (bit 0 clear); 0x52 is "R". */
const MAC_PREFIX = '02:52';

/** A MAC for an address: the prefix, then the address's four bytes. Distinct addresses give distinct MACs. */
export function macForAddress(address: number): string {
  const bytes = [address >>> 24, (address >>> 16) & 255, (address >>> 8) & 255, address & 255];
  return `${MAC_PREFIX}:${bytes.map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
}

/**
 * Bridge-mode IP address management: leases addresses of a bridge's subnet
 * to sandboxes, in the home's SQLite database (table `leases`). Allocation
 * runs in an IMMEDIATE transaction, so runtimes in several processes sharing
 * one database never hand out an address twice (and the table's UNIQUE
 * constraints would refuse it if they tried).
 */
export class Ipam {
  /** The bridge (the pool's key). */
  readonly network: string;
  /** The subnet as written canonically (`10.88.0.0/16`). */
  readonly subnet: string;
  readonly prefix: number;
  readonly gateway: string;
  /** How many addresses sandboxes can lease: the subnet's hosts minus the gateway. */
  readonly capacity: number;

  readonly #db: Database.Database;
  readonly #first: number;
  readonly #last: number;
  readonly #gateway: number;
  readonly #select: Database.Statement;
  readonly #selectAll: Database.Statement;
  readonly #used: Database.Statement;
  readonly #insert: Database.Statement;
  readonly #delete: Database.Statement;

  /** Checks the pool (INVALID_ARGUMENT when the subnet or gateway is unusable). */
  constructor(db: Database.Database, pool: IpamPool) {
    if (!INTERFACE_NAME_RE.test(pool.network)) {
      throw new RoostError('INVALID_ARGUMENT', `"${pool.network}" is not a usable bridge name: use 1 to 15 letters, digits, '_', '.' or '-' (like roost0)`);
    }
    const what = `the subnet of bridge ${pool.network}`;
    let cidr: { address: number; prefix: number };
    try {
      cidr = parseCidr(pool.subnet);
    } catch (e) {
      throw new RoostError('INVALID_ARGUMENT', `${what}: ${(e as Error).message}`, { cause: e });
    }
    if (cidr.prefix > 30) {
      throw new RoostError(
        'INVALID_ARGUMENT',
        `${what}, ${pool.subnet}, is too small: a subnet needs at least 4 addresses (network, gateway, a sandbox, broadcast), so its prefix can be /30 at most (like 10.88.0.0/16)`,
      );
    }
    if (cidr.prefix < 8) {
      throw new RoostError('INVALID_ARGUMENT', `${what}, ${pool.subnet}, is too large: use a private subnet of /8 or smaller (like 10.88.0.0/16)`);
    }
    const broadcast = (cidr.address | ~prefixMask(cidr.prefix)) >>> 0;
    this.#first = cidr.address + 1;
    this.#last = broadcast - 1;
    let gateway = this.#first;
    if (pool.gateway !== undefined) {
      if (!isIpv4(pool.gateway))
        throw new RoostError('INVALID_ARGUMENT', `the gateway of bridge ${pool.network}, "${pool.gateway}", is not an IPv4 address (like 10.88.0.1)`);
      gateway = ipv4ToInt(pool.gateway);
      if (gateway < this.#first || gateway > this.#last) {
        throw new RoostError(
          'INVALID_ARGUMENT',
          `the gateway of bridge ${pool.network}, ${pool.gateway}, is not a host address of its subnet ${formatCidr(cidr)}: choose one from ${intToIpv4(this.#first)} to ${intToIpv4(this.#last)}, or leave it out (default ${intToIpv4(this.#first)})`,
        );
      }
    }
    this.network = pool.network;
    this.subnet = formatCidr(cidr);
    this.prefix = cidr.prefix;
    this.#gateway = gateway;
    this.gateway = intToIpv4(gateway);
    this.capacity = this.#last - this.#first; // hosts minus the gateway
    this.#db = db;
    this.#select = db.prepare('SELECT * FROM leases WHERE network = ? AND sandbox_id = ?');
    this.#selectAll = db.prepare('SELECT * FROM leases WHERE network = ? ORDER BY address');
    this.#used = db.prepare('SELECT address FROM leases WHERE network = ? AND address BETWEEN ? AND ? ORDER BY address');
    this.#insert = db.prepare('INSERT INTO leases (network, sandbox_id, address, mac, created_at) VALUES (?, ?, ?, ?, ?)');
    this.#delete = db.prepare('DELETE FROM leases WHERE network = ? AND sandbox_id = ?');
  }

  /**
   * The sandbox's lease: its existing one, or the lowest free host address
   * of the subnet (never the network, gateway or broadcast address).
   * RESOURCE_EXHAUSTED when every address is leased.
   */
  lease(sandboxId: string): Lease {
    return this.#db
      .transaction((): Lease => {
        const existing = this.#select.get(this.network, sandboxId) as LeaseRow | undefined;
        if (existing) {
          if (this.#usable(existing.address)) return this.#toLease(existing);
          // Leased under an older subnet or gateway of this bridge: it would not route now.
          this.#delete.run(this.network, sandboxId);
        }
        const address = this.#lowestFree();
        const row: LeaseRow = { network: this.network, sandbox_id: sandboxId, address, mac: macForAddress(address), created_at: new Date().toISOString() };
        this.#insert.run(row.network, row.sandbox_id, row.address, row.mac, row.created_at);
        return this.#toLease(row);
      })
      .immediate();
  }

  /** Gives the sandbox's address back to the pool. False if it had none. */
  release(sandboxId: string): boolean {
    return this.#delete.run(this.network, sandboxId).changes > 0;
  }

  /** The sandbox's lease, if it has one. */
  get(sandboxId: string): Lease | undefined {
    const row = this.#select.get(this.network, sandboxId) as LeaseRow | undefined;
    return row ? this.#toLease(row) : undefined;
  }

  /** Every lease of this pool, by address. */
  list(): Lease[] {
    return (this.#selectAll.all(this.network) as LeaseRow[]).map((r) => this.#toLease(r));
  }

  /**
   * Releases the leases of sandboxes that `keep` says are gone (a runtime
   * opening after a crash, or after sandboxes were removed behind its back).
   * Returns the leases it released.
   */
  reclaim(keep: (sandboxId: string) => boolean): Lease[] {
    return this.#db
      .transaction((): Lease[] => {
        const released: Lease[] = [];
        for (const row of this.#selectAll.all(this.network) as LeaseRow[]) {
          if (keep(row.sandbox_id)) continue;
          this.#delete.run(this.network, row.sandbox_id);
          released.push(this.#toLease(row));
        }
        return released;
      })
      .immediate();
  }

  #usable(address: number): boolean {
    return address >= this.#first && address <= this.#last && address !== this.#gateway;
  }

  #lowestFree(): number {
    let candidate = this.#first;
    for (const { address } of this.#used.all(this.network, this.#first, this.#last) as { address: number }[]) {
      if (candidate === this.#gateway) candidate++;
      if (address > candidate) break;
      if (address === candidate) candidate++;
    }
    if (candidate === this.#gateway) candidate++;
    if (candidate > this.#last) {
      throw new RoostError(
        'RESOURCE_EXHAUSTED',
        `every address of bridge ${this.network}'s subnet ${this.subnet} is leased (${this.capacity} for sandboxes): remove sandboxes you no longer need (\`roost rm\`), or configure a larger subnet for the bridge`,
        { details: { network: this.network, subnet: this.subnet, capacity: this.capacity } },
      );
    }
    return candidate;
  }

  #toLease(row: LeaseRow): Lease {
    return {
      network: row.network,
      sandboxId: row.sandbox_id,
      address: intToIpv4(row.address),
      prefix: this.prefix,
      gateway: this.gateway,
      mac: row.mac,
      createdAt: row.created_at,
    };
  }
}
