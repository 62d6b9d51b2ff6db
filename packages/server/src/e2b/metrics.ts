import type { SandboxApi } from '@roost/api';
import type { DaemonRuntime } from '../daemon-runtime.js';

/*
 * E2B's sandbox metrics (`GET /sandboxes/{id}/metrics`, docs/e2b-wire.md
 * §1.4): a time series of CPU, memory and disk use, which E2B samples every
 * few seconds. Roost samples E2B's sandboxes the same way once the face is
 * in use: CPU from the VM's host CPU time (Roost's own metrics), memory
 * from the guest's /proc/meminfo, disk from the guest's `df` (read at most
 * every DISK_EVERY_MS: it runs a process).
 */

/** How often a running E2B sandbox is sampled (E2B: 5 s). */
export const METRICS_INTERVAL_MS = 5_000;
/** How many samples are kept per sandbox: an hour's worth. */
const MAX_SAMPLES = 720;
/** How often the disk figures are refreshed. */
const DISK_EVERY_MS = 30_000;

/** One sample, as E2B's SandboxMetric. */
export interface E2bMetric {
  timestamp: string;
  timestampUnix: number;
  cpuUsedPct: number;
  cpuCount: number;
  memUsed: number;
  memTotal: number;
  memCache: number;
  diskUsed: number;
  diskTotal: number;
}

interface Series {
  samples: E2bMetric[];
  /** The VM's CPU seconds and the time of the last sample: the next one's CPU use is the difference. */
  cpu: { seconds: number; at: number } | null;
  disk: { used: number; total: number; at: number } | null;
  /** A sample being taken (concurrent requests share it). */
  taking: Promise<E2bMetric> | null;
}

/** The figures of a /proc/meminfo text, in bytes. */
export function parseMeminfo(text: string): { total: number; used: number; cache: number } {
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  const total = kib('MemTotal');
  const available = kib('MemAvailable') || kib('MemFree') + kib('Buffers') + kib('Cached');
  return { total, used: Math.max(0, total - available), cache: kib('Cached') + kib('Buffers') };
}

/** Used and total bytes of the root filesystem in `df -kP /` output, or null. */
export function parseDf(text: string): { used: number; total: number } | null {
  const fields = text.trim().split('\n').at(-1)?.trim().split(/\s+/) ?? [];
  const total = Number(fields[1]);
  const used = Number(fields[2]);
  return Number.isFinite(total) && Number.isFinite(used) && fields.length >= 6 ? { used: used * 1024, total: total * 1024 } : null;
}

/** Samples of the running E2B sandboxes, by id. */
export class E2bMetrics {
  readonly #series = new Map<string, Series>();
  #timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly runtime: DaemonRuntime,
    private readonly e2bSandboxes: () => Promise<string[]>,
  ) {}

  /** Starts sampling every METRICS_INTERVAL_MS (idempotent; stopped by `stop` or the signal). */
  start(signal?: AbortSignal): void {
    if (this.#timer || signal?.aborted) return;
    this.#timer = setInterval(() => void this.#tick(), METRICS_INTERVAL_MS);
    this.#timer.unref();
    signal?.addEventListener('abort', () => this.stop(), { once: true });
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** A sandbox's samples between `start` and `end` (unix seconds, inclusive), with a fresh one when it runs. */
  async metrics(sandbox: SandboxApi, range: { start?: number; end?: number }): Promise<E2bMetric[]> {
    if (sandbox.status === 'running') await this.#sample(sandbox).catch(() => {});
    const samples = this.#series.get(sandbox.id)?.samples ?? [];
    return samples.filter((s) => (range.start === undefined || s.timestampUnix >= range.start) && (range.end === undefined || s.timestampUnix <= range.end));
  }

  async #tick(): Promise<void> {
    let ids: string[];
    try {
      ids = await this.e2bSandboxes();
    } catch {
      return; // the runtime is closing
    }
    for (const id of this.#series.keys()) if (!ids.includes(id)) this.#series.delete(id);
    await Promise.allSettled(
      ids.map(async (id) => {
        const sb = await this.runtime.get(id);
        if (sb.status === 'running') await this.#sample(sb);
      }),
    );
  }

  #sample(sandbox: SandboxApi): Promise<E2bMetric> {
    let series = this.#series.get(sandbox.id);
    if (!series) this.#series.set(sandbox.id, (series = { samples: [], cpu: null, disk: null, taking: null }));
    const s = series;
    s.taking ??= this.#take(sandbox, s).finally(() => (s.taking = null));
    return s.taking;
  }

  async #take(sandbox: SandboxApi, series: Series): Promise<E2bMetric> {
    const now = Date.now();
    const refreshDisk = !series.disk || now - series.disk.at >= DISK_EVERY_MS;
    const [usage, meminfo, df] = await Promise.all([
      this.runtime.sandboxMetrics(sandbox.id),
      sandbox.files.read('/proc/meminfo'),
      refreshDisk
        ? sandbox.commands.run(['df', '-kP', '/'], { timeoutMs: 5_000 }).then(
            (r) => parseDf(r.stdout),
            () => null, // no df in the image: the disk's size stands in
          )
        : null,
    ]);
    if (df) series.disk = { ...df, at: now };
    const cpus = sandbox.info.cpus;
    // CPU use since the last sample (since the VM started, for the first), as a share of its vCPUs.
    const startedAt = Date.parse(sandbox.info.startedAt ?? sandbox.info.createdAt);
    const since = series.cpu ?? { seconds: 0, at: Number.isFinite(startedAt) ? startedAt : now };
    const elapsed = Math.max(1, now - since.at) / 1000;
    const cpuUsedPct = Math.min(100, Math.max(0, ((usage.cpuSeconds - since.seconds) / elapsed / cpus) * 100));
    series.cpu = { seconds: usage.cpuSeconds, at: now };
    const mem = parseMeminfo(meminfo);
    const sample: E2bMetric = {
      timestamp: new Date(now).toISOString(),
      timestampUnix: Math.floor(now / 1000),
      cpuUsedPct: Math.round(cpuUsedPct * 100) / 100,
      cpuCount: cpus,
      memUsed: mem.used,
      memTotal: mem.total,
      memCache: mem.cache,
      diskUsed: series.disk?.used ?? 0,
      diskTotal: series.disk?.total ?? sandbox.info.diskSizeMiB * 1024 * 1024,
    };
    series.samples.push(sample);
    if (series.samples.length > MAX_SAMPLES) series.samples.splice(0, series.samples.length - MAX_SAMPLES);
    return sample;
  }
}
