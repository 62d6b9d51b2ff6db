import { cidrContains, cidrWithin, parseEgressRule, type Cidr, type EgressPolicy, type EgressRule, type PortProtocol } from '@roost/api';

/** The name a sandbox resolves to reach the host (when a `host` rule allows it). */
export const HOST_NAME = 'host.roost.internal';

const LOOPBACK: Cidr = { address: 0x7f000000, prefix: 8 };
const LINK_LOCAL: Cidr = { address: 0xa9fe0000, prefix: 16 };

/** DNS answers are trusted for at least this long, so short TTLs do not break connections opened right after a lookup. */
const MIN_LEARNED_TTL_S = 60;
/** ... and at most this long, so a huge TTL cannot pin an address forever. */
const MAX_LEARNED_TTL_S = 86_400;
const DEFAULT_MAX_LEARNED = 4096;

/** What EgressFilter.check() decided, and the rule text that decided it (absent when the default did). */
export interface EgressDecision {
  allowed: boolean;
  rule?: string;
}

export interface EgressFilterOptions {
  /**
   * The addresses that mean "the host" in this network mode, as the filter
   * sees them: in user mode 127.0.0.1 (connections to the gateway are
   * checked after they are translated to it), in bridge mode the bridge's
   * gateway address. Only a `host` rule allows them.
   */
  hostAddresses: number[];
  /** Cap of remembered (address, rule) pairs from DNS answers; the oldest go first. Default 4096. */
  maxLearned?: number;
  /** Clock in ms (tests). Default Date.now. */
  now?: () => number;
}

interface LearnedEntry {
  name: string;
  address: number;
  expiresAt: number;
}

/**
 * An egress policy, parsed once and evaluated per connection: a matching
 * deny rule denies, else a matching allow rule allows, else the default.
 * The host and the special ranges (127.0.0.0/8, 169.254.0.0/16, cloud
 * metadata) are never reached through the default, `*`, a wide CIDR or a
 * DNS answer: only a `host` rule (for the host) or a CIDR inside 127/8 or
 * 169.254/16 allows them. Addresses a DNS answer gave for a name that an
 * allow rule lists are allowed, on that rule's ports and protocol, until the
 * answer's TTL (at least 60 s) ends.
 *
 * Pure and synchronous: the user-mode stack calls it per flow, bridge mode
 * for its iptables rules.
 */
export class EgressFilter {
  readonly policy: EgressPolicy;
  readonly #allow: EgressRule[];
  readonly #deny: EgressRule[];
  readonly #hostAddresses: Set<number>;
  readonly #maxLearned: number;
  readonly #now: () => number;
  /** `${address}/${allow rule index}` -> entry; Map order is insertion order, so the first key is the oldest. */
  readonly #learned = new Map<string, LearnedEntry>();

  /** Throws RoostError INVALID_ARGUMENT for a rule that does not parse. */
  constructor(policy: EgressPolicy, options: EgressFilterOptions) {
    this.policy = { default: policy.default, allow: [...policy.allow], deny: [...policy.deny] };
    this.#allow = policy.allow.map(parseEgressRule);
    this.#deny = policy.deny.map(parseEgressRule);
    this.#hostAddresses = new Set(options.hostAddresses.map((a) => a >>> 0));
    this.#maxLearned = Math.max(1, options.maxLearned ?? DEFAULT_MAX_LEARNED);
    this.#now = options.now ?? Date.now;
  }

