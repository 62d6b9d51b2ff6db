/**
 * `.dockerignore`: reading the file as moby/patternmatcher's ignorefile
 * does, and matching paths as its PatternMatcher does (our own code, to
 * its semantics and test cases): Go filepath.Match syntax plus `**`
 * (any number of directories), `!` exceptions evaluated in order (the
 * last pattern that matches wins), a pattern that matches a directory
 * matching everything under it, leading `/` and `./` stripped, patterns
 * cleaned like paths.
 *
 * Why not an npm library: `ignore` follows .gitignore, whose rules differ
 * (a pattern without `/` matches at any depth, trailing `/` means
 * directories only); `@balena/dockerignore` matches case-insensitively and
 * passes several RegExp metacharacters through unescaped; `@zeit/dockerignore`
 * is a fork of `ignore`. None has patternmatcher's parent-directory rules.
 */
import { posix } from 'node:path';
import { BadPatternError, readClass, regExpChar, validateGlob } from './glob.js';

/** One pattern of a `.dockerignore`, cleaned, with where it came from. */
export interface IgnorePattern {
  /** The pattern without its `!`, cleaned (`./a//b/` -> `a/b`). */
  pattern: string;
  /** True for an exception (`!pattern`): a match includes the path again. */
  exclusion: boolean;
  /** The line of the `.dockerignore` it came from (0 when given directly). */
  line: number;
}

/** Go's filepath.Clean on a `/` path. */
export function goClean(path: string): string {
  if (path === '') return '.';
  const normalized = posix.normalize(path);
  return normalized.length > 1 && normalized.endsWith('/') ? normalized.slice(0, -1) : normalized;
}

/** Go's filepath.Dir: all but the last element, cleaned (`a/b/` -> `a/b`, `a` -> `.`). */
function goDir(path: string): string {
  return goClean(path.slice(0, path.lastIndexOf('/') + 1));
}

/** Go's strings.TrimSpace. */
function trimSpace(text: string): string {
  return text.replace(/^[\s\u0085]+|[\s\u0085]+$/gu, '');
}

/**
 * Reads `.dockerignore` text into patterns, as ignorefile.ReadAll: a BOM
 * dropped, lines starting with `#` skipped (before trimming, as Docker),
 * blank lines skipped, `!` exceptions, each pattern cleaned and a leading
 * `/` dropped. Throws an Error naming the line for a malformed pattern or a
 * lone `!`.
 */
export function parseIgnoreFile(text: string): IgnorePattern[] {
  const out: IgnorePattern[] = [];
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    let raw = (lines[n] ?? '').replace(/\r$/, '');
    if (n === 0 && raw.startsWith('\uFEFF')) raw = raw.slice(1);
    if (raw.startsWith('#')) continue;
    let pattern = trimSpace(raw);
    if (pattern === '') continue;
    const exclusion = pattern.startsWith('!');
    if (exclusion) pattern = trimSpace(pattern.slice(1));
    if (pattern.length > 0) {
      pattern = goClean(pattern);
      if (pattern.length > 1 && pattern.startsWith('/')) pattern = pattern.slice(1);
    }
    out.push(checked({ pattern, exclusion, line: n + 1 }));
  }
  return out;
}

/** A pattern checked as PatternMatcher's New checks it. */
function checked(p: IgnorePattern): IgnorePattern {
  const where = p.line > 0 ? `line ${p.line}: ` : '';
  if (p.exclusion && p.pattern === '') throw new Error(`${where}illegal exclusion pattern: "!"`);
  try {
    validateGlob(p.pattern);
  } catch (err) {
    if (err instanceof BadPatternError) throw new Error(`${where}syntax error in pattern "${p.exclusion ? '!' : ''}${p.pattern}"`);
    throw err;
  }
  return p;
}

type Compiled = { kind: 'exact'; text: string } | { kind: 'prefix'; text: string } | { kind: 'suffix'; text: string } | { kind: 'regexp'; re: RegExp };

