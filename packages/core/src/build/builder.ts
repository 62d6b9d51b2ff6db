import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import type { EgressSpec } from '@roost/api';
import { abortError, RoostError } from '../errors.js';
import type { ImageStore } from '../image/store.js';
import type { BuildCache } from './cache.js';
import { applyConfig, configDocument, envRecord, manifestDocument, scratchState, stateFromConfig, type ImageState } from './image-config.js';
import { archiveCopyLayer, copyLayer, type CopyFile } from './copy-layer.js';
import { ociLayerFromOverlay, writeLayer, type LayerBlob } from './layer.js';
import { encodeHeader, TAR_END } from './tar-codec.js';
import type { BuildPlan, PlannedStage, PlannedStep, StepCopy, StepRun } from './plan-types.js';

/*
 * The image builder's engine (docs/images.md#build): runs a plan stage by
 * stage. Config steps change the image config on the host. COPY and ADD
 * steps make their layer on the host from the context (or from another
 * stage's filesystem, read through its sandbox). RUN steps run in a sandbox
 * booted on the stage's filesystem so far; after each, the agent seals the
 * overlay's upper layer (`commit`) and the builder reads exactly that step's
 * changes as a layer. Every step has a cache key (its parent chain, the
 * instruction, and the digests of what it reads): a known key reuses its
 * layer and runs nothing. A stage boots its sandbox only at its first step
 * the cache does not know, from an image of the layers so far.
 */

/** A sandbox as the builder uses it (a `Sandbox`). */
export interface BuildSandbox {
  readonly id: string;
  readonly commands: {
    start(
      cmd: string,
      options: { args: string[]; env: Record<string, string>; cwd: string; user?: string; signal?: AbortSignal },
    ): Promise<{ stdout: AsyncIterable<Uint8Array>; stderr: AsyncIterable<Uint8Array>; wait(): Promise<{ exitCode: number; signal: string | null }> }>;
  };
  readonly files: {
    _commitLayer(options?: { signal?: AbortSignal }): Promise<number>;
    _readLayer(n: number, options?: { signal?: AbortSignal }): Promise<AsyncIterable<Uint8Array>>;
    readArchive(path: string, options?: { signal?: AbortSignal }): Promise<AsyncIterable<Uint8Array>>;
    read(path: string, options: { format: 'text'; signal?: AbortSignal }): Promise<string>;
    writeArchive(dir: string, tar: AsyncIterable<Uint8Array>, options?: { signal?: AbortSignal }): Promise<void>;
    makeDir(path: string, options?: { signal?: AbortSignal }): Promise<boolean>;
  };
  remove(options: { force: boolean }): Promise<void>;
}

/** What the engine uses of the runtime. */
export interface BuildHost {
  store: ImageStore;
  cache: BuildCache;
  /** Boots a sandbox of an image for build steps (not detached: it dies with the runtime). */
  sandbox(options: {
    image: string;
    network: 'user' | 'none';
    egress?: EgressSpec;
    cpus?: number;
    memoryMiB?: number;
    diskSizeMiB?: number;
    signal?: AbortSignal;
  }): Promise<BuildSandbox>;
}

/** The build context as the engine reads it (build/context.ts). */
export interface ContextSource {
  /** The files a COPY or ADD takes, each with where it lands (`target`: a path below the image's root, no leading '/'). */
  select(step: StepCopy): Promise<CopyFile[]>;
  /** The content digest of selected files (paths, types, modes, owners, link targets and contents; not times). */
  digest(entries: readonly CopyFile[]): Promise<string>;
}

/** Progress of a build, step by step. */
export type BuildProgress =
  | { type: 'step'; stage: string; step: number; of: number; text: string; status: 'cached' | 'running' | 'done'; layer?: string; durationMs?: number }
  | { type: 'output'; step: number; stream: 'stdout' | 'stderr'; data: string }
  | { type: 'note'; message: string };

