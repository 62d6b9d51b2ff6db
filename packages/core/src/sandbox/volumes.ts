import { realpath, stat } from 'node:fs/promises';
import { posix } from 'node:path';
import { CallFlags } from '@roost/protocol';
import { MAX_VOLUMES, VolumeNameSchema, type SandboxInfo, type VolumeMount } from '@roost/api';
import type { AgentConnection } from '../agent/connection.js';
import { RoostError } from '../errors.js';
import { runCall } from '../files.js';
import type { FileExport } from '../fileserver/config.js';
import type { Volumes } from '../volumes.js';

/** Guest paths no volume may be mounted on or below: the kernel's own file systems. */
const RESERVED_TARGETS = ['/proc', '/sys', '/dev'];

/** True for a volume source that is a host directory (else it names a volume). */
export function isHostPath(source: string): boolean {
  return source.startsWith('/');
}

function depth(path: string): number {
  return path.split('/').length;
}

/**
 * Checks the volumes of a sandbox to be: targets absolute, normalized,
 * distinct and not reserved; host directories existing (resolved with
 * realpath once, here: that is what is recorded and mounted), names valid.
 */
export async function resolveVolumes(volumes: readonly VolumeMount[], home: string): Promise<VolumeMount[]> {
  if (volumes.length > MAX_VOLUMES) throw new RoostError('INVALID_ARGUMENT', `volumes: at most ${MAX_VOLUMES}, not ${volumes.length}`);
  const realHome = await realpath(home).catch(() => home);
  const targets = new Set<string>();
  const out: VolumeMount[] = [];
  for (const [i, v] of volumes.entries()) {
    const where = `volumes[${i}]`;
    const bad = (message: string, field: 'source' | 'target') =>
      new RoostError('INVALID_ARGUMENT', `${where}.${field}: ${message}`, { details: { field: `volumes.${i}.${field}`, source: v.source, target: v.target } });
    const t = v.target;
    if (!t.startsWith('/')) throw bad(`the guest path "${t}" must be absolute`, 'target');
    if (t.includes('\0')) throw bad('the guest path contains a NUL byte', 'target');
    if (Buffer.byteLength(t) > 4095) throw bad('the guest path is longer than 4095 bytes', 'target');
    const normal = posix.normalize(t).replace(/(.)\/+$/, '$1');
    if (normal !== t) throw bad(`the guest path "${t}" is not normalized: write it as "${normal}"`, 'target');
    if (t === '/') throw bad("a volume cannot be mounted on / (the guest's root)", 'target');
    const reserved = RESERVED_TARGETS.find((r) => t === r || t.startsWith(r + '/'));
    if (reserved) throw bad(`${t} is under ${reserved}, which belongs to the guest kernel`, 'target');
    if (targets.has(t)) throw bad(`two volumes are mounted at ${t}`, 'target');
    targets.add(t);

    let source: string;
    if (isHostPath(v.source)) {
      if (v.source.includes('\0')) throw bad('the host path contains a NUL byte', 'source');
      try {
        source = await realpath(v.source);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw bad(
          code === 'ENOENT' ? `the host directory ${v.source} does not exist` : `cannot resolve the host directory ${v.source}: ${(e as Error).message}`,
          'source',
        );
      }
      const st = await stat(source).catch((e: Error) => {
        throw bad(`cannot read the host directory ${v.source}: ${e.message}`, 'source');
      });
      if (!st.isDirectory()) throw bad(`${v.source}${source !== v.source ? ` (${source})` : ''} is not a directory`, 'source');
      if (source === realHome || source.startsWith(realHome + '/')) {
        throw bad(`${v.source} is inside the Roost home ${home} (sandbox disks, sockets, the API token): use a named volume instead`, 'source');
      }
    } else {
      const r = VolumeNameSchema.safeParse(v.source);
      if (!r.success) throw bad(`"${v.source}" is neither an absolute host directory nor a volume name (${r.error.issues[0]?.message ?? 'invalid'})`, 'source');
      source = v.source;
    }
    out.push({ source, target: t, readOnly: v.readOnly === true });
  }
  return out;
}

/**
 * The host side of a sandbox's volumes, in the order of `info.volumes`
 * (volume i is the file server's channel i): NOT_FOUND or INVALID_STATE when a host
 * directory is gone or became a link; named volumes are made again if missing.
 */
export async function volumeExports(info: Pick<SandboxInfo, 'id' | 'volumes'>, volumes: Pick<Volumes, '_ensure' | '_credentialsPath'>): Promise<FileExport[]> {
  const shares: FileExport[] = [];
  for (const [i, v] of (info.volumes ?? []).entries()) {
    let path: string;
    let quotaBytes: number | undefined;
    let remote: string | undefined;
    let readOnly = v.readOnly === true;
    if (isHostPath(v.source)) {
      path = v.source;
      const st = await stat(path).catch(() => null);
      if (!st?.isDirectory()) {
        throw new RoostError(
          'NOT_FOUND',
          `sandbox ${info.id} mounts host directory ${path} at ${v.target}, which is no longer a directory: restore it (or remove the sandbox)`,
          {
            details: { source: path, target: v.target },
          },
        );
      }
      // Resolved once, at create: a directory since replaced by a symlink is not followed somewhere else.
      const real = await realpath(path).catch(() => path);
      if (real !== path) {
        throw new RoostError(
          'INVALID_STATE',
          `sandbox ${info.id} mounts host directory ${path} at ${v.target}, which is now a link to ${real}: restore the directory (or remove the sandbox)`,
          {
            details: { source: path, target: v.target },
          },
        );
      }
    } else {
      const named = volumes._ensure(v.source);
      path = named.path;
      quotaBytes = named.quotaBytes;
      if (named.remote) {
        remote = volumes._credentialsPath(v.source);
        // A read-only token: the server refuses writes anyway; the export says so up front.
        readOnly ||= named.remote.readOnly;
      }
    }
    shares.push({ channel: i, path, readOnly, ...(quotaBytes !== undefined ? { quotaBytes } : {}), ...(remote !== undefined ? { remote } : {}) });
  }
  return shares;
}

/**
 * Mounts the volumes in the guest (the agent's `mount` call through its 9P
 * relay, as root), parents before what is mounted below them. A failure
 * fails the boot.
 */
export async function mountVolumes(conn: AgentConnection, volumes: readonly VolumeMount[], signal: AbortSignal): Promise<void> {
  if (volumes.length > 0 && !conn.supports('P9_RELAY')) {
    throw new RoostError('BOOT_FAILED', `the guest agent (${conn.agent.version}) has no 9P relay, which volumes need: run \`roost setup\` to rebuild it`);
  }
  const order = volumes.map((v, channel) => ({ v, channel })).sort((a, b) => depth(a.v.target) - depth(b.v.target));
  for (const { v, channel } of order) {
    try {
      const flags = CallFlags.RELAY | (v.readOnly ? CallFlags.READ_ONLY : 0);
      await runCall(conn, { op: 'mount', args: [String(channel), v.target], flags, user: '0' }, { signal });
    } catch (e) {
      if (signal.aborted) throw e;
      const why = e instanceof Error ? e.message : String(e);
      throw new RoostError('BOOT_FAILED', `cannot mount volume ${v.source} at ${v.target} in the guest: ${why}`, {
        cause: e,
        details: { source: v.source, target: v.target },
      });
    }
  }
}
