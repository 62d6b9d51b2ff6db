import { Option, type Command } from 'commander';
import {
  isIpv4,
  isRoostError,
  parseEgressRule,
  parsePortSpec,
  RoostError,
  type CreateOptions,
  type EgressSpec,
  type NetworkInfo,
  type NetworkMode,
  type NetworkStats,
  type PortBinding,
  type PortMapping,
  type PortProtocol,
} from '@roost/api';
import type { Face, WithFace } from './connect.js';
import { bytes } from './format.js';

/*
 * Networking in the CLI: the flags of `roost run` (-p, --network, --egress,
 * --allow, --deny), `roost port ls|add|rm`, and how ports and networks are
 * printed by `ps` and `inspect`.
 */

/** The network flags of `roost run`, as commander gives them. */
export interface NetworkFlags {
  publish: string[];
  network?: NetworkMode;
  egress?: 'allow' | 'deny';
  allow: string[];
  deny: string[];
}

const collect = (v: string, acc: string[]) => [...acc, v];

/** Adds -p/--publish, --network, --egress, --allow and --deny to a command. */
export function addNetworkFlags(cmd: Command): Command {
  return cmd
    .option(
      '-p, --publish <SPEC>',
      'publish a guest port on the host: [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp], like 8080:80 or 127.0.0.1::80 (a free port); on 127.0.0.1 unless an address is given (repeatable)',
      collect,
      [] as string[],
    )
    .addOption(
      new Option('--network <mode>', 'user (default: NAT run by Roost, no root needed), bridge (a TAP on a Linux bridge, needs root) or none (no NIC)').choices(
        ['none', 'user', 'bridge'],
      ),
    )
    .addOption(new Option('--egress <policy>', 'what the sandbox may connect to when no rule matches: allow (the default) or deny').choices(['allow', 'deny']))
    .option(
      '--allow <RULE>',
      'allow connections to TARGET[:PORTS][/tcp|udp]: an address, a CIDR (10.0.0.0/8), a host name (example.com, *.example.com), * or host; without --egress the default becomes deny (repeatable)',
      collect,
      [] as string[],
    )
    .option('--deny <RULE>', 'deny connections to TARGET[:PORTS][/tcp|udp], even when allowed otherwise (repeatable)', collect, [] as string[]);
}

/**
 * The create options of the network flags, checked here so that a bad flag
 * fails before anything starts (with the flag in the message).
 */
export function networkOptions(flags: NetworkFlags): Pick<CreateOptions, 'network' | 'ports' | 'egress'> {
  for (const spec of flags.publish) withFlag('-p', spec, () => parsePortSpec(spec));
  for (const rule of flags.allow) withFlag('--allow', rule, () => parseEgressRule(rule));
  for (const rule of flags.deny) withFlag('--deny', rule, () => parseEgressRule(rule));
  let egress: EgressSpec | undefined = flags.egress;
  if (flags.allow.length > 0 || flags.deny.length > 0) {
    // Allow rules alone mean "only these": the default turns to deny unless --egress says otherwise.
    const byDefault = flags.egress ?? (flags.allow.length > 0 ? 'deny' : 'allow');
    egress = { default: byDefault, allow: flags.allow, deny: flags.deny };
  }
  if (flags.network === 'none' && (flags.publish.length > 0 || egress !== undefined)) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `--network none gives the sandbox no NIC: drop ${flags.publish.length > 0 ? '-p' : '--egress, --allow and --deny'}, or use --network user`,
    );
  }
  return {
    ...(flags.network !== undefined ? { network: flags.network } : {}),
    ...(flags.publish.length > 0 ? { ports: flags.publish } : {}),
    ...(egress !== undefined ? { egress } : {}),
  };
}

/** Runs a parser of the API, naming the flag in its error. */
function withFlag<T>(flag: string, value: string, parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    if (isRoostError(e, 'INVALID_ARGUMENT')) throw new RoostError('INVALID_ARGUMENT', `${flag} ${value}: ${e.message}`, { cause: e });
    throw e;
  }
}

