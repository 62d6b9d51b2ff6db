import { parseImageReference } from '../image/reference.js';
import { dockerfileError, messageOf } from './dockerfile-error.js';
import type { CommandLine, CopyInstruction, Dockerfile, Instruction, StageDefinition } from './dockerfile-types.js';
import { ADD_URL_MESSAGE, isRemoteSource } from './instructions.js';
import type { BaseImageConfig, BuildPlan, PlanBuildOptions, PlannedStage, PlannedStep, StepConfig } from './plan-types.js';
import { PLATFORM_ARGS, PROXY_ARGS, cleanAbsolute, envRecord, isBuildPlatform, isSignal, parseChmod, parsePortSpec, resolveAgainst } from './plan-values.js';
import { expandWord, expandWords, type Variables } from './shell-lex.js';

export type * from './plan-types.js';

/** The SHELL a stage starts with when its base has none. */
export const DEFAULT_SHELL: readonly string[] = ['/bin/sh', '-c'];

/** The PATH Docker puts in the config of a stage built `FROM scratch` (and the planner expands `$PATH` with there). */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** What a stage has in force at a point of its instructions. */
interface StageState {
  /** ENV set by the Dockerfile (this stage and the stages it is based on), in order. */
  env: Map<string, string>;
  /** ARGs in scope that have a value. */
  args: Map<string, string>;
  /** The base image's Env (only for expansion; the engine adds it to the image). */
  baseEnv: Map<string, string>;
  workdir: string | null;
  /** Where a relative WORKDIR or COPY dest starts when no WORKDIR was set: the base's WorkingDir, or `/`. */
  baseWorkdir: string;
  user: string | null;
  shell: string[];
  /** A CMD came earlier in this stage (ENTRYPOINT then keeps it). */
  cmdSet: boolean;
}

/** A stage's dependency on another: its FROM (line of the stage) or a COPY --from (line of the COPY). */
interface Dependency {
  index: number;
  line: number;
}

type StageRef = { kind: 'image'; reference: string } | { kind: 'stage'; index: number } | { kind: 'scratch' };

/**
 * Resolves a parsed Dockerfile into the steps to run, as Docker would:
 * variables expanded where Docker expands them (ADD COPY ENV EXPOSE FROM
 * LABEL STOPSIGNAL USER VOLUME WORKDIR, ARG defaults; never RUN, CMD or
 * ENTRYPOINT, whose shell does it), ARG scoping (global ARGs usable in FROM
 * lines and re-declared in a stage to be used there; `--build-arg` over the
 * default; ARGs and ENV inherited through `FROM <stage>`), WORKDIR and COPY
 * destinations made absolute, only the stages the target needs, in
 * dependency order.
 *
 * Throws RoostError INVALID_ARGUMENT `FILE:LINE: ...` (details `{ file, line }`).
 */
