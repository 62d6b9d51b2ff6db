import { isAbsolute, relative, resolve, sep } from 'node:path';
import { Option, type Command } from 'commander';
import { isRoostError, RoostError, type BuildOptions, type BuildResult, type ImagesApi } from '@roost/api';
import { familiarImageReference, parseImageReference } from '@roost/core';
import { int } from './args.js';
import { buildProgressPrinter, resolveProgressMode, sanitize, seconds, type ProgressMode } from './build-progress.js';
import type { WithFace } from './connect.js';
import { Interrupted, Lifetime } from './lifetime.js';
import { networkOptions } from './network.js';

/*
 * `roost build [options] CONTEXT`: `images.build` through the daemon when
 * one runs (the context goes as a tar stream), else in a runtime opened
 * here. Progress on stderr (see build-progress.ts), the image on stdout.
 * The flags that say what to build (-f, --build-arg, --target, --no-cache,
 * --pull, --source-date-epoch, --progress) are shared with
 * `roost template create --build`.
 */

/** Exit status of a build whose step failed (BUILD_FAILED), as `docker build` exits. */
export const EXIT_BUILD_FAILED = 1;
/** Lines of a failed step's output the CLI prints (the message carries at most 4 KiB of it). */
const FAILURE_TAIL_LINES = 20;

const collect = (v: string, acc: string[]) => [...acc, v];

/** The flags of what to build, as commander gives them (`roost build` and `roost template create --build`). */
export interface BuildSourceFlags {
  file?: string;
  buildArg: string[];
  target?: string;
  /** False with --no-cache. */
  cache: boolean;
  pull?: boolean;
  sourceDateEpoch?: string;
  progress: string;
}

/** The flags of `roost build`. */
export interface BuildFlags extends BuildSourceFlags {
  tag: string[];
  network?: 'user' | 'none';
  egress?: 'allow' | 'deny';
  allow: string[];
  deny: string[];
  cpus?: number;
  memory?: number;
  disk?: number;
  quiet?: boolean;
  json?: boolean;
}

/** Adds -f, --build-arg, --target, --no-cache, --pull, --source-date-epoch and --progress. */
export function addBuildSourceFlags(cmd: Command): Command {
  return cmd
    .option('-f, --file <path>', 'the Dockerfile (default: CONTEXT/Dockerfile; a relative path is relative to the current directory, as docker takes it)')
    .option(
      '--build-arg <K=V>',
      'a build argument (repeatable); `--build-arg K` takes the value of $K, and is left out when K is not set',
      collect,
      [] as string[],
    )
    .option('--target <stage>', 'build this stage (by name) and the stages it needs; default the last')
    .option('--no-cache', 'run every step, the cache not asked (what runs is still cached)')
    .option('--pull', 'pull base images even when they are stored')
    .option(
      '--source-date-epoch <seconds>',
      'clamp layer mtimes to this time and date the image with it (default $SOURCE_DATE_EPOCH): equal builds give equal digests',
    )
    .addOption(
      new Option('--progress <mode>', 'auto (a line per step on a terminal, plain otherwise), tty, plain (every event, for logs), quiet')
        .choices(['auto', 'tty', 'plain', 'quiet'])
        .default('auto'),
    );
}

/** Registers `roost build`. */
export function addBuildCommand(program: Command, withFace: WithFace): void {
  const cmd = program
    .command('build')
    .description('build an image from a Dockerfile, each RUN step in a microVM (docs/images.md#build)')
    .argument('<context>', 'the build context: a directory with the Dockerfile and the files it copies')
    .option('-t, --tag <name>', 'name the image NAME[:TAG] (repeatable)', collect, [] as string[]);
  addBuildSourceFlags(cmd)
    .addOption(new Option('--network <mode>', 'the network of RUN steps: user (NAT, the default) or none').choices(['user', 'none']))
    .addOption(new Option('--egress <policy>', 'what RUN steps may connect to when no rule matches: allow (the default) or deny').choices(['allow', 'deny']))
    .option('--allow <RULE>', 'allow RUN steps to connect to TARGET[:PORTS][/tcp|udp], as `roost run --allow` (repeatable)', collect, [] as string[])
    .option('--deny <RULE>', 'deny RUN steps connections to TARGET[:PORTS][/tcp|udp] (repeatable)', collect, [] as string[])
    .option('--cpus <n>', "virtual CPUs of the RUN steps' sandbox", int('--cpus'))
    .option('-m, --memory <MiB>', "memory of the RUN steps' sandbox in MiB", int('--memory'))
    .option('--disk <MiB>', "size of the RUN steps' writable disk in MiB", int('--disk'))
    .option('-q, --quiet', 'print only the image id (as --progress quiet)')
    .option('--json', 'print the result as JSON')
    .action(async (context: string, flags: BuildFlags) => {
      const mode = flags.quiet ? 'quiet' : resolveProgressMode(flags.progress, process.stderr.isTTY === true);
      const started = Date.now();
      const result = await withFace('build', async (face) => {
        const options = buildOptions(flags, { context, cwd: process.cwd(), env: process.env, remote: face.kind === 'remote' });
        return buildWithProgress(face.images, context, options, mode);
      });
      if (flags.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      else if (mode === 'quiet') process.stdout.write(`${result.image.id}\n`);
      else process.stdout.write(buildSummary(result, Date.now() - started));
    });
}

/**
 * The BuildOptions of the flags, checked here so a bad flag fails before
 * anything is sent: `-f` resolved against `cwd` and made relative to the
 * context (through a daemon, which receives only the context, it must be
 * inside it), build arguments, SOURCE_DATE_EPOCH (`env`'s when not given),
 * the network of RUN steps.
 */
export function buildOptions(
  flags: Partial<BuildFlags> & Pick<BuildSourceFlags, 'buildArg'>,
  where: { context: string; cwd: string; env: NodeJS.ProcessEnv; remote: boolean },
): BuildOptions {
  const o: BuildOptions = {};
  if (flags.tag && flags.tag.length > 0) o.tags = flags.tag;
  if (flags.file !== undefined) o.dockerfile = dockerfilePath(flags.file, where);
  const args = buildArgs(flags.buildArg, where.env);
  if (Object.keys(args).length > 0) o.buildArgs = args;
  if (flags.target !== undefined) o.target = flags.target;
  if (flags.cache === false) o.noCache = true;
  if (flags.pull) o.pull = true;
  const epoch = sourceDateEpoch(flags.sourceDateEpoch, where.env);
  if (epoch !== undefined) o.sourceDateEpoch = epoch;
  const net = networkOptions({
    publish: [],
    ...(flags.network ? { network: flags.network } : {}),
    ...(flags.egress ? { egress: flags.egress } : {}),
    allow: flags.allow ?? [],
    deny: flags.deny ?? [],
  });
  if (net.network !== undefined) o.network = net.network as 'user' | 'none';
  if (net.egress !== undefined) o.egress = net.egress;
  if (flags.cpus !== undefined) o.cpus = flags.cpus;
  if (flags.memory !== undefined) o.memoryMiB = flags.memory;
  if (flags.disk !== undefined) o.diskSizeMiB = flags.disk;
  return o;
}

/** `-f PATH` as the build takes it: relative to the context when inside it; else absolute (embedded only). */
function dockerfilePath(file: string, where: { context: string; cwd: string; remote: boolean }): string {
  const abs = resolve(where.cwd, file);
  const rel = relative(resolve(where.cwd, where.context), abs);
  if (rel !== '' && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel)) return rel.split(sep).join('/');
  if (!where.remote) return abs;
  throw new RoostError(
    'INVALID_ARGUMENT',
    `-f ${file}: the Dockerfile must be inside the build context (${where.context}) when the daemon builds: it receives only the context`,
    { details: { option: '-f' } },
  );
}

