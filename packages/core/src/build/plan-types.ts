/**
 * What `planBuild` gives the build engine: the stages the target needs, in
 * the order to build them, each a list of steps with every variable
 * expanded and every path resolved.
 *
 * What the plan cannot know, because it lives in the base images' configs,
 * the engine supplies or applies:
 * - The base image's own Env, WorkingDir, User and Shell. `planBuild` takes
 *   them through `options.baseImageConfig` (so that `$PATH` or a relative
 *   WORKDIR expand as Docker expands them); without it a base image is
 *   planned as if its config had none of them. Either way the steps' `env`
 *   holds only what the Dockerfile set: the engine puts the base image's
 *   Env first, then the step's `env` over it.
 * - ENTRYPOINT resets a CMD inherited from the base (Docker's rule): a
 *   `{ entrypoint }` change says so in `resetsCmd`; the engine applies it.
 */

/** The plan of a build. */
export interface BuildPlan {
  /** Only the stages the target needs, in dependency order (each after the stages it uses); the last is the target. */
  stages: PlannedStage[];
  /** Things worth telling the user that are not errors, each `FILE:LINE: ...` (ignored directives, ignored EXPOSE host parts, ...). */
  notes: string[];
  /** `--build-arg` names no ARG of the planned stages (nor a global ARG) declares, sorted; Docker warns about these. */
  unusedBuildArgs: string[];
}

/** A stage to build. */
export interface PlannedStage {
  /** Its index in the Dockerfile (`COPY --from=<index>` names it). */
  index: number;
  /** Its `AS` name (lower-cased), or null. */
  name: string | null;
  /** The FROM line. */
  line: number;
  /** What it starts from: an image (the reference as written, variables expanded; Docker Hub short names not normalized), an earlier stage, or nothing. */
  base: { kind: 'image'; reference: string } | { kind: 'stage'; index: number } | { kind: 'scratch' };
  /** Its steps in order (config steps included). */
  steps: PlannedStep[];
}

/** One step of a stage. */
export type PlannedStep = StepRun | StepCopy | StepConfig;

/** What every step has. */
export interface StepBase {
  /** The instruction's first line. */
  line: number;
  /** The instruction as written (continuations joined, trimmed), for progress and cache keys. */
  text: string;
}

/** RUN: a command in a VM on the filesystem of the steps before it. */
export interface StepRun extends StepBase {
  kind: 'run';
  /** Exec form as given; shell form wrapped by the stage's SHELL (default `['/bin/sh', '-c']`): `[...shell, script]`. */
  argv: string[];
  /** ENV so far: set in this stage and in the stages it is based on (`FROM <stage>`), without the base image's own Env, which the engine puts first. */
  env: Record<string, string>;
  /**
   * The ARGs in scope with their values (a `--build-arg`, else the default,
   * else the global ARG's value; an ARG with none of them is left out). A
   * RUN sees them as environment variables, under ENV (ENV wins on a
   * clash); they are part of its cache key.
   */
  args: Record<string, string>;
  /**
   * The predefined proxy args given as `--build-arg` (HTTP_PROXY, https_proxy,
   * NO_PROXY, ...): a RUN sees them as environment variables without an ARG
   * declaring them, as in Docker, but they are kept out of the cache key and
   * the image (Docker's rule), unless an ARG declares them (then they are in `args`).
   */
  proxy: Record<string, string>;
  /** USER so far (null: the base's). */
  user: string | null;
  /** WORKDIR so far, absolute (null: the base's). */
  workdir: string | null;
}