/** Options of one engine run. */
export interface EngineOptions {
  plan: BuildPlan;
  context: ContextSource;
  /** The file name for messages (`Dockerfile`). */
  file: string;
  noCache?: boolean;
  pull?: boolean;
  network?: 'user' | 'none';
  egress?: EgressSpec;
  cpus?: number;
  memoryMiB?: number;
  diskSizeMiB?: number;
  /** SOURCE_DATE_EPOCH (seconds): layer mtimes are clamped to it and the config's times are it. */
  sourceDateEpoch?: number;
  signal?: AbortSignal;
  onProgress?: (p: BuildProgress) => void;
}

/** The image a build made, before it is tagged. */
export interface BuiltImage {
  manifestBytes: Buffer;
  configBytes: Buffer;
  /** Steps run, and steps the cache answered. */
  ran: number;
  cached: number;
}

/** A stage's result: its image state and the chain key of its last step. */
interface StageResult {
  state: ImageState;
  key: string;
  /** Its sandbox, while the build lasts (COPY --from reads through it). */
  sandbox: BuildSandbox | null;
  /** The image its sandbox would boot from: its base image when no layer was added, else registered on demand. */
  imageRef: string | null;
  /** A WORKDIR whose directory no RUN has made yet. */
  pendingWorkdir?: string | null;
  /** When its newest step was made (its base's creation time before any): the image's `created`. */
  created: string;
}

const OUTPUT_TAIL_BYTES = 4096;
/** The creation time of what has none (FROM scratch). */
const EPOCH_ZERO = '1970-01-01T00:00:00Z';

/**
 * Runs a build plan; `record` stores the image (its blobs are in the store)
 * before the build's own intermediate images and sandboxes are removed.
 */
export async function runBuild<T>(host: BuildHost, options: EngineOptions, record: (image: BuiltImage) => Promise<T>): Promise<T> {
  return new BuildRun(host, options).run(record);
}

class BuildRun {
  readonly #host: BuildHost;
  readonly #o: EngineOptions;
  readonly #results = new Map<number, StageResult>();
  /** Images COPY --from names that are no stage, by id. */
  readonly #images = new Map<string, StageResult>();
  /** Images registered so that a sandbox can boot from layers so far: removed when the build ends. */
  readonly #intermediate: string[] = [];
  readonly #sandboxes: BuildSandbox[] = [];
  /** SOURCE_DATE_EPOCH as the image's times, when it is set. */
  readonly #epoch: string | null;
  #ran = 0;
  #cached = 0;

  constructor(host: BuildHost, options: EngineOptions) {
    this.#host = host;
    this.#o = options;
    this.#epoch = options.sourceDateEpoch !== undefined ? new Date(options.sourceDateEpoch * 1000).toISOString().replace('.000Z', 'Z') : null;
  }

