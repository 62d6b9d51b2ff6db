import type {
  ArgInstruction,
  CommandLine,
  CopyInstruction,
  FromInstruction,
  HealthcheckInstruction,
  Instruction,
  InstructionBase,
  ShellInstruction,
} from './dockerfile-types.js';
import { dockerfileError } from './dockerfile-error.js';
import { lexWord } from './shell-lex.js';
import { parseGoDuration, parseJsonArray, parseWords, splitBlanks, splitInstruction } from './words.js';

/** Where an instruction is, for its errors. */
export interface InstructionContext {
  file: string;
  line: number;
  endLine: number;
  escape: string;
}

/** Flags Docker has that Roost refuses, by instruction, with why. */
const UNSUPPORTED_FLAGS: Record<string, Record<string, string>> = {
  run: {
    mount: 'RUN --mount is not supported (no cache, bind, secret or ssh mounts): COPY what the step needs first',
    network: 'RUN --network is not supported: the build has one network policy (roost build --network)',
    security: 'RUN --security is not supported: RUN steps are never privileged',
    device: 'RUN --device is not supported',
  },
  copy: {
    link: 'COPY --link is not supported',
    parents: 'COPY --parents is not supported',
    exclude: 'COPY --exclude is not supported: use .dockerignore',
  },
  add: {
    link: 'ADD --link is not supported',
    'keep-git-dir': 'ADD --keep-git-dir is not supported: ADD from git is not supported',
    checksum: 'ADD --checksum is not supported: ADD from a URL is not supported',
    exclude: 'ADD --exclude is not supported: use .dockerignore',
    unpack: 'ADD --unpack is not supported',
  },
};

/** The flags each instruction takes: name -> 'string' or 'bool'. */
const KNOWN_FLAGS: Record<string, Record<string, 'string' | 'bool'>> = {
  from: { platform: 'string' },
  copy: { from: 'string', chown: 'string', chmod: 'string' },
  add: { chown: 'string', chmod: 'string' },
  healthcheck: { interval: 'string', timeout: 'string', 'start-period': 'string', 'start-interval': 'string', retries: 'string' },
};

const HEREDOC_RE = /^(\d*)<<(-?)([^<]*)$/;
const STAGE_NAME_RE = /^[a-z][a-z0-9-_.]*$/;
const URL_SOURCE_RE = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//;
const MIN_HEALTH_INTERVAL_NS = 1_000_000; // Docker's 1ms minimum

/** True for an ADD source Docker would fetch (http(s), git and other URLs, `git@host:repo`). */
export function isRemoteSource(source: string): boolean {
  return URL_SOURCE_RE.test(source) || /^git@[^:]+:/.test(source);
}

/** The error ADD from a URL or git gets. */
export const ADD_URL_MESSAGE = 'ADD from a URL is not supported: download in a RUN step or COPY the file';

/**
 * Parses one logical line (continuations joined) into an instruction, or a
 * FROM. Throws INVALID_ARGUMENT naming the line for anything wrong or
 * unsupported.
 */
export function parseInstruction(line: string, ctx: InstructionContext): Instruction | FromInstruction {
  const fail = (message: string): never => {
    throw dockerfileError(ctx.file, ctx.line, message);
  };
  const { name, flags: rawFlags, rest } = splitInstruction(line);
  const upper = name.toUpperCase();
  const base: InstructionBase = { line: ctx.line, endLine: ctx.endLine, text: line.trim() };
  const flags = readFlags(name, upper, rawFlags, fail);

  if ((name === 'run' || name === 'copy' || name === 'add') && hasHeredoc(line)) {
    fail(`${upper} with a heredoc (<<EOF) is not supported: ${name === 'run' ? 'put the script in a file and COPY it' : 'COPY a file from the context'}`);
  }

  switch (name) {
    case 'from': {
      const args = splitBlanks(rest);
      let stageName: string | null = null;
      if (args.length === 3 && args[1]?.toLowerCase() === 'as') {
        stageName = (args[2] as string).toLowerCase();
        if (!STAGE_NAME_RE.test(stageName)) fail(`invalid name for build stage: "${args[2]}", name can't start with a number or contain symbols`);
        if (stageName === 'scratch' || stageName === 'context') fail(`"${stageName}" is reserved and cannot name a build stage`);
      } else if (args.length !== 1) {
        fail('FROM requires either one or three arguments (FROM image [AS name])');
      }
      return { ...base, kind: 'from', image: args[0] as string, name: stageName, platform: flags.get('platform') ?? null };
    }
    case 'run':
      return { ...base, kind: 'run', command: commandLine(rest, upper, fail) };
    case 'cmd':
      return { ...base, kind: 'cmd', command: commandLine(rest, upper, fail) };
    case 'entrypoint':
      return { ...base, kind: 'entrypoint', command: commandLine(rest, upper, fail) };
    case 'shell':
      return parseShell(base, rest, fail);
    case 'env':
    case 'label': {
      const pairs = parseNameValues(rest, upper, ctx.escape, fail);
      return name === 'env' ? { ...base, kind: 'env', pairs } : { ...base, kind: 'label', pairs };
    }
    case 'arg':
      return parseArg(base, rest, ctx.escape, fail);
    case 'copy':
    case 'add':
      return parseCopy(base, name === 'add', rest, flags, fail);
    case 'workdir':
    case 'user':
    case 'stopsignal':
    case 'maintainer': {
      if (rest === '') fail(`${upper} requires exactly one argument`);
      if (name === 'workdir') return { ...base, kind: 'workdir', path: rest };
      if (name === 'user') return { ...base, kind: 'user', user: rest };
      if (name === 'stopsignal') return { ...base, kind: 'stopsignal', signal: rest };
      return { ...base, kind: 'maintainer', maintainer: rest };
    }
    case 'expose': {
      const ports = splitBlanks(rest);
      if (ports.length === 0) fail('EXPOSE requires at least one argument');
      return { ...base, kind: 'expose', ports };
    }
    case 'volume': {
      const form = listForm(rest, upper, fail);
      if (form.length === 0) fail('VOLUME requires at least one argument');
      const paths = form.map((v) => v.trim());
      if (paths.some((p) => p === '')) fail('VOLUME specified can not be an empty string');
      return { ...base, kind: 'volume', paths };
    }
    case 'healthcheck':
      return parseHealthcheck(base, rest, flags, fail);
    case 'onbuild':
      return fail('ONBUILD is not supported: Roost does not store or run build triggers');
    default:
      return fail(`unknown instruction ${upper || line.trim()}`);
  }
}