/** COPY or ADD. */
export interface StepCopy extends StepBase {
  kind: 'copy';
  /** ADD: a local tar archive source is extracted at dest (URLs and git sources are refused when planning). */
  add: boolean;
  /**
   * The sources as written after expansion: paths or globs (`*`, `?`, `[...]`
   * per path component; `**` is not special, as in Docker's COPY) relative
   * to the context root, or to the source stage's root for `--from`. A
   * leading `/` means the root too.
   */
  sources: string[];
  /** Where from: a planned stage (by index), an image reference (`--from` that names no stage), or null for the build context. */
  from: { stage: number } | { image: string } | null;
  /** Absolute, resolved against WORKDIR; ends with '/' when it must be a directory (written with a trailing '/', `.`, or several sources). */
  dest: string;
  /** `--chown` as given (user[:group], names or ids), expanded; null: 0:0 as Docker. */
  chown: string | null;
  /** `--chmod` (octal) as a number, or null. */
  chmod: number | null;
  /** USER so far (null: the base's); COPY does not use it for ownership (Docker's rule) but the engine may show it. */
  user: string | null;
  /** WORKDIR so far, absolute (null: the base's). */
  workdir: string | null;
}

/** Docker's image-config Healthcheck: durations in nanoseconds. */
export interface PlannedHealthcheck {
  /** `['NONE']` (disable the base's), `['CMD', exe, ...args]` or `['CMD-SHELL', script]`. */
  test: string[];
  interval?: number;
  timeout?: number;
  startPeriod?: number;
  startInterval?: number;
  retries?: number;
}

/** A change of the image config, made without running anything. */
export interface StepConfig extends StepBase {
  kind: 'config';
  /**
   * The change, one of:
   * - `env`: pairs in order (later wins), expanded;
   * - `workdir`: absolute; the engine also makes the directory;
   * - `user`: expanded;
   * - `entrypoint`: shell form already wrapped with SHELL; `resetsCmd` is true when no CMD came
   *   earlier in this stage, so the base's CMD must be cleared (Docker's rule);
   * - `cmd`: shell form already wrapped with SHELL;
   * - `exposedPorts`: `port/proto` (`80/tcp`, `53/udp`), ranges expanded;
   * - `labels`: expanded (MAINTAINER becomes the label `maintainer`);
   * - `volumes`: expanded paths;
   * - `stopSignal`: as given after expansion (checked to be a signal);
   * - `healthcheck`: see {@link PlannedHealthcheck};
   * - `shell`: the new SHELL;
   * - `arg`: the ARGs this instruction declared that have a value (for history; their values are in later RUN steps' `args`).
   */
  change:
    | { env: [string, string][] }
    | { workdir: string }
    | { user: string }
    | { entrypoint: string[]; resetsCmd: boolean }
    | { cmd: string[] }
    | { exposedPorts: string[] }
    | { labels: Record<string, string> }
    | { volumes: string[] }
    | { stopSignal: string }
    | { healthcheck: PlannedHealthcheck }
    | { shell: string[] }
    | { arg: Record<string, string> };
}

/** What the plan may know of a base image's config (from its OCI image config). */
export interface BaseImageConfig {
  /** `Env` as in the config (`K=V` strings) or as a record. */
  env?: string[] | Record<string, string>;
  /** `WorkingDir`. */
  workingDir?: string;
  /** `User`. */
  user?: string;
  /** `Shell` (Docker's extension). */
  shell?: string[];
  /** `OnBuild` triggers: a base image with any is refused (Roost does not run them). */
  onBuild?: string[] | null;
}

/** Options of `planBuild`. */
export interface PlanBuildOptions {
  /** `--build-arg` values. */
  buildArgs?: Record<string, string>;
  /** `--target`: the stage to build (by name, case-insensitive); default the last stage. */
  target?: string;
  /** The Dockerfile's name in messages (default: the parsed Dockerfile's own). */
  file?: string;
  /**
   * The config of a base image, by reference as the plan shows it (FROM
   * expanded), or undefined when unknown. A build engine plans once without
   * it to learn the base images (`stages[].base`), reads their configs, then
   * plans again with it.
   */
  baseImageConfig?: (reference: string) => BaseImageConfig | undefined;
}