  async run<T>(record: (image: BuiltImage) => Promise<T>): Promise<T> {
    try {
      for (const note of this.#o.plan.notes) this.#o.onProgress?.({ type: 'note', message: note });
      let last: StageResult | undefined;
      for (const stage of this.#o.plan.stages) {
        last = await this.#stage(stage);
        this.#results.set(stage.index, last);
      }
      if (!last) throw new RoostError('INVALID_ARGUMENT', `${this.#o.file}: no stage to build`);
      const configBytes = configDocument(last.state, this.#epoch ?? last.created);
      const configDigest = `sha256:${createHash('sha256').update(configBytes).digest('hex')}`;
      return await record({ manifestBytes: manifestDocument(configBytes, configDigest, last.state.layers), configBytes, ran: this.#ran, cached: this.#cached });
    } finally {
      await Promise.allSettled(this.#sandboxes.map((s) => s.remove({ force: true })));
      for (const id of this.#intermediate) await this.#host.store.remove(id, { force: true }).catch(() => {});
    }
  }

  #check(): void {
    if (this.#o.signal?.aborted) throw abortError(this.#o.signal, 'the build');
  }

  async #stage(stage: PlannedStage): Promise<StageResult> {
    const name = stage.name ?? String(stage.index);
    const res = await this.#base(stage);
    const total = stage.steps.length;
    for (const [i, step] of stage.steps.entries()) {
      this.#check();
      const n = i + 1;
      const t0 = performance.now();
      if (step.kind === 'config') {
        applyConfig(res.state.config, step.change);
        res.state.history.push({ created: this.#epoch ?? res.created, created_by: step.text, empty_layer: true });
        // An ARG's value is in the key of each RUN that sees it (its `args`), not in the chain: a COPY after it is not missed for it (Docker's rule).
        if (!('arg' in step.change)) res.key = stepKey(res.key, ['config', step.change]);
        this.#o.onProgress?.({ type: 'step', stage: name, step: n, of: total, text: step.text, status: 'done' });
        // WORKDIR's directory is made by the next RUN (in its layer), or by a layer of its own at the end of the stage.
        if ('workdir' in step.change) res.pendingWorkdir = step.change.workdir;
        continue;
      }
      const report = (status: 'cached' | 'running' | 'done', layer: LayerBlob | null, durationMs?: number) =>
        this.#o.onProgress?.({
          type: 'step',
          stage: name,
          step: n,
          of: total,
          text: step.text,
          status,
          ...(layer ? { layer: layer.digest } : {}),
          ...(durationMs !== undefined ? { durationMs } : {}),
        });
      const key = await this.#keyOf(res, step);
      const hit = this.#o.noCache ? undefined : this.#host.cache.get(key);
      if (hit) {
        this.#cached++;
        // The time the step first ran: a rebuild from the cache makes the same image.
        this.#addLayer(res, hit.layer, step, hit.createdAt);
        res.key = key;
        // A sandbox already up does not have the cached layer's files: the next step that runs boots one that does.
        if (res.sandbox && hit.layer) await this.#retire(res);
        report('cached', hit.layer);
        continue;
      }
      report('running', null);
      const layer = step.kind === 'run' ? await this.#run(res, step, n) : await this.#copy(res, step);
      this.#ran++;
      const at = new Date().toISOString();
      this.#host.cache.put(key, layer, step.text, at);
      this.#addLayer(res, layer, step, at);
      res.key = key;
      report('done', layer, Math.round(performance.now() - t0));
    }
    if (res.pendingWorkdir && res.pendingWorkdir !== '/') {
      // No RUN came after the last WORKDIR: its directory gets a layer of its own, as Docker makes it.
      const dir = res.pendingWorkdir;
      const layer = await writeLayer(this.#host.store.blobs, directoryLayer(dir, this.#o.sourceDateEpoch ?? 0), this.#layerOptions());
      this.#addLayer(res, layer, { kind: 'config', line: 0, text: `WORKDIR ${dir}`, change: { workdir: dir } }, res.created);
      res.pendingWorkdir = null;
    }
    return res;
  }

  #signal(): { signal?: AbortSignal } {
    return this.#o.signal ? { signal: this.#o.signal } : {};
  }

  /** A stage's starting point: its base image (pulled if missing, or always with `pull`), an earlier stage, or nothing. */
  async #base(stage: PlannedStage): Promise<StageResult> {
    const base = stage.base;
    if (base.kind === 'scratch') return { state: scratchState(), key: stepKey('', ['scratch']), sandbox: null, imageRef: null, created: EPOCH_ZERO };
    if (base.kind === 'stage') {
      const from = this.#results.get(base.index);
      if (!from) throw new RoostError('INTERNAL', `stage ${base.index} was not built before the stage that uses it`);
      return { state: structuredClone(from.state), key: from.key, sandbox: null, imageRef: null, created: from.created };
    }
    const id = await this.#image(base.reference);
    const { layers, diffIds } = this.#host.store.layersOf(id);
    const blobs: LayerBlob[] = layers.map((l, i) => ({ digest: l.digest, diffId: diffIds[i]!, size: l.size, mediaType: l.mediaType }));
    const doc = await this.#host.store.rawConfig(id);
    if (Array.isArray((doc.config as { OnBuild?: unknown } | undefined)?.OnBuild) && ((doc.config as { OnBuild: unknown[] }).OnBuild.length ?? 0) > 0) {
      throw new RoostError('INVALID_ARGUMENT', `${this.#o.file}:${stage.line}: ${base.reference} has ONBUILD triggers, which Roost does not run`);
    }
    return {
      state: stateFromConfig(doc, blobs),
      key: stepKey('', ['image', id]),
      sandbox: null,
      imageRef: id,
      created: typeof doc.created === 'string' ? doc.created : EPOCH_ZERO,
    };
  }

  /** The id of an image by reference: stored, or pulled (always, with `pull`). */
  async #image(reference: string): Promise<string> {
    const known = this.#o.pull ? undefined : this.#host.store.find(reference);
    if (known) return known.id;
    this.#o.onProgress?.({ type: 'note', message: `pulling ${reference}` });
    return (await this.#host.store.pull(reference, this.#signal())).id;
  }

  async #keyOf(res: StageResult, step: StepRun | StepCopy): Promise<string> {
    if (step.kind === 'run') {
      return stepKey(res.key, ['run', step.argv, step.args, this.#o.network ?? 'user', this.#o.egress ?? null, this.#o.sourceDateEpoch ?? null]);
    }
    let from: unknown = null;
    if (step.from && 'stage' in step.from) from = this.#results.get(step.from.stage)?.key ?? null;
    else if (step.from) from = await this.#image(step.from.image);
    const entries = step.from ? null : await this.#o.context.select(step);
    const contents = entries ? await this.#o.context.digest(entries) : null;
    return stepKey(res.key, ['copy', step.add, step.sources, step.dest, step.chown, step.chmod, from, contents, this.#o.sourceDateEpoch ?? null]);
  }

  /** A step's layer (null: it changed nothing) and history entry, made at `at`. */
  #addLayer(res: StageResult, layer: LayerBlob | null, step: PlannedStep, at: string): void {
    if (layer) {
      res.state.layers.push(layer);
      // The stage's own image no longer matches a stored one.
      res.imageRef = null;
    }
    res.created = at;
    res.state.history.push({ created: this.#epoch ?? at, created_by: step.text, ...(layer ? {} : { empty_layer: true }) });
  }

  /** The stage's sandbox, booted on its layers so far (their image registered first when it is not a stored one). */
  async #sandbox(res: StageResult): Promise<BuildSandbox> {
    if (res.sandbox) return res.sandbox;
    let image = res.imageRef;
    if (!image) {
      const configBytes = configDocument(res.state, this.#epoch ?? res.created);
      const configDigest = `sha256:${createHash('sha256').update(configBytes).digest('hex')}`;
      const info = await this.#host.store.addLocal(
        { manifestBytes: manifestDocument(configBytes, configDigest, res.state.layers), configBytes, description: `build ${randomBytes(4).toString('hex')}` },
        [],
        { event: false, ...this.#signal() },
      );
      this.#intermediate.push(info.id);
      image = res.imageRef = info.id;
    }
    const sb = await this.#host.sandbox({
      image,
      network: this.#o.network ?? 'user',
      ...(this.#o.egress ? { egress: this.#o.egress } : {}),
      ...(this.#o.cpus ? { cpus: this.#o.cpus } : {}),
      ...(this.#o.memoryMiB ? { memoryMiB: this.#o.memoryMiB } : {}),
      ...(this.#o.diskSizeMiB ? { diskSizeMiB: this.#o.diskSizeMiB } : {}),
      ...this.#signal(),
    });
    this.#sandboxes.push(sb);
    // What the agent itself wrote at boot (resolv.conf, hosts) is sealed away: it is no step's.
    await sb.files._commitLayer(this.#signal());
    res.sandbox = sb;
    return sb;
  }

  /** Removes a stage's sandbox (its filesystem no longer matches the stage's layers). */
  async #retire(res: StageResult): Promise<void> {
    const sb = res.sandbox;
    res.sandbox = null;
    if (!sb) return;
    this.#sandboxes.splice(this.#sandboxes.indexOf(sb), 1);
    await sb.remove({ force: true });
  }

  /** A COPY layer (made on the host, no whiteouts) written into the stage's sandbox, sealed as its own layer there. */
  async #applyToSandbox(sb: BuildSandbox, layer: LayerBlob): Promise<void> {
    await sb.files.writeArchive('/', createReadStream(this.#host.store.blobs.path(layer.digest)).pipe(createGunzip()), this.#signal());
    await sb.files._commitLayer(this.#signal());
  }

  /** --chown as ids: numbers as they are, names looked up in the stage's /etc/passwd and /etc/group (read through its sandbox). */
  async #owner(res: StageResult, chown: string | null, line: number): Promise<{ uid: number; gid: number } | null> {
    if (chown === null) return null;
    const [user = '', group] = chown.split(':');
    const numeric = (s: string) => /^[0-9]+$/.test(s);
    let passwd = '';
    let groups = '';
    if (!numeric(user) || (group !== undefined && !numeric(group))) {
      const sb = await this.#sandbox(res);
      passwd = await sb.files.read('/etc/passwd', { format: 'text', ...this.#signal() }).catch(() => '');
      groups = await sb.files.read('/etc/group', { format: 'text', ...this.#signal() }).catch(() => '');
    }
    const lookup = (table: string, name: string, what: string): { id: number; gid?: number } => {
      if (numeric(name)) return { id: Number(name) };
      const row = table.split('\n').find((l) => l.split(':')[0] === name);
      if (!row) throw new RoostError('INVALID_ARGUMENT', `${this.#o.file}:${line}: --chown=${chown}: no ${what} ${name} in the image`);
      const f = row.split(':');
      return { id: Number(f[2]), ...(what === 'user' ? { gid: Number(f[3]) } : {}) };
    };
    const u = lookup(passwd, user, 'user');
    const gid = group !== undefined ? lookup(groups, group, 'group').id : (u.gid ?? u.id);
    return { uid: u.id, gid };
  }

  async #run(res: StageResult, step: StepRun, n: number): Promise<LayerBlob | null> {
    const sb = await this.#sandbox(res);
    const config = res.state.config;
    // ENV wins over an ARG of the same name; proxies come last and are never stored.
    const env = { ...step.proxy, ...step.args, ...envRecord(config.Env) };
    const cwd = config.WorkingDir || '/';
    if (cwd !== '/') await sb.files.makeDir(cwd, this.#signal());
    res.pendingWorkdir = null;
    const [cmd, ...args] = step.argv;
    if (cmd === undefined) throw new RoostError('INVALID_ARGUMENT', `${this.#o.file}:${step.line}: RUN has no command`);
    const handle = await sb.commands.start(cmd, { args, env, cwd, ...(config.User ? { user: config.User } : {}), ...this.#signal() });
    let tail = '';
    const pump = async (stream: AsyncIterable<Uint8Array>, name: 'stdout' | 'stderr') => {
      for await (const chunk of stream) {
        const data = Buffer.from(chunk).toString('utf8');
        tail = (tail + data).slice(-OUTPUT_TAIL_BYTES);
        this.#o.onProgress?.({ type: 'output', step: n, stream: name, data });
      }
    };
    await Promise.all([pump(handle.stdout, 'stdout'), pump(handle.stderr, 'stderr')]);
    const result = await handle.wait();
    if (result.exitCode !== 0) {
      throw new RoostError(
        'BUILD_FAILED',
        `${this.#o.file}:${step.line}: ${step.text.slice(0, 200)}: exited with ${result.signal ? `signal ${result.signal}` : `status ${result.exitCode}`}${tail ? `\n${tail.trimEnd()}` : ''}`,
        { details: { line: step.line, exitCode: result.exitCode, output: tail } },
      );
    }
    const layer = await sb.files._commitLayer(this.#signal());
    return writeLayer(
      this.#host.store.blobs,
      ociLayerFromOverlay(await sb.files._readLayer(layer, this.#signal()), this.#layerOptions()),
      this.#layerOptions(),
    );
  }

  #layerOptions(): { epoch?: number; signal?: AbortSignal } {
    return { ...(this.#o.sourceDateEpoch !== undefined ? { epoch: this.#o.sourceDateEpoch } : {}), ...this.#signal() };
  }

  async #copy(res: StageResult, step: StepCopy): Promise<LayerBlob | null> {
    const options = { ...this.#layerOptions(), owner: await this.#owner(res, step.chown, step.line) };
    let tar: AsyncIterable<Buffer>;
    if (step.from) {
      const source = 'stage' in step.from ? this.#results.get(step.from.stage) : await this.#imageResult(step.from.image);
      if (!source) throw new RoostError('INTERNAL', `the stage COPY --from names was not built`);
      tar = archiveCopyLayer(await this.#fromSandbox(await this.#sandbox(source), step), step, options);
    } else tar = copyLayer(await this.#o.context.select(step), step, options);
    const layer = await writeLayer(this.#host.store.blobs, tar, this.#layerOptions());
    if (layer && res.sandbox) await this.#applyToSandbox(res.sandbox, layer);
    return layer;
  }

  /** COPY --from an image that is no stage: a result of its own (its sandbox booted when needed), one per image. */
  async #imageResult(reference: string): Promise<StageResult> {
    const id = await this.#image(reference);
    let res = this.#images.get(id);
    if (!res) {
      res = {
        state: stateFromConfig(await this.#host.store.rawConfig(id), []),
        key: stepKey('', ['image', id]),
        sandbox: null,
        imageRef: id,
        created: EPOCH_ZERO,
      };
      this.#images.set(id, res);
    }
    return res;
  }

  /** The sources of COPY --from, each read from the source's sandbox as an archive. */
  async #fromSandbox(sb: BuildSandbox, step: StepCopy): Promise<{ source: string; archive: AsyncIterable<Uint8Array> }[]> {
    const out: { source: string; archive: AsyncIterable<Uint8Array> }[] = [];
    for (const source of step.sources) {
      if (/[*?[]/.test(source)) {
        throw new RoostError('INVALID_ARGUMENT', `${this.#o.file}:${step.line}: COPY --from with a wildcard (${source}) is not supported: name the path`);
      }
      const path = `/${source.replace(/^\/+/, '')}`;
      const archive = await sb.files.readArchive(path, this.#signal()).catch((e: unknown) => {
        if (e instanceof RoostError && e.code === 'NOT_FOUND') {
          throw new RoostError('INVALID_ARGUMENT', `${this.#o.file}:${step.line}: COPY --from: ${path} does not exist in the source`, { cause: e });
        }
        throw e;
      });
      out.push({ source, archive });
    }
    return out;
  }
}

/** A layer of one directory (and its parents), root's, 0755. */
async function* directoryLayer(path: string, mtime: number): AsyncGenerator<Buffer> {
  const parts = path.split('/').filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    yield encodeHeader({
      name: `${parts.slice(0, i).join('/')}/`,
      type: '5',
      mode: 0o755,
      uid: 0,
      gid: 0,
      size: 0,
      mtime,
      linkname: '',
      devmajor: 0,
      devminor: 0,
      xattrs: new Map(),
    });
  }
  yield TAR_END;
}

/** A step's cache key: its parent's key and what the step is, hashed. */
function stepKey(parent: string, what: unknown[]): string {
  return `sha256:${createHash('sha256')
    .update(JSON.stringify([parent, ...what]))
    .digest('hex')}`;
}
