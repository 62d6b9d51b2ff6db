import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { RoostError, type VolumeInfo, type VolumeMount, type VolumesApi } from '@roost/api';
import { serveVolume } from '@roost/core';
import { ago, bytes, formatTable } from './format.js';
import { closeOnSignal } from './lifetime.js';

/** Opens what the volume commands talk to (the daemon's volumes, or the home's), and closes it after. */
export type WithVolumes = <T>(fn: (volumes: VolumesApi) => Promise<T>) => Promise<T>;

/**
 * `roost volume create|ls|inspect|rm`: named volumes. They go to the daemon
 * when there is one, else to the home's database and directories directly
 * (no runtime, no lock: safe beside a running one). `roost volume serve`
 * runs a volume server in the foreground (core's serveVolume).
 */
export function addVolumeCommands(program: Command, withVolumes: WithVolumes): void {
  const volume = program
    .command('volume')
    .alias('volumes')
    .description('manage named volumes (directories mounted into sandboxes with -v NAME:/path, kept after them)');
  volume
    .command('create')
    .description('create a named volume (`run -v NAME:/path` also creates one on first use)')
    .argument('<name>')
    .option('-l, --label <K=V>', 'set a label (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--quota <size>', 'the most its files may hold (bytes, or with K, M, G, T): guests get ENOSPC past it')
    .option('--remote <file>', 'a remote volume: the credentials file `roost volume serve --credentials-out` wrote on the serving host')
    .option('--json', 'print JSON')
    .action(async (name: string, flags: { label: string[]; quota?: string; remote?: string; json?: boolean }) => {
      const labels = parseLabels(flags.label);
      const quotaBytes = flags.quota === undefined ? undefined : parseSize(flags.quota, '--quota');
      let remote: string | undefined;
      if (flags.remote !== undefined) {
        try {
          remote = readFileSync(flags.remote, 'utf8');
        } catch (e) {
          throw new RoostError('INVALID_ARGUMENT', `--remote ${flags.remote}: ${(e as Error).message}`);
        }
      }
      const info = await withVolumes((v) =>
        v.create({
          name,
          ...(Object.keys(labels).length > 0 ? { labels } : {}),
          ...(quotaBytes !== undefined ? { quotaBytes } : {}),
          ...(remote !== undefined ? { remote } : {}),
        }),
      );
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : `${info.name}\n`);
    });
  volume
    .command('ls', { isDefault: true })
    .description('list named volumes')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only names')
    .action(async (flags: { json?: boolean; quiet?: boolean }) => {
      const all = await withVolumes((v) => v.list());
      if (flags.json) process.stdout.write(JSON.stringify(all, null, 2) + '\n');
      else if (flags.quiet) process.stdout.write(all.map((v) => `${v.name}\n`).join(''));
      else process.stdout.write(volumeTable(all));
    });
  volume
    .command('inspect')
    .description('show a named volume: its directory, labels and the sandboxes that mount it')
    .option('--json', 'print JSON')
    .argument('<name>')
    .action(async (name: string, flags: { json?: boolean }) => {
      const info = await withVolumes((v) => v.get(name));
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : describeVolume(info));
    });
  volume
    .command('rm')
    .description('remove named volumes and their data (refused while a sandbox, even a stopped one, mounts it)')
    .argument('<name...>')
    .action(async (names: string[]) => {
      await withVolumes(async (v) => {
        for (const name of names) {
          await v.remove(name);
          process.stdout.write(`${name}\n`);
        }
      });
    });
  volume
    .command('serve')
    .description(
      'serve a named volume or an absolute directory to other Roost hosts (9P over TLS 1.3, a per-export token), in the foreground until SIGINT or SIGTERM; the token goes only to the 0600 credentials file',
    )
    .argument('<dir|name>', 'an absolute host directory, or the name of a volume of this home')
    .requiredOption('--listen <addr:port>', 'the address to listen on (0.0.0.0:7564, 127.0.0.1:0 picks a free port, [::]:7564)')
    .option('--read-only', 'serve read-only (the token is a read-only one too)')
    .option(
      '--credentials-out <file>',
      "write the client's credentials (URL, token, fingerprint) here, mode 0600 (default: <home>/volume-serve/<export>.credentials)",
    )
    .option('--advertise <host>', 'the host name clients use in the URL (default: the listen address, or this host name)')
    .option('--cert <file>', 'a PEM certificate to present instead of the generated one (with --key)')
    .option('--key <file>', 'the PEM private key of --cert')
    .option('--ca <file>', 'a PEM CA certificate clients verify --cert with (written to the credentials)')
    .action(
      async (
        source: string,
        flags: { listen: string; readOnly?: boolean; credentialsOut?: string; advertise?: string; cert?: string; key?: string; ca?: string },
      ) => {
        if ((flags.cert === undefined) !== (flags.key === undefined)) throw new RoostError('INVALID_ARGUMENT', '--cert and --key go together');
        if (flags.ca !== undefined && flags.cert === undefined) throw new RoostError('INVALID_ARGUMENT', '--ca needs --cert and --key');
        const served = await serveVolume({
          source,
          listen: flags.listen,
          readOnly: flags.readOnly === true,
          ...(flags.credentialsOut !== undefined ? { credentialsOut: resolve(flags.credentialsOut) } : {}),
          ...(flags.advertise !== undefined ? { advertise: flags.advertise } : {}),
          ...(flags.cert !== undefined && flags.key !== undefined
            ? { tls: { certFile: resolve(flags.cert), keyFile: resolve(flags.key), ...(flags.ca !== undefined ? { caFile: resolve(flags.ca) } : {}) } }
            : {}),
        });
        const closed = closeOnSignal('roost volume serve', () => served.close());
        process.stdout.write(
          `serving ${served.directory} (${served.readOnly ? 'read-only' : 'read-write'})\n` +
            `url: ${served.url}\n` +
            `fingerprint: ${served.fingerprint}\n` +
            `credentials: ${served.credentialsPath} (mode 0600, holds the token)\n`,
        );
        await closed;
      },
    );
}