/** Checks the flags against what the instruction takes; returns them by name (a bool flag maps to 'true' or 'false'). */
function readFlags(name: string, upper: string, rawFlags: string[], fail: (m: string) => never): Map<string, string> {
  const known = KNOWN_FLAGS[name] ?? {};
  const unsupported = UNSUPPORTED_FLAGS[name] ?? {};
  const out = new Map<string, string>();
  for (const raw of rawFlags) {
    const eq = raw.indexOf('=');
    const flag = eq === -1 ? raw : raw.slice(0, eq);
    const value = eq === -1 ? null : raw.slice(eq + 1);
    const why = unsupported[flag];
    if (why !== undefined) fail(why);
    const type = known[flag];
    if (type === undefined) fail(`unknown flag --${flag} for ${upper}`);
    if (out.has(flag)) fail(`duplicate flag specified: --${flag}`);
    if (type === 'bool') {
      if (value !== null && !/^(true|false)$/i.test(value)) fail(`expecting boolean value for flag --${flag}, not: ${value}`);
      out.set(flag, value === null ? 'true' : value.toLowerCase());
    } else {
      if (value === null) fail(`missing a value on flag --${flag} (write --${flag}=<value>)`);
      out.set(flag, value as string);
    }
  }
  return out;
}

/** True when a RUN/COPY/ADD line has a heredoc word (`<<EOF`, `<<-"EOF"`, `3<<EOF`), as BuildKit detects them. */
function hasHeredoc(line: string): boolean {
  const { rest } = splitInstruction(line);
  if (parseJsonArray(rest).json !== false) return false;
  let words: string[];
  try {
    words = lexWord(line, new Map(), { rawQuotes: true, rawEscapes: true, skipUnset: true }).words;
  } catch {
    return false;
  }
  for (const word of words) {
    const m = HEREDOC_RE.exec(word);
    const name = m?.[3];
    if (!name) continue;
    try {
      if (lexWord(name, new Map(), { skipUnset: true }).words.length === 1) return true;
    } catch {
      continue;
    }
  }
  return false;
}

function commandLine(rest: string, upper: string, fail: (m: string) => never): CommandLine {
  if (rest === '') fail(`${upper} requires at least one argument`);
  const form = parseJsonArray(rest);
  if (form.json === 'not-strings') fail('when using JSON array syntax, arrays must be comprised of strings only');
  if (form.json === true) {
    if (form.values.length === 0 && upper === 'RUN') fail('RUN requires at least one argument');
    return { form: 'exec', argv: form.values };
  }
  return { form: 'shell', script: rest };
}

/** JSON array, or blank-separated words (COPY, ADD, VOLUME). */
function listForm(rest: string, upper: string, fail: (m: string) => never): string[] {
  const form = parseJsonArray(rest);
  if (form.json === 'not-strings') fail('when using JSON array syntax, arrays must be comprised of strings only');
  return form.json === true ? form.values : splitBlanks(rest);
}

function parseShell(base: InstructionBase, rest: string, fail: (m: string) => never): ShellInstruction {
  const form = parseJsonArray(rest);
  if (form.json === 'not-strings') fail('when using JSON array syntax, arrays must be comprised of strings only');
  if (rest === '' || (form.json === true && form.values.length === 0)) fail('SHELL requires at least one argument');
  if (form.json !== true) return fail('SHELL requires the arguments to be in JSON form, like SHELL ["/bin/bash", "-c"]');
  return { ...base, kind: 'shell', argv: form.values };
}

