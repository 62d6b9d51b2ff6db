import { spawn } from 'node:child_process';
import { cidrWithin, formatCidr, intToIpv4, ipv4ToInt, parseCidr, parseEgressRule, type EgressPolicy, type EgressRule, type PortProtocol } from '@roost/api';
import { RoostError } from '../errors.js';

/*
 * Bridge mode's packet filter: iptables (IPv4 filter and nat tables) for NAT
 * and the egress policy, ebtables for anti-spoofing on each TAP. Every
 * function here is idempotent: safe to run twice, and safe after a crash
 * left half of its work done.
 *
 * Chains (BR = the bridge's name, ID = the sandbox id):
 *   filter  ROOST-FWD-BR   <- FORWARD (-i BR, -o BR): established/related; per-sandbox jumps; REJECT the rest
 *   filter  ROOST-IN-BR    <- INPUT (-i BR): established/related; per-sandbox jumps; REJECT the rest
 *   nat     ROOST-NAT-BR   <- POSTROUTING: MASQUERADE of the subnet leaving by another interface
 *   filter  ROOST-E-ID     <- ROOST-FWD-BR (-s ADDRESS -i BR): the sandbox's egress policy
 *   filter  ROOST-H-ID     <- ROOST-IN-BR (-s ADDRESS -i BR): what of the host the sandbox may reach (DNS, `host` rules)
 *   filter  ROOST-L-ID     <- ROOST-E-ID: addresses learned from DNS answers, each with its expiry
 *   bridge  ROOST-A-ID     <- INPUT, FORWARD (-i TAP): only IPv4 and ARP from the sandbox's own address (and MAC)
 *
 * Packets are matched to a sandbox by source address on the bridge, and the
 * ebtables chain keeps a guest from sending with another address (or any
 * frame that is not IPv4 or ARP: no IPv6, no VLAN tags).
 *
 * Traffic between sandboxes (peers) is bridged, not routed, and bridged
 * frames pass iptables only through br_netfilter: ensureBridge turns it on
 * for the bridge alone (the bridge option nf_call_iptables, see bridge.ts),
 * and then a peer connection goes through ROOST-FWD-BR -> ROOST-E-ID like
 * any other egress: the sender's policy decides (CIDR, port and protocol
 * rules; `default: 'allow'` reaches peers), a denied one is REJECTed with
 * ICMP administratively prohibited and counted, and conntrack lets the
 * answers to a connection a peer opened through, so a deny-all sandbox
 * still serves its peers. Rules naming host names do not reach peers (names
 * are enforced through DNS, and peers are not in DNS). Broadcast and
 * multicast between peers are dropped without counting them: sandboxes
 * reach each other by unicast to their leased addresses only. Without
 * br_netfilter, bridge ports are isolated instead and peers cannot reach
 * each other at all (bridge.ts).
 */

/** Where host networking commands run. */
export interface HostNetOptions {
  /** A network namespace to run in (`ip netns exec NAME ...`): tests use one of their own. Default: the caller's namespace. */
  netns?: string;
}

interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The Debian package of each command Roost runs for bridge networking. */
const PACKAGE_OF: Readonly<Record<string, string>> = {
  ip: 'iproute2',
  iptables: 'iptables',
  'iptables-restore': 'iptables',
  ebtables: 'iptables', // ebtables-nft; hosts on the legacy backend have it from the package ebtables
};

const COMMAND_TIMEOUT_MS = 30_000;

function missingCommand(cmd: string, cause?: unknown): RoostError {
  const pkg = PACKAGE_OF[cmd] ?? cmd;
  return new RoostError(
    'SETUP_REQUIRED',
    `bridge networking needs \`${cmd}\`, which is not installed: install the Debian package ${pkg} (\`apt-get install ${pkg}\`), or use network mode 'user'`,
    {
      ...(cause === undefined ? {} : { cause }),
      details: { command: cmd, package: pkg },
    },
  );
}