export function planBuild(df: Dockerfile, options: PlanBuildOptions = {}): BuildPlan {
  const file = options.file ?? df.file;
  const buildArgs = new Map(Object.entries(options.buildArgs ?? {}));
  const notes = [...df.notes];
  const fail = (line: number, message: string): never => {
    throw dockerfileError(file, line, message);
  };
  const expand = (word: string, vars: Variables, line: number): string => {
    try {
      return expandWord(word, vars, df.escape);
    } catch (err) {
      return fail(line, `failed to expand "${word}": ${messageOf(err)}`);
    }
  };

  // Global args: the platform args, then the ARGs before the first FROM.
  const declared = new Set<string>();
  const globals = new Map<string, string>(Object.entries(PLATFORM_ARGS).map(([k, v]) => [k, buildArgs.get(k) ?? v]));
  for (const instruction of df.globalArgs) {
    for (const arg of instruction.args) {
      declared.add(arg.name);
      const given = buildArgs.get(arg.name);
      const value = given ?? (arg.value === null ? undefined : expand(arg.value, globals, instruction.line));
      if (value !== undefined) globals.set(arg.name, value);
    }
  }

  // Each stage's base, and the stages it depends on.
  const namesSoFar = new Map<string, number>();
  const allNames = new Map<string, number>();
  for (const stage of df.stages) {
    if (stage.name === null) continue;
    const earlier = allNames.get(stage.name);
    if (earlier !== undefined) fail(stage.line, `duplicate stage name "${stage.name}" (also at line ${df.stages[earlier]?.line ?? 0})`);
    allNames.set(stage.name, stage.index);
  }
  const bases: StageRef[] = [];
  const deps: Dependency[][] = [];
  for (const stage of df.stages) {
    const base = resolveBase(stage, globals, namesSoFar, expand, fail);
    bases.push(base);
    if (stage.name !== null) namesSoFar.set(stage.name, stage.index);
    const stageDeps: Dependency[] = base.kind === 'stage' ? [{ index: base.index, line: stage.line }] : [];
    for (const instruction of stage.instructions) {
      if (instruction.kind !== 'copy' || instruction.from === null) continue;
      const from = resolveCopyFrom(instruction, df.stages.length, allNames, fail);
      if ('stage' in from) stageDeps.push({ index: from.stage, line: instruction.line });
    }
    deps.push(stageDeps);
  }

  // The target and what it needs, in dependency order.
  let target = df.stages.length - 1;
  if (options.target !== undefined) {
    const found = allNames.get(options.target.toLowerCase());
    if (found === undefined) fail(0, `target stage "${options.target}" could not be found`);
    target = found as number;
  }
  const order = dependencyOrder(target, deps, df.stages, fail);

  // Plan the needed stages in file order: a stage's base stage always comes before it.
  const finalStates = new Map<number, StageState>();
  const planned = new Map<number, PlannedStage>();
  const stageNeeded = new Set(order);
  for (const stage of df.stages) {
    if (!stageNeeded.has(stage.index)) continue;
    const base = bases[stage.index] as StageRef;
    const state = initialState(base, stage, finalStates, options.baseImageConfig, fail);
    const steps: PlannedStep[] = [];
    for (const instruction of stage.instructions) {
      if (instruction.kind === 'arg') for (const arg of instruction.args) declared.add(arg.name);
      steps.push(
        planInstruction(instruction, state, { globals, buildArgs, allNames, stageCount: df.stages.length, file, escape: df.escape, notes, expand, fail }),
      );
    }
    finalStates.set(stage.index, state);
    planned.set(stage.index, { index: stage.index, name: stage.name, line: stage.line, base, steps });
  }

  const unusedBuildArgs = [...buildArgs.keys()].filter((k) => !declared.has(k) && !PROXY_ARGS.has(k) && !(k in PLATFORM_ARGS)).sort();
  return { stages: order.map((i) => planned.get(i) as PlannedStage), notes, unusedBuildArgs };
}

type Fail = (line: number, message: string) => never;
type Expand = (word: string, vars: Variables, line: number) => string;

function resolveBase(stage: StageDefinition, globals: Variables, namesSoFar: Map<string, number>, expand: Expand, fail: Fail): StageRef {
  if (stage.platform !== null) {
    const platform = expand(stage.platform, globals, stage.line);
    if (!isBuildPlatform(platform)) {
      fail(
        stage.line,
        `FROM --platform=${platform}: Roost builds only for linux/amd64 (this host)${platform !== stage.platform ? ` (from ${stage.platform})` : ''}`,
      );
    }
  }
  const image = expand(stage.image, globals, stage.line);
  if (image === '') fail(stage.line, `base name (${stage.image}) should not be blank`);
  const earlier = namesSoFar.get(image);
  if (earlier !== undefined) return { kind: 'stage', index: earlier };
  if (image === 'scratch') return { kind: 'scratch' };
  try {
    parseImageReference(image);
  } catch (err) {
    fail(stage.line, `FROM ${image}: ${messageOf(err)}`);
  }
  return { kind: 'image', reference: image };
}

function resolveCopyFrom(instruction: CopyInstruction, stageCount: number, allNames: Map<string, number>, fail: Fail): { stage: number } | { image: string } {
  const from = instruction.from as string;
  if (/^\d+$/.test(from)) {
    const index = Number(from);
    if (index >= stageCount) fail(instruction.line, `COPY --from=${from}: invalid stage index ${index} (the Dockerfile has ${stageCount} stages)`);
    return { stage: index };
  }
  const named = allNames.get(from.toLowerCase());
  if (named !== undefined) return { stage: named };
  if (from.includes('$')) fail(instruction.line, `COPY --from=${from}: --from does not expand variables (as in Docker); name a stage or an image`);
  try {
    parseImageReference(from);
  } catch (err) {
    fail(instruction.line, `COPY --from=${from} names no stage, and is not an image reference: ${messageOf(err)}`);
  }
  return { image: from };
}