/** Compiles a pattern as patternmatcher's Pattern.compile, keeping its match kinds (they differ for `**x`). */
function compile(pattern: string): Compiled {
  const chars = Array.from(pattern);
  let source = '^';
  let kind: Compiled['kind'] = 'exact';
  for (let pos = 0, token = 0; pos < chars.length; token++) {
    const ch = chars[pos++] as string;
    if (ch === '*') {
      if (chars[pos] === '*') {
        pos++;
        if (chars[pos] === '/') pos++;
        if (pos >= chars.length) {
          if (kind === 'exact') kind = 'prefix';
          else {
            source += '.*';
            kind = 'regexp';
          }
        } else {
          source += '(.*/)?';
          kind = 'regexp';
        }
        if (token === 0) kind = 'suffix';
      } else {
        source += '[^/]*';
        kind = 'regexp';
      }
    } else if (ch === '?') {
      source += '[^/]';
      kind = 'regexp';
    } else if (ch === '\\') {
      const next = chars[pos];
      if (next !== undefined) {
        source += regExpChar(next);
        pos++;
        kind = 'regexp';
      } else {
        source += regExpChar('\\');
      }
    } else if (ch === '[') {
      const cls = readClass(chars, pos - 1, pattern);
      source += cls.source;
      pos = cls.end;
      kind = 'regexp';
    } else if (ch === ']') {
      source += regExpChar(ch);
      kind = 'regexp';
    } else {
      source += regExpChar(ch);
    }
  }
  if (kind === 'prefix') return { kind, text: pattern.slice(0, -2) };
  if (kind === 'suffix') return { kind, text: pattern.slice(2) };
  if (kind === 'exact') return { kind, text: pattern };
  return { kind, re: new RegExp(source + '$', 'u') };
}

function matchOne(c: Compiled, path: string): boolean {
  switch (c.kind) {
    case 'exact':
      return path === c.text;
    case 'prefix':
      return path.startsWith(c.text);
    case 'suffix':
      return path.endsWith(c.text) || (c.text.startsWith('/') && path === c.text.slice(1));
    case 'regexp':
      return c.re.test(path);
  }
}

/** What matching a directory gave, for matching what is inside it (patternmatcher's MatchInfo). */
export type ParentMatches = readonly boolean[];

/** `.dockerignore` patterns, ready to match context paths. */
export class IgnoreMatcher {
  private readonly compiled: Compiled[];
  /** True when some pattern is an exception (`!`). */
  readonly hasExclusions: boolean;
  /** True when every exception is a literal path (maybe ending in `/*` or `/**`), so an excluded directory no exception names can be skipped whole. */
  private readonly onlyLiteralExclusions: boolean;
  private readonly exclusionPrefixes: string[];

  /** Patterns as {@link parseIgnoreFile} gives them, or plain strings (`!x` for an exception), checked here. */
  constructor(readonly patterns: readonly IgnorePattern[]) {
    this.compiled = patterns.map((p) => compile(p.pattern));
    this.hasExclusions = patterns.some((p) => p.exclusion);
    const stripped = patterns.filter((p) => p.exclusion).map((p) => p.pattern.replace(/\/\*\*$/, '').replace(/\/\*$/, ''));
    this.onlyLiteralExclusions = stripped.every((p) => !/[*?[\\]/.test(p));
    this.exclusionPrefixes = stripped.map((p) => p + '/');
  }

  /** A matcher from pattern strings (`!` for exceptions), each cleaned and checked as a `.dockerignore` line. */
  static fromStrings(lines: readonly string[]): IgnoreMatcher {
    return new IgnoreMatcher(parseIgnoreFile(lines.join('\n')).map((p) => ({ ...p, line: 0 })));
  }

  /**
   * Whether `path` (relative, `/`-separated, cleaned) is ignored, given the
   * result for its parent directory (omit it for a top-level path, or to
   * check the parents here), as patternmatcher's MatchesUsingParentResults.
   * Returns the result and what to pass for the paths inside it.
   */
  match(path: string, parent?: ParentMatches): { ignored: boolean; info: ParentMatches } {
    const info: boolean[] = new Array<boolean>(this.compiled.length).fill(false);
    let ignored = false;
    const haveParent = parent !== undefined && parent.length === this.compiled.length;
    this.compiled.forEach((c, i) => {
      const pattern = this.patterns[i] as IgnorePattern;
      let match = haveParent ? (parent[i] ?? false) : false;
      if (!match) {
        if (pattern.exclusion !== ignored) return;
        match = matchOne(c, path);
        if (!match && !haveParent) {
          const dirs = goDir(path);
          if (dirs !== '.') {
            const parts = dirs.split('/');
            for (let n = 1; n <= parts.length && !match; n++) match = matchOne(c, parts.slice(0, n).join('/'));
          }
        }
      }
      info[i] = match;
      if (match) ignored = !pattern.exclusion;
    });
    return { ignored, info };
  }

  /** Whether `path` is ignored, its parents checked here (patternmatcher's MatchesOrParentMatches). */
  ignores(path: string): boolean {
    const clean = goClean(path);
    if (clean === '.') return false;
    return this.match(clean).ignored;
  }

  /** False when nothing under the ignored directory `dir` can be included again by an exception, so a walk may skip it (as BuildKit's). */
  mayIncludeUnder(dir: string): boolean {
    if (!this.hasExclusions) return false;
    if (!this.onlyLiteralExclusions) return true;
    const prefix = dir + '/';
    return this.exclusionPrefixes.some((p) => p.startsWith(prefix));
  }
}