/** Runs a command (in `opts.netns` if given); resolves with its exit code and output, never rejects on a non-zero exit. */
export function hostCommand(cmd: string, args: readonly string[], opts: HostNetOptions & { input?: string } = {}): Promise<CommandResult> {
  const argv = opts.netns === undefined ? [cmd, ...args] : ['ip', 'netns', 'exec', opts.netns, cmd, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], timeout: COMMAND_TIMEOUT_MS });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e: NodeJS.ErrnoException) => reject(e.code === 'ENOENT' ? missingCommand(argv[0]!, e) : e));
    child.on('close', (code, signal) => {
      if (opts.netns !== undefined && /^exec of ".*" failed: No such file or directory/m.test(stderr)) return reject(missingCommand(cmd));
      if (signal) return reject(new RoostError('TIMEOUT', `\`${argv.join(' ')}\` did not finish in ${COMMAND_TIMEOUT_MS / 1000} s (killed by ${signal})`));
      resolve({ code: code ?? -1, stdout, stderr });
    });
    child.stdin.on('error', () => {}); // a command that exits early closes its stdin: its exit status says why
    child.stdin.end(opts.input ?? '');
  });
}

/** Runs a command; NETWORK error (PERMISSION_DENIED when not root) on a non-zero exit. */
export async function mustRun(cmd: string, args: readonly string[], opts: HostNetOptions & { input?: string } = {}): Promise<string> {
  const r = await hostCommand(cmd, args, opts);
  if (r.code !== 0) {
    const what = `\`${cmd} ${args.join(' ')}\`${opts.netns ? ` (in network namespace ${opts.netns})` : ''}`;
    const err = r.stderr.trim() || r.stdout.trim() || `exit status ${r.code}`;
    if (/permission denied|operation not permitted|you must be root/i.test(err)) {
      throw new RoostError('PERMISSION_DENIED', `${what} failed: ${err}: bridge networking needs root (CAP_NET_ADMIN)`);
    }
    throw new RoostError('NETWORK', `${what} failed: ${err}`, { details: { command: [cmd, ...args], stderr: r.stderr } });
  }
  return r.stdout;
}

/** One change to the packet filter at a time in this process: check-then-add must not interleave. */
let filterQueue: Promise<unknown> = Promise.resolve();
function serialized<T>(fn: () => Promise<T>): Promise<T> {
  const next = filterQueue.then(fn, fn);
  filterQueue = next.catch(() => {});
  return next;
}

function iptables(args: readonly string[], opts: HostNetOptions): Promise<string> {
  return mustRun('iptables', ['-w', '30', ...args], opts);
}

async function iptablesOk(args: readonly string[], opts: HostNetOptions): Promise<boolean> {
  return (await hostCommand('iptables', ['-w', '30', ...args], opts)).code === 0;
}

async function chainExists(table: string, chain: string, opts: HostNetOptions): Promise<boolean> {
  return iptablesOk(['-t', table, '-S', chain], opts);
}

async function ensureChain(table: string, chain: string, opts: HostNetOptions): Promise<void> {
  if (!(await chainExists(table, chain, opts))) await iptables(['-t', table, '-N', chain], opts);
}

/** Adds a rule unless it is there: appended, or inserted at `position`. */
async function ensureRule(table: string, chain: string, rule: readonly string[], opts: HostNetOptions, position?: number): Promise<void> {
  if (await iptablesOk(['-t', table, '-C', chain, ...rule], opts)) return;
  await iptables(['-t', table, ...(position === undefined ? ['-A', chain] : ['-I', chain, String(position)]), ...rule], opts);
}

/** Deletes every copy of a rule. */
async function deleteRule(table: string, chain: string, rule: readonly string[], opts: HostNetOptions): Promise<void> {
  for (let i = 0; i < 100 && (await iptablesOk(['-t', table, '-D', chain, ...rule], opts)); i++);
}

async function deleteChain(table: string, chain: string, opts: HostNetOptions): Promise<void> {
  if (!(await chainExists(table, chain, opts))) return;
  await iptables(['-t', table, '-F', chain], opts);
  await iptables(['-t', table, '-X', chain], opts);
}

