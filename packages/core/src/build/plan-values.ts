/**
 * Checks and normalizations of single values the planner meets: the build
 * platform, EXPOSE port specs, stop signals, `--chmod`, container paths and
 * the predefined args.
 */
import { posix } from 'node:path';

/** The one platform Roost builds for: its microVMs are x86_64 Linux. */
export const BUILD_PLATFORM = 'linux/amd64';

/** The args Docker defines itself for every build (global scope; a stage uses one by declaring `ARG NAME`). */
export const PLATFORM_ARGS: Readonly<Record<string, string>> = {
  BUILDPLATFORM: BUILD_PLATFORM,
  BUILDOS: 'linux',
  BUILDARCH: 'amd64',
  BUILDVARIANT: '',
  TARGETPLATFORM: BUILD_PLATFORM,
  TARGETOS: 'linux',
  TARGETARCH: 'amd64',
  TARGETVARIANT: '',
};

/** The predefined proxy args a `--build-arg` may set without an ARG declaring them. */
export const PROXY_ARGS: ReadonlySet<string> = new Set([
  'HTTP_PROXY',
  'http_proxy',
  'HTTPS_PROXY',
  'https_proxy',
  'FTP_PROXY',
  'ftp_proxy',
  'NO_PROXY',
  'no_proxy',
  'ALL_PROXY',
  'all_proxy',
]);

/** True when a `--platform` value names this host's platform (`linux/amd64`, also spelled `linux/x86_64` or `linux/x86-64`). */
export function isBuildPlatform(value: string): boolean {
  const parts = value.trim().toLowerCase().split('/');
  if (parts.length !== 2) return false;
  const [os, arch] = parts;
  return os === 'linux' && (arch === 'amd64' || arch === 'x86_64' || arch === 'x86-64');
}

/** One EXPOSE spec read: its `port/proto` entries and whether a host part was dropped. */
export interface PortSpec {
  ports: string[];
  droppedHostPart: boolean;
}

function parsePortRange(text: string): [number, number] | null {
  const m = /^(\d+)(?:-(\d+))?$/.exec(text);
  if (!m) return null;
  const start = Number(m[1]);
  const end = m[2] === undefined ? start : Number(m[2]);
  if (start > 65535 || end > 65535 || end < start) return null;
  return [start, end];
}

/**
 * Reads an EXPOSE spec as Docker: `80`, `80/tcp`, `53/udp`, `132/sctp`,
 * ranges `8000-8010/tcp`; the protocol is lower-cased and defaults to tcp.
 * A `[ip:]hostPort:` prefix is accepted and dropped (EXPOSE never
 * publishes). Throws an Error saying what is wrong.
 */
export function parsePortSpec(raw: string): PortSpec {
  const parts = raw.split(':');
  const container = parts[parts.length - 1] as string;
  const slash = container.indexOf('/');
  const port = slash === -1 ? container : container.slice(0, slash);
  const proto = slash === -1 ? 'tcp' : container.slice(slash + 1).toLowerCase() || 'tcp';
  if (port === '') throw new Error(`no port specified: ${raw}`);
  if (proto !== 'tcp' && proto !== 'udp' && proto !== 'sctp') throw new Error(`invalid proto: ${proto}`);
  const range = parsePortRange(port);
  if (!range) throw new Error(`invalid port: ${port}`);
  const ports: string[] = [];
  for (let p = range[0]; p <= range[1]; p++) ports.push(`${p}/${proto}`);
  return { ports, droppedHostPart: parts.length > 1 };
}

const SIGNALS = new Set([
  'ABRT',
  'ALRM',
  'BUS',
  'CHLD',
  'CLD',
  'CONT',
  'FPE',
  'HUP',
  'ILL',
  'INT',
  'IO',
  'IOT',
  'KILL',
  'PIPE',
  'POLL',
  'PROF',
  'PWR',
  'QUIT',
  'SEGV',
  'STKFLT',
  'STOP',
  'SYS',
  'TERM',
  'TRAP',
  'TSTP',
  'TTIN',
  'TTOU',
  'URG',
  'USR1',
  'USR2',
  'VTALRM',
  'WINCH',
  'XCPU',
  'XFSZ',
  'RTMIN',
  'RTMAX',
]);

/** True when `value` names a Linux signal as Docker's ParseSignal accepts it: a number 1-64, or a name with or without `SIG` (any case), `RTMIN+n`, `RTMAX-n`. */
export function isSignal(value: string): boolean {
  if (/^\d+$/.test(value)) {
    const n = Number(value);
    return n >= 1 && n <= 64;
  }
  const name = value.toUpperCase().replace(/^SIG/, '');
  if (SIGNALS.has(name)) return true;
  const rt = /^RTMIN\+(\d+)$|^RTMAX-(\d+)$/.exec(name);
  if (!rt) return false;
  const n = Number(rt[1] ?? rt[2]);
  return n >= 1 && n <= 15;
}

/** `--chmod` as a mode: octal digits (`755`, `0644`, up to `7777`). Throws an Error otherwise. */
export function parseChmod(value: string): number {
  if (!/^[0-7]{1,4}$/.test(value)) throw new Error(`--chmod=${value} is not an octal mode (like 0755): symbolic modes are not supported`);
  return parseInt(value, 8);
}

/** A container path cleaned (`/a/./b/../c/` -> `/a/c`), always absolute. */
export function cleanAbsolute(path: string): string {
  const normalized = posix.normalize('/' + path);
  return normalized.length > 1 && normalized.endsWith('/') ? normalized.slice(0, -1) : normalized;
}

/** `path` made absolute against `dir` (itself absolute) and cleaned. */
export function resolveAgainst(dir: string, path: string): string {
  return path.startsWith('/') ? cleanAbsolute(path) : cleanAbsolute(posix.join(dir, path));
}

/** A base image's Env (`K=V` strings or a record) as a record. */
export function envRecord(env: string[] | Record<string, string> | undefined): Record<string, string> {
  if (!env) return {};
  if (!Array.isArray(env)) return { ...env };
  const out: Record<string, string> = {};
  for (const entry of env) {
    const eq = entry.indexOf('=');
    if (eq === -1) out[entry] = '';
    else out[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return out;
}