/** `127.0.0.1:8080->80/tcp`, as `docker ps` shows a published port. */
export function formatBinding(p: PortBinding): string {
  return `${p.hostIp}:${p.hostPort}->${p.guestPort}/${p.protocol}`;
}

/** The PORTS column of `roost ps`. */
export function formatPorts(network: NetworkInfo | undefined): string {
  return (network?.ports ?? []).map(formatBinding).join(', ');
}

/** `80/tcp -> 127.0.0.1:8080`, as `docker port` prints a mapping. */
function portLine(p: PortBinding): string {
  return `${p.guestPort}/${p.protocol} -> ${p.hostIp}:${p.hostPort}`;
}

/** The network rows of `roost inspect` (counters when the sandbox runs). */
export function networkRows(network: NetworkInfo | undefined, stats: NetworkStats | null): [string, string][] {
  if (!network || network.mode === 'none') return [['Network', 'none']];
  const rows: [string, string][] = [['Network', network.mode + (network.bridge ? ` (bridge ${network.bridge})` : '')]];
  if (network.address) rows.push(['Address', `${network.address}/${network.prefix ?? 32}, gateway ${network.gateway ?? '-'}, dns ${network.dns ?? '-'}`]);
  if (network.mac) rows.push(['MAC', network.mac]);
  rows.push(['Ports', network.ports.map(formatBinding).join(', ') || '-']);
  const e = network.egress;
  rows.push(['Egress', [`default ${e.default}`, ...e.allow.map((r) => `allow ${r}`), ...e.deny.map((r) => `deny ${r}`)].join(', ')]);
  if (stats) {
    rows.push([
      'Traffic',
      `in ${bytes(stats.bytesIn)} (${stats.packetsIn} packets), out ${bytes(stats.bytesOut)} (${stats.packetsOut} packets), ${stats.denied} denied`,
    ]);
  }
  return rows;
}

/** `HOSTPORT[/PROTO]` or `HOST_IP:HOSTPORT[/PROTO]`: the published port `roost port rm` removes. */
export function parseHostPort(text: string): { hostPort: number; hostIp?: string; protocol: PortProtocol } {
  const m = /^(?:([\d.]+):)?(\d{1,5})(?:\/(tcp|udp))?$/i.exec(text.trim());
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535 || (m[1] !== undefined && !isIpv4(m[1]))) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `"${text}" is not a published host port: write HOST_PORT[/tcp|udp] or HOST_IP:HOST_PORT[/tcp|udp], like 8080 or 127.0.0.1:5353/udp (see \`roost port ls ID\`)`,
    );
  }
  return { hostPort: port, ...(m[1] !== undefined ? { hostIp: m[1] } : {}), protocol: (m[3]?.toLowerCase() ?? 'tcp') as PortProtocol };
}

/** `GUEST_PORT[/PROTO]`: the filter of `roost port ls`. */
function parseGuestPort(text: string): { guestPort: number; protocol?: PortProtocol } {
  const m = /^(\d{1,5})(?:\/(tcp|udp))?$/i.exec(text.trim());
  if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535)
    throw new RoostError('INVALID_ARGUMENT', `"${text}" is not a guest port: write GUEST_PORT[/tcp|udp], like 80 or 53/udp`);
  return { guestPort: Number(m[1]), ...(m[2] ? { protocol: m[2].toLowerCase() as PortProtocol } : {}) };
}

/**
 * What a detached sandbox made with these flags needs a live owner of the
 * home for, once the command that made it exits (null: nothing it asked
 * for). Published ports, the user-mode stack (and with it the egress
 * policy) and a bridge's DNS are served by the process that owns the
 * sandbox, not by its VM. A sandbox without network flags gets the default
 * network too, but asked for none: it does not start a daemon (yet).
 */
export function ownerNeededFor(flags: NetworkFlags): string | null {
  if (flags.network === 'none') return null;
  if (flags.publish.length > 0) return 'published ports';
  if (flags.egress !== undefined || flags.allow.length > 0 || flags.deny.length > 0) return 'an egress policy';
  if (flags.network !== undefined) return `a ${flags.network} network`;
  return null;
}