/** The rules of a chain as `iptables -S` prints them, each split into arguments (without `-A CHAIN`). */
async function listRules(table: string, chain: string, opts: HostNetOptions): Promise<string[][]> {
  const r = await hostCommand('iptables', ['-w', '30', '-t', table, '-S', chain], opts);
  if (r.code !== 0) return [];
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('-A '))
    .map((l) => splitArgs(l).slice(2));
}

/** Splits an `iptables -S` line into arguments (double-quoted ones may hold spaces). */
export function splitArgs(line: string): string[] {
  const args: string[] = [];
  for (const m of line.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) args.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]!);
  return args;
}

function argValue(args: readonly string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

// ---- names --------------------------------------------------------------------

const INTERFACE_NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$/;
/** Sandbox ids are 12 hex digits; anything else of at most 20 safe characters keeps chain names within iptables' 28. */
const SANDBOX_ID_RE = /^[a-zA-Z0-9_]{1,20}$/;

/** Throws INVALID_ARGUMENT unless `name` is a usable interface name (bridge or TAP). */
export function checkInterfaceName(name: string, what: string): void {
  if (!INTERFACE_NAME_RE.test(name))
    throw new RoostError('INVALID_ARGUMENT', `"${name}" is not a usable ${what} name: use 1 to 15 letters, digits, '_', '.' or '-'`);
}

function checkSandboxId(id: string): void {
  if (!SANDBOX_ID_RE.test(id)) throw new RoostError('INVALID_ARGUMENT', `"${id}" is not a sandbox id (12 hex digits)`);
}

/** The iptables and ebtables chains of a bridge and of a sandbox. */
export const chains = {
  forward: (bridge: string) => `ROOST-FWD-${bridge}`,
  input: (bridge: string) => `ROOST-IN-${bridge}`,
  nat: (bridge: string) => `ROOST-NAT-${bridge}`,
  egress: (id: string) => `ROOST-E-${id}`,
  host: (id: string) => `ROOST-H-${id}`,
  learned: (id: string) => `ROOST-L-${id}`,
  antiSpoof: (id: string) => `ROOST-A-${id}`,
};

const REJECT = ['-j', 'REJECT', '--reject-with', 'icmp-admin-prohibited'];
const ESTABLISHED = ['-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', '-j', 'ACCEPT'];
const NOT_UNICAST_DROP = ['-m', 'pkttype', '!', '--pkt-type', 'unicast', '-j', 'DROP'];
/** Rules ROOST-FWD-BR starts with (established, non-unicast); sandbox jumps go after them. */
const FORWARD_HEAD = 2;
/** Rules ROOST-IN-BR starts with (established, non-unicast); sandbox jumps go after them. */
const INPUT_HEAD = 2;

// ---- the bridge's chains ------------------------------------------------------------

/**
 * The bridge's NAT and filter chains and the jumps to them. Only what is
 * missing is added; a MASQUERADE rule for another subnet (the bridge's
 * subnet was changed) is removed.
 */
export function ensureBridgeFirewall(config: { name: string; subnet: string }, opts: HostNetOptions = {}): Promise<void> {
  checkInterfaceName(config.name, 'bridge');
  const subnet = formatCidr(parseCidr(config.subnet));
  const br = config.name;
  return serialized(async () => {
    const fwd = chains.forward(br);
    const inp = chains.input(br);
    const nat = chains.nat(br);
    // Chains first, filled, then the jumps to them: a half-built chain is never in use.
    await ensureChain('filter', fwd, opts);
    await ensureRule('filter', fwd, ESTABLISHED, opts, 1);
    // Broadcast and multicast between peers (bridged frames, with br_netfilter): dropped without counting them as denied.
    await ensureRule('filter', fwd, NOT_UNICAST_DROP, opts, 2);
    await ensureRule('filter', fwd, REJECT, opts);
    await ensureChain('filter', inp, opts);
    await ensureRule('filter', inp, ESTABLISHED, opts, 1);
    // Broadcast and multicast (DHCP discovery, IGMP, mDNS) from guests: dropped without counting them as denied.
    await ensureRule('filter', inp, NOT_UNICAST_DROP, opts, 2);
    await ensureRule('filter', inp, REJECT, opts);
    await ensureChain('nat', nat, opts);
    const masquerade = ['-s', subnet, '!', '-o', br, '-j', 'MASQUERADE'];
    for (const rule of await listRules('nat', nat, opts)) {
      if (rule.join(' ') !== masquerade.join(' ')) await iptables(['-t', 'nat', '-D', nat, ...rule], opts);
    }
    await ensureRule('nat', nat, masquerade, opts);
    await ensureRule('filter', 'FORWARD', ['-i', br, '-j', fwd], opts, 1);
    await ensureRule('filter', 'FORWARD', ['-o', br, '-j', fwd], opts, 1);
    await ensureRule('filter', 'INPUT', ['-i', br, '-j', inp], opts, 1);
    await ensureRule('nat', 'POSTROUTING', ['-j', nat], opts, 1);
  });
}

/** Removes the bridge's chains, the jumps to them, and the egress chains of every sandbox still on it. */
export function teardownBridgeFirewall(bridge: string, opts: HostNetOptions = {}): Promise<void> {
  checkInterfaceName(bridge, 'bridge');
  return serialized(async () => {
    const fwd = chains.forward(bridge);
    const inp = chains.input(bridge);
    const nat = chains.nat(bridge);
    const ids = new Set<string>();
    for (const chain of [fwd, inp]) {
      for (const rule of await listRules('filter', chain, opts)) {
        const m = /^ROOST-[EH]-(.+)$/.exec(argValue(rule, '-j') ?? '');
        if (m) ids.add(m[1]!);
      }
    }
    await deleteRule('filter', 'FORWARD', ['-i', bridge, '-j', fwd], opts);
    await deleteRule('filter', 'FORWARD', ['-o', bridge, '-j', fwd], opts);
    await deleteRule('filter', 'INPUT', ['-i', bridge, '-j', inp], opts);
    await deleteRule('nat', 'POSTROUTING', ['-j', nat], opts);
    await deleteChain('filter', fwd, opts);
    await deleteChain('filter', inp, opts);
    await deleteChain('nat', nat, opts);
    for (const id of ids) await removeSandboxFilter(id, opts);
  });
}

// ---- a sandbox's egress policy ---------------------------------------------------------

/** A sandbox on a bridge, as the packet filter knows it. */
export interface BridgeSandbox {
  id: string;
  /** Its TAP device. */
  tap: string;
  /** Its leased address. */
  address: string;
  /** Its MAC; when given, frames from the TAP must carry it. */
  mac?: string;
  /** The bridge its TAP is on. */
  bridge: string;
}

const LINK_LOCAL = parseCidr('169.254.0.0/16');
/** `multiport` takes 15 ports per rule, a range counting as two. */
const MULTIPORT_MAX = 15;

/** The `-p` / `--dports` variants of a rule: one per protocol and per 15 ports. */
function portMatches(rule: Pick<EgressRule, 'ports' | 'protocol'>): string[][] {
  const protocols: Array<PortProtocol | undefined> = rule.protocol ? [rule.protocol] : rule.ports ? ['tcp', 'udp'] : [undefined];
  const portGroups: string[][] = [];
  if (rule.ports) {
    let group: string[] = [];
    let weight = 0;
    for (const [lo, hi] of rule.ports) {
      const w = lo === hi ? 1 : 2;
      if (weight + w > MULTIPORT_MAX) {
        portGroups.push(group);
        group = [];
        weight = 0;
      }
      group.push(lo === hi ? String(lo) : `${lo}:${hi}`);
      weight += w;
    }
    portGroups.push(group);
  }
  const out: string[][] = [];
  for (const p of protocols) {
    if (p === undefined) out.push([]);
    else if (portGroups.length === 0) out.push(['-p', p]);
    else for (const g of portGroups) out.push(['-p', p, '-m', 'multiport', '--dports', g.join(',')]);
  }
  return out;
}

function destination(rule: EgressRule): string[] | null {
  if (rule.target.kind === 'any') return [];
  if (rule.target.kind === 'cidr') return ['-d', formatCidr(rule.target)];
  return null;
}

/**
 * The iptables rules of a sandbox's egress policy (arguments after
 * `-A CHAIN`): `egress` for traffic it sends through the host or to peers
 * on its bridge (ROOST-E-ID), `host` for traffic to the host itself
 * (ROOST-H-ID: the gateway, or any other address of the host). Deny rules
 * come first, then allow rules, then
 * the default, as EgressFilter evaluates a policy. The host is reachable for
 * DNS on the gateway, and otherwise only through `host` allow rules;
 * link-local addresses only through a CIDR inside 169.254.0.0/16.
 * Rules naming host names are enforced through DNS (allowLearned), not here.
 */
export function egressRules(id: string, policy: EgressPolicy, gateway: string): { egress: string[][]; host: string[][] } {
  checkSandboxId(id);
  ipv4ToInt(gateway);
  const deny = policy.deny.map(parseEgressRule);
  const allow = policy.allow.map(parseEgressRule);
  const egress: string[][] = [];
  const host: string[][] = [];
  for (const r of deny) {
    const dest = destination(r);
    if (dest) for (const m of portMatches(r)) egress.push([...dest, ...m, ...REJECT]);
    // As in EgressFilter, a deny rule reaches the host too when it names it, is `*`, or is a CIDR holding its address.
    const hostDest = r.target.kind === 'host' ? [] : dest;
    if (hostDest) for (const m of portMatches(r)) host.push([...hostDest, ...m, ...REJECT]);
  }
  const isLinkLocal = (r: EgressRule) => r.target.kind === 'cidr' && cidrWithin(r.target, LINK_LOCAL);
  for (const r of allow.filter(isLinkLocal)) for (const m of portMatches(r)) egress.push([...destination(r)!, ...m, '-j', 'ACCEPT']);
  egress.push(['-d', formatCidr(LINK_LOCAL), ...REJECT]);
  for (const r of allow) {
    const dest = destination(r);
    if (dest && !isLinkLocal(r)) for (const m of portMatches(r)) egress.push([...dest, ...m, '-j', 'ACCEPT']);
    if (r.target.kind === 'host') for (const m of portMatches(r)) host.push([...m, '-j', 'ACCEPT']);
  }
  egress.push(['-j', chains.learned(id)]);
  egress.push(policy.default === 'allow' ? ['-j', 'ACCEPT'] : REJECT);
  // DNS on the gateway comes before any rule: names are how deny-by-default policies allow anything.
  host.unshift(['-d', `${gateway}/32`, '-p', 'udp', '--dport', '53', '-j', 'ACCEPT'], ['-d', `${gateway}/32`, '-p', 'tcp', '--dport', '53', '-j', 'ACCEPT']);
  host.push(REJECT);
  return { egress, host };
}

/**
 * Installs (or replaces) a sandbox's egress policy: its ROOST-E and ROOST-H
 * chains, in one iptables-restore transaction with the jumps to them, and
 * its anti-spoofing chain on the TAP. The bridge's chains must exist
 * (ensureBridge). Replacing the policy keeps the learned addresses and
 * starts the denied counters from zero.
 */
export function applyEgress(sandbox: BridgeSandbox, policy: EgressPolicy, gateway: string, opts: HostNetOptions = {}): Promise<void> {
  checkSandboxId(sandbox.id);
  checkInterfaceName(sandbox.tap, 'TAP');
  checkInterfaceName(sandbox.bridge, 'bridge');
  const address = intToIpv4(ipv4ToInt(sandbox.address));
  if (sandbox.mac !== undefined && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(sandbox.mac)) {
    throw new RoostError('INVALID_ARGUMENT', `"${sandbox.mac}" is not a MAC address (like 02:52:0a:58:00:02)`);
  }
  const { egress, host } = egressRules(sandbox.id, policy, gateway);
  return serialized(async () => {
    const fwd = chains.forward(sandbox.bridge);
    const inp = chains.input(sandbox.bridge);
    if (!(await chainExists('filter', fwd, opts)) || !(await chainExists('filter', inp, opts))) {
      throw new RoostError(
        'INVALID_STATE',
        `the packet filter of bridge ${sandbox.bridge} is not set up (no chain ${fwd}): set up the bridge first (ensureBridge)`,
      );
    }
    const e = chains.egress(sandbox.id);
    const h = chains.host(sandbox.id);
    const l = chains.learned(sandbox.id);
    const lines = ['*filter', `:${e} - [0:0]`, `:${h} - [0:0]`]; // declared chains are created, or flushed
    if (!(await chainExists('filter', l, opts))) lines.push(`:${l} - [0:0]`);
    for (const r of egress) lines.push(`-A ${e} ${r.join(' ')}`);
    for (const r of host) lines.push(`-A ${h} ${r.join(' ')}`);
    // Jumps from the bridge's chains: the right one once, none with a stale address.
    for (const [chain, target, head] of [
      [fwd, e, FORWARD_HEAD],
      [inp, h, INPUT_HEAD],
    ] as const) {
      const want = ['-s', `${address}/32`, '-i', sandbox.bridge, '-j', target];
      let present = false;
      for (const rule of await listRules('filter', chain, opts)) {
        if (argValue(rule, '-j') !== target) continue;
        if (!present && rule.join(' ') === want.join(' ')) present = true;
        else lines.push(`-D ${chain} ${rule.join(' ')}`);
      }
      if (!present) lines.push(`-I ${chain} ${head + 1} ${want.join(' ')}`);
    }
    lines.push('COMMIT', '');
    await mustRun('iptables-restore', ['-w', '30', '--noflush'], { ...opts, input: lines.join('\n') });
    await ensureAntiSpoof(sandbox, address, opts);
  });
}

/** Removes a sandbox's chains and every jump to them (absent ones are fine). */
export function removeEgress(sandbox: { id: string }, opts: HostNetOptions = {}): Promise<void> {
  checkSandboxId(sandbox.id);
  return serialized(() => removeSandboxFilter(sandbox.id, opts));
}

async function removeSandboxFilter(id: string, opts: HostNetOptions): Promise<void> {
  const ours = new Set([chains.egress(id), chains.host(id), chains.learned(id)]);
  // Jumps can only be in chains of ours (a bridge's, or the sandbox's own), wherever they are.
  const all = await hostCommand('iptables', ['-w', '30', '-t', 'filter', '-S'], opts);
  for (const line of all.stdout.split('\n')) {
    if (!line.startsWith('-A ')) continue;
    const args = splitArgs(line);
    const target = argValue(args, '-j');
    if (target !== undefined && ours.has(target) && !ours.has(args[1]!)) await iptables(['-D', ...args.slice(1)], opts);
  }
  for (const chain of [chains.egress(id), chains.host(id)]) if (await chainExists('filter', chain, opts)) await iptables(['-F', chain], opts);
  for (const chain of ours) await deleteChain('filter', chain, opts);
  await removeAntiSpoof(id, opts);
}

// ---- anti-spoofing (ebtables) ----------------------------------------------------------

function ebtables(args: readonly string[], opts: HostNetOptions): Promise<string> {
  return mustRun('ebtables', ['--concurrent', ...args], opts);
}

/** Rules of an ebtables chain as printed by `ebtables -L`, or null when it does not exist. */
async function ebtablesRules(chain: string, opts: HostNetOptions): Promise<string[] | null> {
  const r = await hostCommand('ebtables', ['--concurrent', '-L', chain], opts);
  if (r.code !== 0) return null;
  return r.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('Bridge '));
}