/** The target and the stages it needs (transitively), each after the stages it uses. */
function dependencyOrder(target: number, deps: Dependency[][], stages: StageDefinition[], fail: Fail): number[] {
  const order: number[] = [];
  const state = new Map<number, 'visiting' | 'done'>();
  const visit = (index: number, via: Dependency | null): void => {
    const seen = state.get(index);
    if (seen === 'done') return;
    if (seen === 'visiting') {
      const stage = stages[index];
      fail(via?.line ?? 0, `circular dependency between stages: stage ${stage?.name ?? index} depends on itself`);
    }
    state.set(index, 'visiting');
    for (const dep of deps[index] ?? []) visit(dep.index, dep);
    state.set(index, 'done');
    order.push(index);
  };
  visit(target, null);
  return order;
}

function initialState(
  base: StageRef,
  stage: StageDefinition,
  finalStates: Map<number, StageState>,
  baseImageConfig: ((reference: string) => BaseImageConfig | undefined) | undefined,
  fail: Fail,
): StageState {
  if (base.kind === 'stage') {
    const parent = finalStates.get(base.index);
    if (!parent) return fail(stage.line, `internal error: stage ${base.index} was not planned before stage ${stage.index}`);
    return {
      env: new Map(parent.env),
      args: new Map(parent.args),
      baseEnv: new Map(parent.baseEnv),
      workdir: parent.workdir,
      baseWorkdir: parent.baseWorkdir,
      user: parent.user,
      shell: [...parent.shell],
      cmdSet: false,
    };
  }
  const fresh: StageState = {
    env: new Map(),
    args: new Map(),
    baseEnv: new Map(),
    workdir: null,
    baseWorkdir: '/',
    user: null,
    shell: [...DEFAULT_SHELL],
    cmdSet: false,
  };
  if (base.kind === 'scratch') {
    fresh.baseEnv.set('PATH', DEFAULT_PATH);
    return fresh;
  }
  const config = baseImageConfig?.(base.reference);
  if (!config) return fresh;
  if (config.onBuild && config.onBuild.length > 0) {
    fail(stage.line, `the base image ${base.reference} has ONBUILD triggers (${config.onBuild.length}), which Roost does not run`);
  }
  fresh.baseEnv = new Map(Object.entries(envRecord(config.env)));
  if (config.workingDir) fresh.baseWorkdir = cleanAbsolute(config.workingDir);
  if (config.shell && config.shell.length > 0) fresh.shell = [...config.shell];
  return fresh;
}

/** What planning one instruction needs besides the stage's state. */
interface PlanContext {
  globals: Variables;
  buildArgs: Map<string, string>;
  allNames: Map<string, number>;
  stageCount: number;
  file: string;
  /** The Dockerfile's escape character. */
  escape: string;
  notes: string[];
  expand: Expand;
  fail: Fail;
}

/** The variables an instruction expands with: ARGs, under the base image's Env, under the Dockerfile's ENV (ENV wins). */
function variables(state: StageState): Map<string, string> {
  return new Map([...state.args, ...state.baseEnv, ...state.env]);
}

function withShell(command: CommandLine, state: StageState): string[] {
  return command.form === 'exec' ? [...command.argv] : [...state.shell, command.script];
}

