/**
 * Go's `path/filepath.Match` syntax, which both COPY sources and
 * `.dockerignore` patterns use: `*` (any run of characters but `/`), `?`
 * (one character but `/`), `[...]` / `[^...]` classes with ranges, and `\x`
 * for a literal x. Patterns compile to RegExps; a malformed pattern is an
 * Error ("syntax error in pattern"), as Go's ErrBadPattern.
 */

/** The error Go's filepath.ErrBadPattern stands for. */
export class BadPatternError extends Error {
  constructor(readonly pattern: string) {
    super(`syntax error in pattern "${pattern}"`);
    this.name = 'BadPatternError';
  }
}

/** One character as a RegExp literal that is safe inside and outside a class under the `u` flag. */
export function regExpChar(ch: string): string {
  return /^[A-Za-z0-9_]$/.test(ch) ? ch : `\\u{${(ch.codePointAt(0) ?? 0).toString(16)}}`;
}

/**
 * Reads a `[...]` class starting at `chars[start]` (the `[`), by Go's
 * rules: `^` negates, `a-z` ranges, `\x` escapes, a `]` or `-` where a
 * character is due is an error, so is a class that does not end. Returns
 * the RegExp source of the class and the index after its `]`.
 */
export function readClass(chars: string[], start: number, pattern: string): { source: string; end: number } {
  let i = start + 1;
  let negated = false;
  if (chars[i] === '^') {
    negated = true;
    i++;
  }
  const getEsc = (): string => {
    let ch = chars[i];
    if (ch === undefined || ch === '-' || ch === ']') throw new BadPatternError(pattern);
    if (ch === '\\') {
      i++;
      ch = chars[i];
      if (ch === undefined) throw new BadPatternError(pattern);
    }
    i++;
    if (i >= chars.length) throw new BadPatternError(pattern);
    return ch;
  };
  const ranges: string[] = [];
  let count = 0;
  for (;;) {
    if (chars[i] === ']' && count > 0) {
      i++;
      break;
    }
    const lo = getEsc();
    let hi = lo;
    if (chars[i] === '-') {
      i++;
      hi = getEsc();
    }
    count++;
    // Go accepts a reversed range (it matches nothing); a RegExp would not compile it.
    if ((lo.codePointAt(0) ?? 0) <= (hi.codePointAt(0) ?? 0)) ranges.push(lo === hi ? regExpChar(lo) : `${regExpChar(lo)}-${regExpChar(hi)}`);
  }
  return { source: `[${negated ? '^' : ''}${ranges.join('')}]`, end: i };
}

/** The RegExp source (unanchored) of a filepath.Match pattern; throws BadPatternError. */
export function globSource(pattern: string): string {
  const chars = Array.from(pattern);
  let out = '';
  for (let i = 0; i < chars.length;) {
    const ch = chars[i] as string;
    if (ch === '*') {
      out += '[^/]*';
      i++;
    } else if (ch === '?') {
      out += '[^/]';
      i++;
    } else if (ch === '[') {
      const cls = readClass(chars, i, pattern);
      out += cls.source;
      i = cls.end;
    } else if (ch === '\\') {
      const next = chars[i + 1];
      if (next === undefined) throw new BadPatternError(pattern);
      out += regExpChar(next);
      i += 2;
    } else {
      out += regExpChar(ch);
      i++;
    }
  }
  return out;
}

const compiled = new Map<string, RegExp>();

/** Throws BadPatternError when `pattern` is not valid filepath.Match syntax. */
export function validateGlob(pattern: string): void {
  globSource(pattern);
}

/**
 * Go's `filepath.Match(pattern, name)` on `/`-separated names: the whole
 * name must match; `*` and `?` never match `/`. Throws BadPatternError.
 */
export function filepathMatch(pattern: string, name: string): boolean {
  let re = compiled.get(pattern);
  if (!re) {
    re = new RegExp(`^${globSource(pattern)}$`, 'u');
    if (compiled.size > 1000) compiled.clear();
    compiled.set(pattern, re);
  }
  return re.test(name);
}

/** True when a path component has an unescaped `*`, `?` or `[` (BuildKit's containsWildcards). */
export function containsWildcards(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const ch = name[i];
    if (ch === '\\') i++;
    else if (ch === '*' || ch === '?' || ch === '[') return true;
  }
  return false;
}

/**
 * Splits a relative path at its first component with a wildcard: the
 * literal directory before it (`''` for the root) and the pattern from it
 * on (`''` when there is no wildcard).
 */
export function splitWildcards(path: string): { dir: string; pattern: string } {
  const parts = path.split('/').filter((p) => p !== '');
  const at = parts.findIndex(containsWildcards);
  if (at === -1) return { dir: parts.join('/'), pattern: '' };
  return { dir: parts.slice(0, at).join('/'), pattern: parts.slice(at).join('/') };
}