/**
 * Tells the user that without a daemon the ports (and the whole network)
 * of a sandbox that outlives this command are served only while some roost
 * process holds the home (with ROOST_AUTO_DAEMON=0, or after `port add`).
 */
export function embeddedPortsNote(face: Face): void {
  if (face.kind !== 'embedded') return;
  process.stderr.write(
    "roost: note: no daemon runs, so this sandbox's network and published ports work only while a roost command holds the home: run `roost serve` to keep them up\n",
  );
}

/** Writes `roost: published HOST -> GUEST` for ports whose host port the host chose (the user could not know it otherwise). */
export function announceChosenPorts(asked: string[], bound: PortBinding[]): void {
  const chosen = asked.map((s) => parsePortSpec(s)).filter((m: PortMapping) => !m.hostPort);
  for (const m of chosen) {
    const b = bound.find((p) => p.guestPort === m.guestPort && p.protocol === (m.protocol ?? 'tcp') && p.hostIp === (m.hostIp ?? '127.0.0.1'));
    if (b) process.stderr.write(`roost: published ${b.hostIp}:${b.hostPort} -> ${b.guestPort}/${b.protocol}\n`);
  }
}

/** `roost port ls|add|rm`: a running sandbox's published ports, like `docker port`. */
export function addPortCommands(program: Command, withFace: WithFace): void {
  const port = program.command('port').description("list, publish and remove a sandbox's published ports (like docker port)");
  port
    .command('ls', { isDefault: true })
    .description('list published ports as GUEST/PROTO -> HOST_IP:HOST_PORT (with GUEST_PORT: only where that port is published)')
    .argument('<id>')
    .argument('[guest-port]', 'GUEST_PORT[/tcp|udp]')
    .option('--json', 'print JSON')
    .action(async (id: string, guest: string | undefined, flags: { json?: boolean }) => {
      const want = guest === undefined ? undefined : parseGuestPort(guest);
      const all = await withFace('port', async (face) => (await face.runtime.get(id)).ports.list());
      const list = want ? all.filter((p) => p.guestPort === want.guestPort && (want.protocol === undefined || p.protocol === want.protocol)) : all;
      if (want && list.length === 0)
        throw new RoostError('NOT_FOUND', `sandbox ${id} does not publish port ${guest}: publish it with \`roost port add ${id} ${guest}\``);
      if (flags.json) process.stdout.write(JSON.stringify(list, null, 2) + '\n');
      else process.stdout.write(list.map((p) => (want ? `${p.hostIp}:${p.hostPort}\n` : `${portLine(p)}\n`)).join(''));
    });
  port
    .command('add')
    .description('publish guest ports of a running sandbox; prints each as GUEST/PROTO -> HOST_IP:HOST_PORT')
    .argument('<id>')
    .argument('<spec...>', '[HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp]: 8080:80, 127.0.0.1::80 or 80 (a free port), 5353:53/udp')
    .action(async (id: string, specs: string[]) => {
      for (const spec of specs) parsePortSpec(spec);
      await withFace('port', async (face) => {
        const sandbox = await face.runtime.get(id);
        for (const spec of specs) process.stdout.write(`${portLine(await sandbox.ports.add(spec))}\n`);
        embeddedPortsNote(face);
      });
    });
  port
    .command('rm')
    .description('stop publishing host ports of a sandbox (open connections through them are closed)')
    .argument('<id>')
    .argument('<host-port...>', 'HOST_PORT[/tcp|udp] or HOST_IP:HOST_PORT[/tcp|udp]')
    .action(async (id: string, ports: string[]) => {
      const parsed = ports.map(parseHostPort);
      await withFace('port', async (face) => {
        const sandbox = await face.runtime.get(id);
        for (const [i, p] of parsed.entries()) {
          await sandbox.ports.remove(p);
          process.stdout.write(`${ports[i]}\n`);
        }
      });
    });
}