  /** May the sandbox open a `protocol` flow to `address` (unsigned IPv4) port `port`? */
  check(address: number, port: number, protocol: PortProtocol): EgressDecision {
    address >>>= 0;
    for (const rule of this.#deny) {
      if (portMatches(rule, port, protocol) && this.#denyTargetMatches(rule, address)) return { allowed: false, rule: rule.text };
    }
    const special = this.#isSpecial(address);
    for (let i = 0; i < this.#allow.length; i++) {
      const rule = this.#allow[i]!;
      if (portMatches(rule, port, protocol) && this.#allowTargetMatches(rule, i, address, special)) return { allowed: true, rule: rule.text };
    }
    return { allowed: this.policy.default === 'allow' && !special };
  }

  /**
   * May the sandbox resolve `name`? With default allow every name not named
   * by a deny rule; with default deny only names an allow rule lists (or any
   * name under an allow `*` rule). `host.roost.internal` needs a `host` rule.
   */
  allowsName(name: string): boolean {
    const n = normalizeName(name);
    const isHostName = n === HOST_NAME;
    // Only a deny rule for every port and protocol hides a name: `example.com:25` leaves its other ports usable.
    for (const rule of this.#deny) {
      if (rule.ports !== undefined || rule.protocol !== undefined) continue;
      if (nameMatches(rule, n) || (isHostName && rule.target.kind === 'host')) return false;
    }
    if (isHostName) return this.#allow.some((r) => r.target.kind === 'host');
    if (this.policy.default === 'allow') return true;
    return this.#allow.some((r) => r.target.kind === 'any' || nameMatches(r, n));
  }

  /**
   * Remembers that `name` resolved to `addresses` (unsigned IPv4) for
   * `ttlSeconds` (clamped to 60 s .. 1 day), for each allow rule that lists
   * the name. Special addresses (the host, loopback, link-local) are never
   * learned: a DNS answer must not open the host or cloud metadata.
   */
  learn(name: string, addresses: number[], ttlSeconds: number): void {
    const ttl = Math.min(MAX_LEARNED_TTL_S, Math.max(MIN_LEARNED_TTL_S, Number.isFinite(ttlSeconds) ? ttlSeconds : 0));
    this.#learnUntil(normalizeName(name), addresses, this.#now() + ttl * 1000);
  }

  /** Takes over the unexpired addresses `previous` learned, for the names this policy still allows (when a sandbox's policy changes). */
  inheritLearned(previous: EgressFilter): void {
    const now = this.#now();
    for (const entry of previous.#learned.values()) {
      if (entry.expiresAt > now) this.#learnUntil(entry.name, [entry.address], entry.expiresAt);
    }
  }

  /** How many (address, rule) pairs are remembered (tests, metrics). */
  get learnedCount(): number {
    return this.#learned.size;
  }

  /** True for the host's addresses, loopback and link-local: reached only through rules that name them. */
  isSpecial(address: number): boolean {
    return this.#isSpecial(address >>> 0);
  }

  #isSpecial(address: number): boolean {
    return this.#hostAddresses.has(address) || cidrContains(LOOPBACK, address) || cidrContains(LINK_LOCAL, address);
  }

  #denyTargetMatches(rule: EgressRule, address: number): boolean {
    const t = rule.target;
    switch (t.kind) {
      case 'any':
        return true;
      case 'host':
        return this.#hostAddresses.has(address);
      case 'cidr':
        return cidrContains(t, address);
      case 'name':
        // Denied names never resolve (allowsName), so there is nothing to match by address.
        return false;
    }
  }

  #allowTargetMatches(rule: EgressRule, index: number, address: number, special: boolean): boolean {
    const t = rule.target;
    switch (t.kind) {
      case 'any':
        return !special;
      case 'host':
        return this.#hostAddresses.has(address);
      case 'cidr':
        if (!cidrContains(t, address)) return false;
        return !special || cidrWithin(t, LOOPBACK) || cidrWithin(t, LINK_LOCAL);
      case 'name': {
        if (special) return false;
        const key = `${address}/${index}`;
        const entry = this.#learned.get(key);
        if (entry === undefined) return false;
        if (entry.expiresAt > this.#now()) return true;
        this.#learned.delete(key);
        return false;
      }
    }
  }

  #learnUntil(name: string, addresses: number[], expiresAt: number): void {
    for (let i = 0; i < this.#allow.length; i++) {
      const rule = this.#allow[i]!;
      if (!nameMatches(rule, name)) continue;
      for (const raw of addresses) {
        const address = raw >>> 0;
        if (this.#isSpecial(address)) continue;
        const key = `${address}/${i}`;
        const old = this.#learned.get(key);
        // Delete first so the refreshed entry moves to the young end of the Map.
        this.#learned.delete(key);
        this.#learned.set(key, { name, address, expiresAt: Math.max(expiresAt, old?.expiresAt ?? 0) });
      }
    }
    while (this.#learned.size > this.#maxLearned) {
      const oldest = this.#learned.keys().next();
      if (oldest.done === true) break;
      this.#learned.delete(oldest.value);
    }
  }
}

function normalizeName(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith('.') ? n.slice(0, -1) : n;
}

function nameMatches(rule: EgressRule, name: string): boolean {
  const t = rule.target;
  if (t.kind !== 'name') return false;
  return t.wildcard ? name.length > t.name.length + 1 && name.endsWith(`.${t.name}`) : name === t.name;
}

function portMatches(rule: EgressRule, port: number, protocol: PortProtocol): boolean {
  if (rule.protocol !== undefined && rule.protocol !== protocol) return false;
  if (rule.ports === undefined) return true;
  return rule.ports.some(([lo, hi]) => port >= lo && port <= hi);
}