/** MACs print as `2:52:a:58:0:2` or `02:52:0a:58:00:02` depending on the ebtables build. */
function normalizeMacs(rule: string): string {
  return rule.replace(/\b[0-9a-f]{1,2}(:[0-9a-f]{1,2}){5}\b/gi, (mac) =>
    mac
      .split(':')
      .map((o) => parseInt(o, 16).toString(16))
      .join(':'),
  );
}

async function ensureAntiSpoof(sandbox: BridgeSandbox, address: string, opts: HostNetOptions): Promise<void> {
  const chain = chains.antiSpoof(sandbox.id);
  const mac = sandbox.mac ? ['-s', sandbox.mac.toLowerCase()] : [];
  // ebtables-nft has no policy for user chains: the last rule drops what the others did not let through.
  const want = [
    ['-p', 'IPv4', ...mac, '--ip-src', address, '-j', 'RETURN'],
    ['-p', 'ARP', ...mac, '--arp-ip-src', address, '-j', 'RETURN'],
    ['-j', 'DROP'],
  ];
  const have = await ebtablesRules(chain, opts);
  if (have === null) await ebtables(['-N', chain], opts);
  if (have === null || have.map(normalizeMacs).join('\n') !== want.map((r) => normalizeMacs(r.join(' '))).join('\n')) {
    if (have !== null) await ebtables(['-F', chain], opts);
    for (const r of want) await ebtables(['-A', chain, ...r], opts);
  }
  for (const hook of ['INPUT', 'FORWARD']) {
    const jump = `-i ${sandbox.tap} -j ${chain}`;
    const rules = (await ebtablesRules(hook, opts)) ?? [];
    // A jump from another TAP (the sandbox's TAP was renamed) goes; ours is added once.
    for (const r of rules) if (r.endsWith(`-j ${chain}`) && r !== jump) await ebtables(['-D', hook, ...r.split(' ')], opts);
    if (!rules.includes(jump)) await ebtables(['-A', hook, '-i', sandbox.tap, '-j', chain], opts);
  }
}

