/**
 * The small parsers Dockerfile instructions share, written to BuildKit's
 * `frontend/dockerfile/parser` semantics: splitting the instruction name
 * from its flags and arguments, words with quotes kept, the JSON (exec)
 * form, and Go durations.
 */

/** Go's unicode.IsSpace, for one character. */
export function isGoSpace(ch: string): boolean {
  return /^[\s\u0085]$/u.test(ch);
}

/** An instruction line split into its name (lower-cased), its `--flags` and the rest. */
export interface SplitInstruction {
  name: string;
  /** Each flag as `name=value` or `name` (without the leading `--`), quotes removed. */
  flags: string[];
  /** The arguments after the flags, trimmed. */
  rest: string;
}

/**
 * Splits `NAME [--flag[=value]...] rest` as BuildKit's splitCommand: flags
 * are the leading words that start with `--` (a lone `--` ends them);
 * quotes and backslashes inside flag words are processed.
 */
export function splitInstruction(line: string): SplitInstruction {
  const trimmed = line.trim();
  const m = /^(\S+)(?:[\t\v\f\r ]+([^]*))?$/.exec(trimmed);
  const name = (m?.[1] ?? '').toLowerCase();
  const after = m?.[2] ?? '';
  const { rest, flags } = extractFlags(after);
  return { name, flags: flags.map((f) => f.slice(2)), rest: rest.trim() };
}

function extractFlags(line: string): { rest: string; flags: string[] } {
  const words: string[] = [];
  let phase: 'spaces' | 'word' | 'quote' = 'spaces';
  let word = '';
  let quote = '';
  let blankOk = false;
  for (let pos = 0; pos <= line.length; pos++) {
    const ch = pos < line.length ? (line[pos] as string) : '';
    if (phase === 'spaces') {
      if (pos === line.length) break;
      if (isGoSpace(ch)) continue;
      if (ch !== '-' || pos + 1 === line.length || line[pos + 1] !== '-') return { rest: line.slice(pos), flags: words };
      phase = 'word';
    }
    if (pos === line.length) {
      if (word !== '--' && (blankOk || word.length > 0)) words.push(word);
      break;
    }
    if (phase === 'word') {
      if (isGoSpace(ch)) {
        phase = 'spaces';
        if (word === '--') return { rest: line.slice(pos), flags: words };
        if (blankOk || word.length > 0) words.push(word);
        word = '';
        blankOk = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOk = true;
        phase = 'quote';
        continue;
      }
      let c = ch;
      if (c === '\\') {
        if (pos + 1 === line.length) continue;
        pos++;
        c = line[pos] as string;
      }
      word += c;
      continue;
    }
    // in a quote
    if (ch === quote) {
      phase = 'word';
      continue;
    }
    let c = ch;
    if (c === '\\') {
      if (pos + 1 === line.length) {
        phase = 'word';
        continue;
      }
      pos++;
      c = line[pos] as string;
    }
    word += c;
  }
  return { rest: '', flags: words };
}

/**
 * Splits on white space keeping quotes (and escape sequences) in the words,
 * as BuildKit's parseWords: ENV, LABEL and ARG use it; quotes are removed
 * later, when the words are expanded.
 */
export function parseWords(rest: string, escape: string): string[] {
  const chars = Array.from(rest);
  const words: string[] = [];
  let phase: 'spaces' | 'word' | 'quote' = 'spaces';
  let quote = '';
  let blankOk = false;
  let word = '';
  for (let pos = 0; pos <= chars.length; pos++) {
    let ch = pos < chars.length ? (chars[pos] as string) : '';
    if (phase === 'spaces') {
      if (pos === chars.length) break;
      if (isGoSpace(ch)) continue;
      phase = 'word';
    }
    if (pos === chars.length) {
      if (blankOk || word.length > 0) words.push(word);
      break;
    }
    if (phase === 'word') {
      if (isGoSpace(ch)) {
        phase = 'spaces';
        if (blankOk || word.length > 0) words.push(word);
        word = '';
        blankOk = false;
        continue;
      }
      if (ch === "'" || ch === '"') {
        quote = ch;
        blankOk = true;
        phase = 'quote';
      }
      if (ch === escape) {
        if (pos + 1 === chars.length) continue; // an escape at the end of the line is dropped
        word += ch;
        pos++;
        ch = chars[pos] as string;
      }
      word += ch;
      continue;
    }
    // in a quote
    if (ch === quote) phase = 'word';
    if (ch === escape && quote !== "'") {
      if (pos + 1 === chars.length) {
        phase = 'word';
        continue;
      }
      pos++;
      word += ch;
      ch = chars[pos] as string;
    }
    word += ch;
  }
  return words;
}

/** Splits on runs of blanks (`[\t\v\f\r ]+`), as BuildKit's whitespace-delimited arguments. */
export function splitBlanks(rest: string): string[] {
  if (rest === '') return [];
  return rest.split(/[\t\v\f\r ]+/);
}

/** The outcome of trying the JSON (exec) form. */
export type JsonForm = { json: true; values: string[] } | { json: false } | { json: 'not-strings' };

/**
 * Reads `rest` as a JSON array of strings (the exec form). Anything that is
 * not a JSON array falls back to the shell form (`{ json: false }`), as
 * Docker does; a JSON array with a non-string element is an error
 * (`'not-strings'`), as Docker's.
 */
export function parseJsonArray(rest: string): JsonForm {
  const trimmed = rest.replace(/^[\s\u0085]+/u, '');
  if (!trimmed.startsWith('[')) return { json: false };
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    return { json: false };
  }
  if (!Array.isArray(parsed)) return { json: false };
  if (!parsed.every((v): v is string => typeof v === 'string')) return { json: 'not-strings' };
  return { json: true, values: parsed };
}

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, μs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/**
 * Parses a Go duration (`1m30s`, `1.5h`, `300ms`, `0`) into nanoseconds, as
 * time.ParseDuration. Throws an Error `time: invalid duration "x"`.
 */
export function parseGoDuration(text: string): number {
  const bad = (): Error => new Error(`time: invalid duration "${text}"`);
  let s = text;
  let sign = 1;
  if (s.startsWith('-') || s.startsWith('+')) {
    if (s[0] === '-') sign = -1;
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') throw bad();
  let total = 0;
  const part = /^(\d*)(?:\.(\d*))?([^\d.]+)/u;
  while (s !== '') {
    const m = part.exec(s);
    if (!m) throw bad();
    const whole = m[1] ?? '';
    const frac = m[2];
    if (whole === '' && (frac === undefined || frac === '')) throw bad();
    const unit = UNIT_NS[m[3] ?? ''];
    if (unit === undefined) throw new Error(`time: unknown unit "${m[3] ?? ''}" in duration "${text}"`);
    const value = Number(`${whole === '' ? '0' : whole}.${frac ?? '0'}`);
    total += value * unit;
    s = s.slice(m[0].length);
  }
  return sign * Math.round(total);
}