/** `--build-arg K=V` and `--build-arg K` (the value of $K; left out when unset, as docker does). */
export function buildArgs(pairs: string[], env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    const name = eq < 0 ? p : p.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
      throw new RoostError('INVALID_ARGUMENT', `--build-arg ${p}: expected NAME=VALUE (or NAME, from the environment)`);
    if (eq >= 0) out[name] = p.slice(eq + 1);
    else if (env[name] !== undefined) out[name] = env[name];
  }
  return out;
}

/** `--source-date-epoch`, else $SOURCE_DATE_EPOCH (empty: unset), as whole seconds. */
export function sourceDateEpoch(flag: string | undefined, env: NodeJS.ProcessEnv): number | undefined {
  const [value, from] = flag !== undefined ? [flag, '--source-date-epoch'] : [env.SOURCE_DATE_EPOCH, 'SOURCE_DATE_EPOCH'];
  if (value === undefined || (flag === undefined && value === '')) return undefined;
  if (!/^\d{1,12}$/.test(value))
    throw new RoostError('INVALID_ARGUMENT', `${from} ${JSON.stringify(value)}: expected whole seconds since 1970 (like 1700000000)`);
  return Number(value);
}

/**
 * Runs a build with its progress printed on stderr in `mode`: Ctrl-C (or
 * SIGTERM, SIGHUP) cancels it and the CLI exits 128+signal (130); a step
 * that fails prints the step and the end of its output, and the CLI exits
 * EXIT_BUILD_FAILED. Other failures are thrown as they are.
 */
export async function buildWithProgress(images: ImagesApi, context: string, options: BuildOptions, mode: ProgressMode): Promise<BuildResult> {
  using life = new Lifetime();
  const printer = buildProgressPrinter(mode, process.stderr, { color: process.env.NO_COLOR === undefined || process.env.NO_COLOR === '' });
  try {
    return await images.build(context, { ...options, signal: life.signal, onProgress: (e) => printer.event(e) });
  } catch (e) {
    printer.end();
    const interrupted = life.interrupted;
    if (interrupted) {
      process.stderr.write('roost: build cancelled\n');
      throw interrupted;
    }
    if (isRoostError(e, 'BUILD_FAILED')) {
      process.stderr.write(describeBuildFailure(e));
      throw new Interrupted(EXIT_BUILD_FAILED, 'build failed');
    }
    throw e;
  } finally {
    printer.end();
  }
}

/**
 * A failed step as the CLI prints it: `roost: build failed: Dockerfile:4:
 * RUN make: exited with status 2`, then the end of its output (from the
 * error's message, which carries it), each line under a bar.
 */
export function describeBuildFailure(e: RoostError): string {
  const [head = '', ...rest] = e.message.split('\n');
  const tail = rest.map(sanitize).slice(-FAILURE_TAIL_LINES);
  return `roost: build failed: ${sanitize(head)}\n${tail.map((l) => `  | ${l}\n`).join('')}`;
}

/** What `roost build` prints on stdout at the end: the image id, then each tag. */
export function buildSummary(r: BuildResult, elapsedMs: number): string {
  const steps = (n: number) => `${n} ${n === 1 ? 'step' : 'steps'}`;
  let out = `Built ${r.image.id} in ${seconds(elapsedMs)} (${steps(r.ran)} ran, ${r.cached} cached)\n`;
  for (const t of r.image.tags) out += `Tagged ${familiar(t)}\n`;
  return out;
}

function familiar(name: string): string {
  try {
    return familiarImageReference(parseImageReference(name));
  } catch {
    return name;
  }
}