async function removeAntiSpoof(id: string, opts: HostNetOptions): Promise<void> {
  const chain = chains.antiSpoof(id);
  for (const hook of ['INPUT', 'FORWARD']) {
    for (const r of (await ebtablesRules(hook, opts)) ?? []) if (r.endsWith(`-j ${chain}`)) await ebtables(['-D', hook, ...r.split(' ')], opts);
  }
  if ((await ebtablesRules(chain, opts)) !== null) {
    await ebtables(['-F', chain], opts);
    await ebtables(['-X', chain], opts);
  }
}

// ---- addresses learned from DNS --------------------------------------------------------------

/** At most this many learned rules per sandbox: past it, the ones expiring soonest go first. */
export const MAX_LEARNED_RULES = 512;
const EXPIRES_RE = /^roost-expires=(\d+)$/;
/** A learned address's lifetime is clamped to this range (as EgressFilter.learn does). */
const MIN_LEARNED_TTL = 60;
const MAX_LEARNED_TTL = 86_400;

interface LearnedRule {
  args: string[];
  /** Unix seconds. */
  expires: number;
  /** The rule without its expiry: the same grant learned again replaces it. */
  key: string;
}

/** A rule's arguments without its `-m comment --comment TEXT`. */
function withoutComment(args: readonly string[]): string[] {
  const i = args.findIndex((a, j) => a === '-m' && args[j + 1] === 'comment');
  return i < 0 ? [...args] : [...args.slice(0, i), ...args.slice(i + 4)];
}