/** ENV and LABEL: `k=v k2="v 2"` or the legacy `k v w` (everything after the key is the value). */
function parseNameValues(rest: string, upper: string, escape: string, fail: (m: string) => never): { key: string; value: string }[] {
  const words = parseWords(rest, escape);
  if (words.length === 0) fail(`${upper} requires at least one argument`);
  const first = words[0] as string;
  if (!first.includes('=')) {
    const m = /^(\S+)[\t\v\f\r ]+([^]*)$/.exec(rest);
    if (!m) return fail(`${upper} must have two arguments (${upper} name value, or ${upper} name=value)`);
    return [{ key: m[1] as string, value: m[2] as string }];
  }
  return words.map((word) => {
    const eq = word.indexOf('=');
    if (eq === -1) fail(`syntax error - can't find = in "${word}". Must be of the form: name=value`);
    if (eq === 0) fail(`${upper} names can not be blank`);
    return { key: word.slice(0, eq), value: word.slice(eq + 1) };
  });
}

function parseArg(base: InstructionBase, rest: string, escape: string, fail: (m: string) => never): ArgInstruction {
  const words = parseWords(rest, escape);
  if (words.length === 0) fail('ARG requires at least one argument');
  const args = words.map((word) => {
    const eq = word.indexOf('=');
    if (eq === 0) fail('ARG names can not be blank');
    return eq === -1 ? { name: word, value: null } : { name: word.slice(0, eq), value: word.slice(eq + 1) };
  });
  return { ...base, kind: 'arg', args };
}

function parseCopy(base: InstructionBase, add: boolean, rest: string, flags: Map<string, string>, fail: (m: string) => never): CopyInstruction {
  const upper = add ? 'ADD' : 'COPY';
  const args = listForm(rest, upper, fail);
  if (args.length < 2)
    fail(`${upper} requires at least two arguments, but only ${args.length === 0 ? 'none was' : 'one was'} provided: the destination could not be determined`);
  const sources = args.slice(0, -1);
  if (add && sources.some(isRemoteSource)) fail(ADD_URL_MESSAGE);
  return {
    ...base,
    kind: 'copy',
    add,
    sources,
    dest: args[args.length - 1] as string,
    from: flags.get('from') ?? null,
    chown: flags.get('chown') ?? null,
    chmod: flags.get('chmod') ?? null,
  };
}

function parseHealthcheck(base: InstructionBase, rest: string, flags: Map<string, string>, fail: (m: string) => never): HealthcheckInstruction {
  if (rest === '') fail('HEALTHCHECK requires at least one argument');
  const m = /^(\S+)\s*([^]*)$/.exec(rest);
  const type = (m?.[1] ?? '').toUpperCase();
  const args = m?.[2] ?? '';
  if (type === 'NONE') {
    if (args !== '') fail('HEALTHCHECK NONE takes no arguments');
    if (flags.size > 0) fail('HEALTHCHECK NONE takes no flags');
    return { ...base, kind: 'healthcheck', test: ['NONE'] };
  }
  if (type !== 'CMD') fail(`unknown type "${type}" in HEALTHCHECK (try CMD)`);
  if (args === '') fail('missing command after HEALTHCHECK CMD');
  const form = parseJsonArray(args);
  if (form.json === 'not-strings') fail('when using JSON array syntax, arrays must be comprised of strings only');
  let test: string[];
  if (form.json === true) {
    if (form.values.length === 0) fail('missing command after HEALTHCHECK CMD');
    test = ['CMD', ...form.values];
  } else {
    test = ['CMD-SHELL', args];
  }
  const result: HealthcheckInstruction = { ...base, kind: 'healthcheck', test };
  const durations: [string, 'interval' | 'timeout' | 'startPeriod' | 'startInterval'][] = [
    ['interval', 'interval'],
    ['timeout', 'timeout'],
    ['start-period', 'startPeriod'],
    ['start-interval', 'startInterval'],
  ];
  for (const [flag, key] of durations) {
    const value = flags.get(flag);
    if (value === undefined || value === '') continue;
    let ns = 0;
    try {
      ns = parseGoDuration(value);
    } catch (err) {
      fail(`HEALTHCHECK --${flag}: ${(err as Error).message}`);
    }
    if (ns !== 0 && ns < MIN_HEALTH_INTERVAL_NS) fail(`HEALTHCHECK --${flag} cannot be less than 1ms`);
    result[key] = ns;
  }
  const retries = flags.get('retries');
  if (retries !== undefined && retries !== '') {
    if (!/^[+-]?\d+$/.test(retries) || Math.abs(Number(retries)) > 2 ** 31 - 1) fail(`HEALTHCHECK --retries: invalid number "${retries}"`);
    const n = Number(retries);
    if (n < 0) fail(`HEALTHCHECK --retries cannot be negative (${n})`);
    result.retries = n;
  }
  return result;
}