function planInstruction(instruction: Instruction, state: StageState, ctx: PlanContext): PlannedStep {
  const { line, text } = instruction;
  const config = (change: StepConfig['change']): StepConfig => ({ kind: 'config', line, text, change });
  const vars = variables(state);
  const expand = (word: string): string => ctx.expand(word, vars, line);

  switch (instruction.kind) {
    case 'arg': {
      const declaredValues: Record<string, string> = {};
      for (const arg of instruction.args) {
        const given = ctx.buildArgs.get(arg.name);
        let value: string | undefined;
        if (given !== undefined) value = given;
        else if (arg.value !== null) value = ctx.expand(arg.value, variables(state), line);
        else value = ctx.globals.get(arg.name);
        if (value !== undefined) {
          state.args.set(arg.name, value);
          declaredValues[arg.name] = value;
        }
      }
      return config({ arg: declaredValues });
    }
    case 'env': {
      const pairs: [string, string][] = instruction.pairs.map((p) => [expand(p.key), expand(p.value)]);
      for (const [key] of pairs) if (key === '') ctx.fail(line, 'ENV names can not be blank');
      for (const [key, value] of pairs) state.env.set(key, value);
      return config({ env: pairs });
    }
    case 'label': {
      const labels: Record<string, string> = {};
      for (const pair of instruction.pairs) {
        const key = expand(pair.key);
        if (key === '') ctx.fail(line, 'LABEL names can not be blank');
        labels[key] = expand(pair.value);
      }
      return config({ labels });
    }
    case 'maintainer':
      return config({ labels: { maintainer: instruction.maintainer } });
    case 'run': {
      const proxy: Record<string, string> = {};
      for (const [key, value] of ctx.buildArgs) if (PROXY_ARGS.has(key) && !state.args.has(key)) proxy[key] = value;
      return {
        kind: 'run',
        line,
        text,
        argv: withShell(instruction.command, state),
        env: Object.fromEntries(state.env),
        args: Object.fromEntries(state.args),
        proxy,
        user: state.user,
        workdir: state.workdir,
      };
    }
    case 'cmd':
      state.cmdSet = true;
      return config({ cmd: withShell(instruction.command, state) });
    case 'entrypoint':
      return config({ entrypoint: withShell(instruction.command, state), resetsCmd: !state.cmdSet });
    case 'shell':
      state.shell = [...instruction.argv];
      return config({ shell: [...instruction.argv] });
    case 'workdir': {
      const path = expand(instruction.path);
      if (path === '') ctx.fail(line, `WORKDIR ${instruction.path} is empty after expansion`);
      state.workdir = resolveAgainst(state.workdir ?? state.baseWorkdir, path);
      return config({ workdir: state.workdir });
    }
    case 'user':
      state.user = expand(instruction.user);
      return config({ user: state.user });
    case 'expose': {
      const ports: string[] = [];
      for (const word of instruction.ports) {
        let expanded: string[];
        try {
          expanded = expandWords(word, vars, ctx.escape);
        } catch (err) {
          return ctx.fail(line, `failed to expand "${word}": ${messageOf(err)}`);
        }
        for (const spec of expanded) {
          let parsed;
          try {
            parsed = parsePortSpec(spec);
          } catch (err) {
            return ctx.fail(line, `EXPOSE ${spec}: ${messageOf(err)}`);
          }
          if (parsed.droppedHostPart) ctx.notes.push(`${ctx.file}:${line}: EXPOSE ${spec}: the host part is ignored (EXPOSE never publishes a port)`);
          for (const port of parsed.ports) if (!ports.includes(port)) ports.push(port);
        }
      }
      if (ports.length === 0) ctx.fail(line, 'EXPOSE names no port after expansion');
      return config({ exposedPorts: ports });
    }
    case 'volume': {
      const volumes = instruction.paths.map((p) => expand(p));
      if (volumes.some((v) => v.trim() === '')) ctx.fail(line, 'VOLUME specified can not be an empty string');
      return config({ volumes });
    }
    case 'stopsignal': {
      const signal = expand(instruction.signal);
      if (!isSignal(signal)) ctx.fail(line, `STOPSIGNAL ${signal}: invalid signal`);
      return config({ stopSignal: signal });
    }
    case 'healthcheck': {
      const { test, interval, timeout, startPeriod, startInterval, retries } = instruction;
      const healthcheck = { test: [...test], interval, timeout, startPeriod, startInterval, retries };
      for (const key of Object.keys(healthcheck) as (keyof typeof healthcheck)[]) if (healthcheck[key] === undefined) delete healthcheck[key];
      return config({ healthcheck });
    }
    case 'copy':
      return planCopy(instruction, state, vars, ctx);
  }
}

function planCopy(instruction: CopyInstruction, state: StageState, vars: Variables, ctx: PlanContext): PlannedStep {
  const { line, text } = instruction;
  const name = instruction.add ? 'ADD' : 'COPY';
  const expand = (word: string): string => ctx.expand(word, vars, line);
  const sources = instruction.sources.map((source) => {
    const expanded = expand(source);
    if (expanded === '') ctx.fail(line, `${name} source "${source}" is empty after expansion`);
    if (instruction.add && isRemoteSource(expanded)) ctx.fail(line, ADD_URL_MESSAGE);
    return expanded;
  });
  const rawDest = expand(instruction.dest);
  const isDir = rawDest === '' || rawDest === '.' || rawDest === '..' || rawDest.endsWith('/') || rawDest.endsWith('/.') || sources.length > 1;
  let dest = resolveAgainst(state.workdir ?? state.baseWorkdir, rawDest);
  if (isDir && !dest.endsWith('/')) dest += '/';
  let from: { stage: number } | { image: string } | null = null;
  if (instruction.from !== null) from = resolveCopyFrom(instruction, ctx.stageCount, ctx.allNames, ctx.fail);
  const chown = instruction.chown === null ? null : expand(instruction.chown);
  let chmod: number | null = null;
  if (instruction.chmod !== null) {
    try {
      chmod = parseChmod(expand(instruction.chmod));
    } catch (err) {
      ctx.fail(line, `${name} ${messageOf(err)}`);
    }
  }
  return { kind: 'copy', line, text, add: instruction.add, sources, from, dest, chown, chmod, user: state.user, workdir: state.workdir };
}