async function learnedRules(id: string, opts: HostNetOptions): Promise<LearnedRule[]> {
  return (await listRules('filter', chains.learned(id), opts)).map((args) => ({
    args,
    expires: Number(EXPIRES_RE.exec(argValue(args, '--comment') ?? '')?.[1] ?? 0),
    key: withoutComment(args).join(' '),
  }));
}

/**
 * Lets a sandbox reach `addresses` (which a name its policy allows resolved
 * to) on the rule's ports and protocol, for `ttlSeconds` (clamped to 60 s .. 1 day).
 * Learning a grant again extends it. Expired grants are removed here and by
 * pruneLearned; a sandbox holds at most MAX_LEARNED_RULES of them. Resolve
 * before the DNS answer goes to the guest, so its first connection is allowed.
 */
export function allowLearned(
  sandbox: { id: string },
  addresses: string | readonly string[],
  ports: Array<[number, number]> | undefined,
  protocol: PortProtocol | undefined,
  ttlSeconds: number,
  opts: HostNetOptions = {},
): Promise<void> {
  checkSandboxId(sandbox.id);
  const list = (typeof addresses === 'string' ? [addresses] : [...addresses]).map((a) => intToIpv4(ipv4ToInt(a)));
  const expires = Math.floor(Date.now() / 1000) + Math.min(MAX_LEARNED_TTL, Math.max(MIN_LEARNED_TTL, Number.isFinite(ttlSeconds) ? Math.ceil(ttlSeconds) : 0));
  return serialized(async () => {
    const chain = chains.learned(sandbox.id);
    if (!(await chainExists('filter', chain, opts))) {
      throw new RoostError('INVALID_STATE', `sandbox ${sandbox.id} has no egress chains: apply its policy first (applyEgress)`);
    }
    const now = Math.floor(Date.now() / 1000);
    const fresh: string[][] = [];
    for (const address of list) {
      for (const m of portMatches({ ...(ports ? { ports } : {}), ...(protocol ? { protocol } : {}) })) {
        fresh.push(['-d', `${address}/32`, ...m, '-m', 'comment', '--comment', `roost-expires=${expires}`, '-j', 'ACCEPT']);
      }
    }
    const freshKeys = new Set(fresh.map((r) => withoutComment(r).join(' ')));
    const existing = await learnedRules(sandbox.id, opts);
    const remove = existing.filter((r) => r.expires <= now || freshKeys.has(r.key));
    const kept = existing.filter((r) => !remove.includes(r)).sort((a, b) => a.expires - b.expires);
    const overflow = kept.length + fresh.length - MAX_LEARNED_RULES;
    if (overflow > 0) remove.push(...kept.slice(0, overflow));
    const lines = [
      '*filter',
      ...remove.map((r) => `-D ${chain} ${quoteArgs(r.args)}`),
      ...fresh.slice(-MAX_LEARNED_RULES).map((r) => `-A ${chain} ${quoteArgs(r)}`),
      'COMMIT',
      '',
    ];
    await mustRun('iptables-restore', ['-w', '30', '--noflush'], { ...opts, input: lines.join('\n') });
  });
}