/**
 * `-v SRC:DST[:ro]` as a VolumeMount. SRC is a host directory (absolute, or
 * relative to the current directory when it starts with `.` or contains a
 * `/`) or a volume name; DST an absolute guest path; `ro` mounts it
 * read-only (`rw`, the default, may be given too).
 */
export function parseVolumeFlag(spec: string, cwd = process.cwd()): VolumeMount {
  const parts = spec.split(':');
  let readOnly = false;
  if (parts.length === 3) {
    const mode = parts.pop();
    if (mode !== 'ro' && mode !== 'rw') throw new RoostError('INVALID_ARGUMENT', `-v ${spec}: the mode is "ro" or "rw", not "${mode}"`);
    readOnly = mode === 'ro';
  }
  if (parts.length !== 2 || !parts[0] || !parts[1])
    throw new RoostError('INVALID_ARGUMENT', `-v ${spec}: expected SRC:DST or SRC:DST:ro (SRC a host directory or a volume name, DST an absolute guest path)`);
  const [src, target] = parts as [string, string];
  const hostPath = src.startsWith('/') || src.startsWith('.') || src.includes('/');
  return { source: hostPath ? resolve(cwd, src) : src, target, ...(readOnly ? { readOnly: true } : {}) };
}

/** A size: bytes, or a number with K, M, G or T (powers of 1024; `KiB`, `MB`... read the same). */
export function parseSize(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new RoostError('INVALID_ARGUMENT', `${flag} ${text}: expected a size such as 500M or 2G`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Math.floor(Number(m[1]) * scale);
  if (n < 1 || !Number.isSafeInteger(n)) throw new RoostError('INVALID_ARGUMENT', `${flag} ${text}: out of range`);
  return n;
}

function parseLabels(pairs: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new RoostError('INVALID_ARGUMENT', `-l ${p}: expected NAME=VALUE`);
    out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}

function volumeTable(all: VolumeInfo[]): string {
  return formatTable(
    ['NAME', 'CREATED', 'USED BY', 'PATH'],
    all.map((v) => [v.name, ago(v.createdAt), v.usedBy.join(',') || '-', v.path]),
  );
}

function describeVolume(v: VolumeInfo): string {
  const rows: [string, string][] = [
    ['Name', v.name],
    ['Path', v.path],
    ['Created', `${v.createdAt} (${ago(v.createdAt)})`],
    [
      'Labels',
      Object.entries(v.labels)
        .map(([k, val]) => `${k}=${val}`)
        .join(', ') || '-',
    ],
    ['Used by', v.usedBy.join(', ') || '-'],
  ];
  if (v.quotaBytes !== undefined) rows.splice(2, 0, ['Quota', bytes(v.quotaBytes)]);
  if (v.remote) rows.splice(2, 0, ['Remote', `${v.remote.url}${v.remote.readOnly ? ' (read-only)' : ''}, certificate ${v.remote.fingerprint}`]);
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  return rows.map(([k, val]) => `${`${k}:`.padEnd(width)} ${val}\n`).join('');
}
