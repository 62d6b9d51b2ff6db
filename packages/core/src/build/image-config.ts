import type { PlannedHealthcheck, StepConfig } from './plan-types.js';
import type { LayerBlob } from './layer.js';

/*
 * The image config the builder writes: the base image's config document,
 * changed by the Dockerfile's config instructions, with one history entry
 * per instruction and the layers' diff ids. Serialized with a fixed key
 * order and no build-host name, so equal builds give equal bytes; the
 * times are SOURCE_DATE_EPOCH's when it is set.
 */

/** The `config` object of an image config (Docker's names, which OCI's are). */
export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  Healthcheck?: { Test: string[]; Interval?: number; Timeout?: number; StartPeriod?: number; StartInterval?: number; Retries?: number };
  Shell?: string[];
  [other: string]: unknown;
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** A stage's image as it is being built. */
export interface ImageState {
  config: ContainerConfig;
  layers: LayerBlob[];
  history: HistoryEntry[];
  /** Other fields of the base's config document (author, os.version, ...), kept as they were. */
  extra: Record<string, unknown>;
}

/** The state a base image's config document starts a stage with. */
export function stateFromConfig(doc: Record<string, unknown>, layers: LayerBlob[]): ImageState {
  // What the build writes anew (rootfs, created, architecture, os) is dropped; the rest is kept as it was.
  const extra = Object.fromEntries(Object.entries(doc).filter(([k]) => !['config', 'history', 'rootfs', 'created', 'architecture', 'os'].includes(k)));
  const { config, history } = doc;
  return {
    config: { ...((config as ContainerConfig | undefined) ?? {}) },
    layers: [...layers],
    history: Array.isArray(history) ? (history as HistoryEntry[]).map((h) => ({ ...h })) : [],
    extra,
  };
}

/** An empty image (FROM scratch). */
export function scratchState(): ImageState {
  return { config: {}, layers: [], history: [], extra: {} };
}

/** The environment of a config as a record (later entries win). */
export function envRecord(env: readonly string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of env ?? []) {
    const eq = e.indexOf('=');
    if (eq > 0) out[e.slice(0, eq)] = e.slice(eq + 1);
  }
  return out;
}

function setEnv(config: ContainerConfig, pairs: readonly [string, string][]): void {
  const env = config.Env ? [...config.Env] : [];
  for (const [k, v] of pairs) {
    const i = env.findIndex((e) => e.startsWith(`${k}=`));
    if (i >= 0) env[i] = `${k}=${v}`;
    else env.push(`${k}=${v}`);
  }
  config.Env = env;
}

function healthcheck(h: PlannedHealthcheck): NonNullable<ContainerConfig['Healthcheck']> {
  return {
    Test: h.test,
    ...(h.interval !== undefined ? { Interval: h.interval } : {}),
    ...(h.timeout !== undefined ? { Timeout: h.timeout } : {}),
    ...(h.startPeriod !== undefined ? { StartPeriod: h.startPeriod } : {}),
    ...(h.startInterval !== undefined ? { StartInterval: h.startInterval } : {}),
    ...(h.retries !== undefined ? { Retries: h.retries } : {}),
  };
}

/** Applies a config instruction (ENV, WORKDIR, USER, ENTRYPOINT, CMD, EXPOSE, LABEL, VOLUME, STOPSIGNAL, HEALTHCHECK, SHELL; ARG changes nothing). */
export function applyConfig(config: ContainerConfig, change: StepConfig['change']): void {
  if ('env' in change) setEnv(config, change.env);
  else if ('workdir' in change) config.WorkingDir = change.workdir;
  else if ('user' in change) config.User = change.user;
  else if ('entrypoint' in change) {
    config.Entrypoint = change.entrypoint;
    if (change.resetsCmd) config.Cmd = null;
  } else if ('cmd' in change) config.Cmd = change.cmd;
  else if ('exposedPorts' in change) {
    config.ExposedPorts = { ...config.ExposedPorts };
    for (const p of change.exposedPorts) config.ExposedPorts[p] = {};
  } else if ('labels' in change) config.Labels = { ...config.Labels, ...change.labels };
  else if ('volumes' in change) {
    config.Volumes = { ...config.Volumes };
    for (const v of change.volumes) config.Volumes[v] = {};
  } else if ('stopSignal' in change) config.StopSignal = change.stopSignal;
  else if ('healthcheck' in change) config.Healthcheck = healthcheck(change.healthcheck);
  else if ('shell' in change) config.Shell = change.shell;
}

/** Sorts an object's keys (one level): maps in a config serialize the same whatever order they were filled in. */
function sortedKeys<T>(o: Record<string, T> | undefined): Record<string, T> | undefined {
  if (!o) return undefined;
  return Object.fromEntries(
    Object.keys(o)
      .sort()
      .map((k) => [k, o[k]!]),
  );
}

/** The config document's bytes: fixed key order, no host names, `created` as given. */
export function configDocument(state: ImageState, created: string): Buffer {
  const c = state.config;
  const config: ContainerConfig = {};
  // Known keys in Docker's order, then any others the base had.
  for (const k of ['User', 'ExposedPorts', 'Env', 'Entrypoint', 'Cmd', 'Volumes', 'WorkingDir', 'Labels', 'StopSignal', 'Healthcheck', 'Shell']) {
    const v = c[k];
    if (v === undefined || v === null || v === '') continue;
    config[k] = k === 'ExposedPorts' || k === 'Volumes' || k === 'Labels' ? sortedKeys(v as Record<string, unknown>) : v;
  }
  for (const k of Object.keys(c).sort()) if (!(k in config) && c[k] !== undefined && c[k] !== null && !['Hostname', 'Domainname'].includes(k)) config[k] = c[k];
  const doc = {
    created,
    architecture: 'amd64',
    os: 'linux',
    ...state.extra,
    config,
    rootfs: { type: 'layers', diff_ids: state.layers.map((l) => l.diffId) },
    history: state.history,
  };
  return Buffer.from(JSON.stringify(doc));
}

/** The OCI manifest of a config and layers. */
export function manifestDocument(configBytes: Buffer, configDigest: string, layers: readonly LayerBlob[], annotations?: Record<string, string>): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: configBytes.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      ...(annotations && Object.keys(annotations).length ? { annotations: sortedKeys(annotations) } : {}),
    }),
  );
}