/** Removes a sandbox's expired learned grants. */
export function pruneLearned(sandbox: { id: string }, opts: HostNetOptions = {}): Promise<number> {
  checkSandboxId(sandbox.id);
  return serialized(async () => {
    const now = Math.floor(Date.now() / 1000);
    const expired = (await learnedRules(sandbox.id, opts)).filter((r) => r.expires <= now);
    if (expired.length === 0) return 0;
    const lines = ['*filter', ...expired.map((r) => `-D ${chains.learned(sandbox.id)} ${quoteArgs(r.args)}`), 'COMMIT', ''];
    await mustRun('iptables-restore', ['-w', '30', '--noflush'], { ...opts, input: lines.join('\n') });
    return expired.length;
  });
}

function quoteArgs(args: readonly string[]): string {
  return args.map((a) => (/^[\w.,:/=!+-]+$/.test(a) ? a : `"${a.replace(/["\\]/g, '\\$&')}"`)).join(' ');
}

// ---- counters -------------------------------------------------------------------

/**
 * Packets the sandbox's policy rejected since it was last applied: the sum of
 * the packet counters of the REJECT rules in its chains (0 when it has none).
 */
export async function deniedCount(sandbox: { id: string }, opts: HostNetOptions = {}): Promise<number> {
  checkSandboxId(sandbox.id);
  let total = 0;
  for (const chain of [chains.egress(sandbox.id), chains.host(sandbox.id)]) {
    const r = await hostCommand('iptables', ['-w', '30', '-L', chain, '-v', '-x', '-n'], opts);
    if (r.code !== 0) continue;
    for (const line of r.stdout.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f[2] === 'REJECT' && /^\d+$/.test(f[0] ?? '')) total += Number(f[0]);
    }
  }
  return total;
}
