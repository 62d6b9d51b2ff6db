/**
 * The parsed form of a Dockerfile (what `parseDockerfile` returns): one
 * record per instruction, nothing expanded yet.
 */

/**
 * A parsed Dockerfile: what each instruction says, checked for syntax, with
 * nothing expanded yet (variables are expanded by `planBuild`, which knows
 * the build args and the ENV in force at each line).
 */
export interface Dockerfile {
  /** The name used in messages (`options.file`, default `Dockerfile`). */
  file: string;
  /** The escape character (`# escape=` directive): `\` by default, or `` ` ``. */
  escape: '\\' | '`';
  /** The parser directives found at the top of the file, in order. */
  directives: ParserDirective[];
  /** ARG instructions before the first FROM: the global args, usable in FROM lines. */
  globalArgs: ArgInstruction[];
  /** The build stages, one per FROM, in file order. */
  stages: StageDefinition[];
  /** Things said about the file that are not errors, each prefixed `FILE:LINE: ` (ignored directives, empty continuation lines). */
  notes: string[];
}

/** A parser directive (`# name=value` at the top of the file). */
export interface ParserDirective {
  /** Lower-cased name: `syntax`, `escape` or `check`. */
  name: string;
  value: string;
  line: number;
}

/** One build stage: a FROM line and the instructions up to the next FROM. */
export interface StageDefinition {
  /** Its index among the stages (0-based), as `COPY --from=<index>` names it. */
  index: number;
  /** The `AS` name, lower-cased, or null. */
  name: string | null;
  /** The FROM line. */
  line: number;
  /** The FROM instruction as written (continuations joined). */
  text: string;
  /** The base as written, unexpanded: an image reference, an earlier stage's name, or `scratch`. */
  image: string;
  /** `--platform=` as written, unexpanded, or null. */
  platform: string | null;
  /** The stage's instructions after FROM, in order. */
  instructions: Instruction[];
}

/** A command line: exec form (a JSON array, run as is) or shell form (one string for the stage's SHELL). */
export type CommandLine = { form: 'exec'; argv: string[] } | { form: 'shell'; script: string };

/** What every instruction has. */
export interface InstructionBase {
  /** The first line of the instruction (1-based). */
  line: number;
  /** The last line (after continuations). */
  endLine: number;
  /** The instruction as written, continuations joined and trimmed. */
  text: string;
}

/** `ARG name[=default] ...` */
export interface ArgInstruction extends InstructionBase {
  kind: 'arg';
  /** Each declared arg: its name, and its default as written (quotes kept, unexpanded) or null. */
  args: { name: string; value: string | null }[];
}

/** `ENV k=v ...` or legacy `ENV k v`: keys and values as written (quotes kept, unexpanded). */
export interface EnvInstruction extends InstructionBase {
  kind: 'env';
  pairs: { key: string; value: string }[];
}

/** `LABEL k=v ...`: keys and values as written (quotes kept, unexpanded). */
export interface LabelInstruction extends InstructionBase {
  kind: 'label';
  pairs: { key: string; value: string }[];
}

/** `RUN cmd` (shell form) or `RUN ["exe", "arg"]` (exec form). */
export interface RunInstruction extends InstructionBase {
  kind: 'run';
  command: CommandLine;
}

/** `CMD ...` */
export interface CmdInstruction extends InstructionBase {
  kind: 'cmd';
  command: CommandLine;
}

/** `ENTRYPOINT ...` (`ENTRYPOINT []` clears it). */
export interface EntrypointInstruction extends InstructionBase {
  kind: 'entrypoint';
  command: CommandLine;
}

/** `SHELL ["exe", "-c"]` (JSON form only). */
export interface ShellInstruction extends InstructionBase {
  kind: 'shell';
  argv: string[];
}

/** `COPY` or `ADD`: sources and destination as written (unexpanded). */
export interface CopyInstruction extends InstructionBase {
  kind: 'copy';
  /** True for ADD. */
  add: boolean;
  sources: string[];
  dest: string;
  /** `--from=` as written (a stage name, a stage index or an image reference; never expanded, as Docker), or null. */
  from: string | null;
  /** `--chown=` as written, or null. */
  chown: string | null;
  /** `--chmod=` as written, or null. */
  chmod: string | null;
}

/** `WORKDIR path` (unexpanded). */
export interface WorkdirInstruction extends InstructionBase {
  kind: 'workdir';
  path: string;
}

/** `USER name[:group]` (unexpanded). */
export interface UserInstruction extends InstructionBase {
  kind: 'user';
  user: string;
}

/** `EXPOSE port[/proto] ...` (unexpanded words). */
export interface ExposeInstruction extends InstructionBase {
  kind: 'expose';
  ports: string[];
}

/** `VOLUME ["/a"]` or `VOLUME /a /b` (unexpanded). */
export interface VolumeInstruction extends InstructionBase {
  kind: 'volume';
  paths: string[];
}

/** `STOPSIGNAL signal` (unexpanded). */
export interface StopSignalInstruction extends InstructionBase {
  kind: 'stopsignal';
  signal: string;
}

/** `HEALTHCHECK NONE` or `HEALTHCHECK [flags] CMD ...`, in Docker's config form. */
export interface HealthcheckInstruction extends InstructionBase {
  kind: 'healthcheck';
  /** `['NONE']`, `['CMD', exe, args...]` (exec form) or `['CMD-SHELL', script]` (shell form; run by the container's shell). */
  test: string[];
  /** Nanoseconds (`--interval`), absent when not given. */
  interval?: number;
  /** Nanoseconds (`--timeout`). */
  timeout?: number;
  /** Nanoseconds (`--start-period`). */
  startPeriod?: number;
  /** Nanoseconds (`--start-interval`). */
  startInterval?: number;
  /** `--retries`. */
  retries?: number;
}

/** `MAINTAINER name` (deprecated by Docker; planned as the label `maintainer`). */
export interface MaintainerInstruction extends InstructionBase {
  kind: 'maintainer';
  maintainer: string;
}

/** Any instruction that can follow FROM. */
export type Instruction =
  | ArgInstruction
  | EnvInstruction
  | LabelInstruction
  | RunInstruction
  | CmdInstruction
  | EntrypointInstruction
  | ShellInstruction
  | CopyInstruction
  | WorkdirInstruction
  | UserInstruction
  | ExposeInstruction
  | VolumeInstruction
  | StopSignalInstruction
  | HealthcheckInstruction
  | MaintainerInstruction;

/** The FROM line, as `parseInstruction` returns it before it becomes a stage. */
export interface FromInstruction extends InstructionBase {
  kind: 'from';
  image: string;
  name: string | null;
  platform: string | null;
}
