import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, relative, resolve } from 'node:path';
import { type BuildImageOptions, type BuildResult, type ImageInfoBody } from '@roost/api';
import { RoostError } from '../errors.js';
import { formatImageReference, parseImageReference, withDefaultTag } from '../image/reference.js';
import { runBuild, type BuildHost } from './builder.js';
import { contextSource } from './context-source.js';
import { parseDockerfile } from './dockerfile.js';
import { envRecord } from './image-config.js';
import { planBuild } from './plan.js';
import type { BaseImageConfig } from './plan-types.js';

/**
 * Builds an image from a Dockerfile and its context directory: parsed and
 * planned (stages the target needs), base images pulled when missing, each
 * step run or taken from the cache, and the image recorded and tagged only
 * once it is whole (a failed build tags nothing). `options` are checked
 * already (BuildOptionsSchema).
 */
export async function buildImage(
  host: BuildHost & { imageBody(id: string): ImageInfoBody },
  context: string,
  options: BuildImageOptions = {},
): Promise<BuildResult> {
  // Checked by the caller (StoreImages.build) with the contract's schema.
  const { onProgress, signal, ...opts } = options;
  const root = resolve(context);
  const st = await stat(root).catch(() => null);
  if (!st?.isDirectory()) throw new RoostError('NOT_FOUND', `build context ${context} is not a directory`, { details: { path: context } });
  const dockerfilePath = resolve(root, opts.dockerfile ?? 'Dockerfile');
  const file = isAbsolute(opts.dockerfile ?? '') ? dockerfilePath : relative(root, dockerfilePath) || 'Dockerfile';
  const text = await readFile(dockerfilePath, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new RoostError(e.code === 'ENOENT' ? 'NOT_FOUND' : 'INVALID_ARGUMENT', `no Dockerfile at ${dockerfilePath} (${e.code ?? e.message})`, {
      details: { path: dockerfilePath },
    });
  });
  // Names are checked before anything runs: a bad tag fails now, not after the build.
  const tags = (opts.tags ?? []).map((t) => {
    const ref = parseImageReference(t);
    if (ref.digest)
      throw new RoostError('INVALID_ARGUMENT', `tags: ${t} names a digest; a build's image is named by a tag (name:tag)`, { details: { field: 'tags' } });
    return formatImageReference(withDefaultTag(ref));
  });
  const df = parseDockerfile(text, { file });
  const planOptions = { ...(opts.buildArgs ? { buildArgs: opts.buildArgs } : {}), ...(opts.target ? { target: opts.target } : {}), file };
  // Planned once to learn the base images, whose configs (Env, WorkingDir, User, Shell) the real plan expands with.
  const first = planBuild(df, planOptions);
  const bases = new Map<string, BaseImageConfig>();
  for (const stage of first.stages) {
    if (stage.base.kind !== 'image' || bases.has(stage.base.reference)) continue;
    const ref = stage.base.reference;
    const known = opts.pull ? undefined : host.store.find(ref);
    if (!known) onProgress?.({ type: 'note', message: `pulling ${ref}` });
    const id =
      known?.id ??
      (
        await host.store.pull(ref, signal ? { signal } : {}).catch((e: unknown) => {
          if (!(e instanceof RoostError) || e.code === 'ABORTED') throw e;
          throw new RoostError(e.code, `${file}:${stage.line}: the base image ${ref}: ${e.message}`, { cause: e, details: { ...e.details, line: stage.line } });
        })
      ).id;
    const config = ((await host.store.rawConfig(id)).config ?? {}) as {
      Env?: string[];
      WorkingDir?: string;
      User?: string;
      Shell?: string[];
      OnBuild?: string[];
    };
    bases.set(ref, {
      env: envRecord(config.Env),
      ...(config.WorkingDir ? { workingDir: config.WorkingDir } : {}),
      ...(config.User ? { user: config.User } : {}),
      ...(config.Shell ? { shell: config.Shell } : {}),
      onBuild: config.OnBuild ?? null,
    });
  }
  const plan = planBuild(df, { ...planOptions, baseImageConfig: (ref) => bases.get(ref) });
  if (plan.unusedBuildArgs.length > 0) onProgress?.({ type: 'note', message: `build arguments no ARG declares: ${plan.unusedBuildArgs.join(', ')}` });
  return runBuild(
    host,
    {
      plan,
      context: await contextSource(root, dockerfilePath, file),
      file,
      ...(opts.noCache ? { noCache: true } : {}),
      // Base images were pulled above when asked; the engine finds them stored.
      ...(opts.network ? { network: opts.network } : {}),
      ...(opts.egress ? { egress: opts.egress } : {}),
      ...(opts.cpus ? { cpus: opts.cpus } : {}),
      ...(opts.memoryMiB ? { memoryMiB: opts.memoryMiB } : {}),
      ...(opts.diskSizeMiB ? { diskSizeMiB: opts.diskSizeMiB } : {}),
      ...(opts.sourceDateEpoch !== undefined ? { sourceDateEpoch: opts.sourceDateEpoch } : {}),
      ...(signal ? { signal } : {}),
      ...(onProgress ? { onProgress } : {}),
    },
    async (built) => {
      const info = await host.store.addLocal(
        { manifestBytes: built.manifestBytes, configBytes: built.configBytes, description: `build:${root}` },
        tags,
        signal ? { signal } : {},
      );
      return { image: host.imageBody(info.id), ran: built.ran, cached: built.cached };
    },
  );
}
