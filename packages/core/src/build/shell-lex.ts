/**
 * The Dockerfile's own small shell lexer: quote removal and variable
 * expansion as BuildKit's `frontend/dockerfile/shell` does it (our own code,
 * written to its semantics and checked against its test cases).
 *
 * - `$VAR`, `${VAR}`; unset variables expand to nothing.
 * - `${VAR:-word}` / `${VAR-word}`: word when VAR is unset (or, with `:`, empty).
 * - `${VAR:+word}` / `${VAR+word}`: word when VAR is set (and, with `:`, not empty).
 * - `${VAR:?msg}` / `${VAR?msg}`: an error when VAR is unset (or, with `:`, empty).
 * - `${VAR#pat}` `${VAR##pat}` `${VAR%pat}` `${VAR%%pat}`: shortest/longest prefix/suffix removed
 *   (`*` and `?` wildcards, no bracket expressions).
 * - `${VAR/pat/repl}` `${VAR//pat/repl}`: first/every match replaced.
 * - Single quotes keep everything literally; double quotes keep everything but `$`,
 *   and the escape character escapes only `"`, `$` and itself inside them.
 * - Outside quotes the escape character (`\`, or `` ` `` under `# escape=``) escapes any character.
 *
 * Errors are plain `Error`s with BuildKit's wording; the planner wraps them with the line.
 */

/** How {@link lexWord} treats quotes, escapes and unset variables (BuildKit's Lex options). */
export interface LexOptions {
  /** The escape character: `\` (default) or `` ` ``. */
  escape?: string;
  /** Keep quote characters in the result (used to detect heredoc words). */
  rawQuotes?: boolean;
  /** Keep escape characters in the result. */
  rawEscapes?: boolean;
  /** Leave references to unset variables as written instead of expanding them to nothing. */
  skipUnset?: boolean;
}

/** What one lexed word gave: the expanded text, the same split into words, and which variables were looked up. */
export interface LexResult {
  /** The word with quotes removed and variables expanded; white space between words kept. */
  result: string;
  /** The same, split into words on unquoted white space (white space from a variable's value splits too). */
  words: string[];
  /** Variables that were set when looked up. */
  matched: Set<string>;
  /** Variables that were looked up but not set. */
  unmatched: Set<string>;
}

/** Variables for expansion: a name to its value (a name absent from the map is unset). */
export type Variables = ReadonlyMap<string, string>;

const EOF = -1;

/** True for the white space Go's unicode.IsSpace reports. */
function isSpace(cp: number): boolean {
  return (
    cp === 0x20 ||
    (cp >= 0x09 && cp <= 0x0d) ||
    cp === 0x85 ||
    cp === 0xa0 ||
    cp === 0x1680 ||
    (cp >= 0x2000 && cp <= 0x200a) ||
    cp === 0x2028 ||
    cp === 0x2029 ||
    cp === 0x202f ||
    cp === 0x205f ||
    cp === 0x3000
  );
}

const LETTER = /\p{L}/u;
const DIGIT = /\p{Nd}/u;

function isLetter(cp: number): boolean {
  return cp >= 0 && LETTER.test(String.fromCodePoint(cp));
}
function isDigit(cp: number): boolean {
  return cp >= 0 && DIGIT.test(String.fromCodePoint(cp));
}

/** POSIX special parameters: `$@ $* $# $? $- $$ $! $0`. */
function isSpecialParam(cp: number): boolean {
  return cp >= 0 && '@*#?-$!0'.includes(String.fromCodePoint(cp));
}

/** Collects the words of a lexed string, as BuildKit's wordsStruct. */
class WordCollector {
  private word = '';
  private inWord = false;
  readonly words: string[] = [];

  addChar(ch: string): void {
    const cp = ch.codePointAt(0) ?? 0;
    if (isSpace(cp)) {
      if (this.inWord && this.word.length !== 0) {
        this.words.push(this.word);
        this.word = '';
        this.inWord = false;
      }
    } else {
      this.addRaw(ch);
    }
  }
  addRaw(text: string): void {
    this.word += text;
    this.inWord = true;
  }
  addString(text: string): void {
    for (const ch of text) this.addChar(ch);
  }
  finish(): string[] {
    if (this.word.length > 0) {
      this.words.push(this.word);
      this.word = '';
      this.inWord = false;
    }
    return this.words;
  }
}

class Lexer {
  private readonly cps: number[];
  private pos = 0;
  private readonly escape: number;
  private rawEscapes: boolean;
  readonly matched = new Set<string>();
  readonly unmatched = new Set<string>();

  constructor(
    input: string,
    private readonly vars: Variables,
    private readonly options: LexOptions,
  ) {
    this.cps = Array.from(input, (c) => c.codePointAt(0) ?? 0);
    this.escape = (options.escape ?? '\\').codePointAt(0) ?? 0x5c;
    this.rawEscapes = options.rawEscapes ?? false;
  }

  private peek(): number {
    return this.pos < this.cps.length ? (this.cps[this.pos] ?? EOF) : EOF;
  }
  private next(): number {
    if (this.pos >= this.cps.length) return EOF;
    return this.cps[this.pos++] ?? EOF;
  }

  /** Lexes until `stop` (consumed) or the end; a missing `stop` is an error. */
  processStopOn(stop: number, rawEscapes: boolean): { result: string; words: string[] } {
    const saved = this.rawEscapes;
    this.rawEscapes = rawEscapes;
    try {
      let result = '';
      const words = new WordCollector();
      while (this.peek() !== EOF) {
        const cp = this.peek();
        if (stop !== EOF && cp === stop) {
          this.next();
          return { result, words: words.finish() };
        }
        if (cp === 0x24 /* $ */) {
          const value = this.processDollar();
          result += value;
          words.addString(value);
        } else if (cp === 0x27 /* ' */) {
          const value = this.processSingleQuote();
          result += value;
          words.addRaw(value);
        } else if (cp === 0x22 /* " */) {
          const value = this.processDoubleQuote();
          result += value;
          words.addRaw(value);
        } else {
          let ch = this.next();
          if (ch === this.escape) {
            if (this.rawEscapes) {
              words.addRaw(String.fromCodePoint(ch));
              result += String.fromCodePoint(ch);
            }
            ch = this.next();
            if (ch === EOF) break;
            words.addRaw(String.fromCodePoint(ch));
          } else {
            words.addChar(String.fromCodePoint(ch));
          }
          result += String.fromCodePoint(ch);
        }
      }
      if (stop !== EOF) throw new Error(`unexpected end of statement while looking for matching ${String.fromCodePoint(stop)}`);
      return { result, words: words.finish() };
    } finally {
      this.rawEscapes = saved;
    }
  }

  private processSingleQuote(): string {
    let result = '';
    const open = this.next();
    if (this.options.rawQuotes) result += String.fromCodePoint(open);
    for (;;) {
      const ch = this.next();
      if (ch === EOF) throw new Error('unexpected end of statement while looking for matching single-quote');
      if (ch === 0x27) {
        if (this.options.rawQuotes) result += "'";
        return result;
      }
      result += String.fromCodePoint(ch);
    }
  }

  private processDoubleQuote(): string {
    let result = '';
    const open = this.next();
    if (this.options.rawQuotes) result += String.fromCodePoint(open);
    for (;;) {
      const cp = this.peek();
      if (cp === EOF) throw new Error('unexpected end of statement while looking for matching double-quote');
      if (cp === 0x22) {
        this.next();
        if (this.options.rawQuotes) result += '"';
        return result;
      }
      if (cp === 0x24) {
        result += this.processDollar();
        continue;
      }
      let ch = this.next();
      if (ch === this.escape) {
        if (this.rawEscapes) result += String.fromCodePoint(ch);
        const after = this.peek();
        if (after === EOF) continue; // an escape at the very end is dropped
        if (after === 0x22 || after === 0x24 || after === this.escape) ch = this.next();
      }
      result += String.fromCodePoint(ch);
    }
  }

  private processName(): string {
    let name = '';
    while (this.peek() !== EOF) {
      const cp = this.peek();
      if (name.length === 0 && isDigit(cp)) {
        while (this.peek() !== EOF && isDigit(this.peek())) name += String.fromCodePoint(this.next());
        return name;
      }
      if (name.length === 0 && isSpecialParam(cp)) return String.fromCodePoint(this.next());
      if (!isLetter(cp) && !isDigit(cp) && cp !== 0x5f /* _ */) break;
      name += String.fromCodePoint(this.next());
    }
    return name;
  }

  private getVar(name: string): { value: string; set: boolean } {
    const value = this.vars.get(name);
    if (value === undefined) {
      this.unmatched.add(name);
      return { value: '', set: false };
    }
    this.matched.add(name);
    return { value, set: true };
  }

  private processDollar(): string {
    this.next(); // the '$'
    if (this.peek() !== 0x7b /* { */) {
      const name = this.processName();
      if (name === '') return '$';
      const { value, set } = this.getVar(name);
      if (!set && this.options.skipUnset) return '$' + name;
      return value;
    }
    this.next(); // the '{'
    const first = this.peek();
    if (first === EOF) throw new Error("syntax error: missing '}'");
    if (first === 0x7b || first === 0x7d || first === 0x3a /* { } : */) throw new Error('syntax error: bad substitution');
    const name = this.processName();
    let ch = this.next();
    if (ch === EOF) throw new Error("syntax error: missing '}'");
    let modifier = String.fromCodePoint(ch);
    switch (ch) {
      case 0x7d /* } */: {
        const { value, set } = this.getVar(name);
        if (!set && this.options.skipUnset) return '${' + name + '}';
        return value;
      }
      case 0x3a /* : */:
      case 0x2b /* + */:
      case 0x2d /* - */:
      case 0x3f /* ? */:
      case 0x23 /* # */:
      case 0x25 /* % */: {
        const nullIsUnset = ch === 0x3a;
        if (nullIsUnset) {
          ch = this.next();
          modifier += ch === EOF ? '' : String.fromCodePoint(ch);
        }
        let word: string;
        try {
          word = this.processStopOn(0x7d, ch === 0x23 || ch === 0x25).result;
        } catch (err) {
          if (this.peek() === EOF) throw new Error("syntax error: missing '}'");
          throw err;
        }
        const { value, set } = this.getVar(name);
        if (this.options.skipUnset && !set) return '${' + name + modifier + word + '}';
        switch (ch) {
          case 0x2d:
            return !set || (nullIsUnset && value === '') ? word : value;
          case 0x2b:
            return !set || (nullIsUnset && value === '') ? '' : word;
          case 0x3f:
            if (!set) throw new Error(`${name}: ${word !== '' ? word : 'is not allowed to be unset'}`);
            if (nullIsUnset && value === '') throw new Error(`${name}: ${word !== '' ? word : 'is not allowed to be empty'}`);
            return value;
          case 0x25:
          case 0x23: {
            let pattern = word;
            let greedy = false;
            if (pattern.length > 0 && pattern.codePointAt(0) === ch) {
              greedy = true;
              pattern = pattern.slice(1);
            }
            return ch === 0x25 ? trimSuffix(pattern, value, greedy) : trimPrefix(pattern, value, greedy);
          }
          default:
            throw new Error(`unsupported modifier (${modifier}) in substitution`);
        }
      }
      case 0x2f /* / */: {
        const replaceAll = this.peek() === 0x2f;
        if (replaceAll) this.next();
        let pattern: string;
        let replacement: string;
        try {
          pattern = this.processStopOn(0x2f, true).result;
        } catch (err) {
          if (this.peek() === EOF) throw new Error("syntax error: missing '/' in ${}");
          throw err;
        }
        try {
          replacement = this.processStopOn(0x7d, true).result;
        } catch (err) {
          if (this.peek() === EOF) throw new Error("syntax error: missing '}'");
          throw err;
        }
        const { value, set } = this.getVar(name);
        if (this.options.skipUnset && !set) return '${' + name + '/' + pattern + '/' + replacement + '}';
        const re = shellPatternToRegExp(pattern, true, false, replaceAll);
        return value.replace(re, () => replacement);
      }
      default:
        throw new Error(`unsupported modifier (${modifier}) in substitution`);
    }
  }
}

/**
 * Turns a `${VAR#...}`-style shell pattern into a RegExp: `*` any run of
 * characters (greedy or shortest), `?` one character, `\x` the literal x
 * (only `*`, `?` and `\` may be escaped; `\}` and `\/` are kept as the
 * character). Throws on any other escape.
 */
export function shellPatternToRegExp(pattern: string, greedy: boolean, anchored: boolean, global = false): RegExp {
  const chars = Array.from(pattern);
  let out = anchored ? '^' : '';
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i] as string;
    if (ch === '*') out += greedy ? '.*' : '.*?';
    else if (ch === '?') out += '.';
    else if (ch === '\\') {
      const after = chars[i + 1];
      if (after === '}' || after === '/') continue;
      if (after !== '*' && after !== '?' && after !== '\\') throw new Error(`invalid pattern (${pattern}) in substitution: invalid escape '\\${after ?? ''}'`);
      out += '\\' + after;
      i++;
    } else if ('[]{}.+()|^$/'.includes(ch)) out += '\\' + ch;
    else out += ch;
  }
  return new RegExp(out, global ? 'gu' : 'u');
}

/** Reverses a pattern keeping each `\x` escape pair in order (`a\*c` -> `c\*a`). */
function reversePattern(pattern: string): string {
  const chars = Array.from(pattern);
  const out: string[] = new Array<string>(chars.length);
  const last = chars.length - 1;
  for (let i = 0; i <= last;) {
    const ch = chars[i] as string;
    const at = last - i;
    if (ch === '\\' && i !== last) {
      out[at - 1] = ch;
      out[at] = chars[i + 1] as string;
      i += 2;
    } else {
      out[at] = ch;
      i++;
    }
  }
  return out.join('');
}

function trimPrefix(pattern: string, value: string, greedy: boolean): string {
  const match = shellPatternToRegExp(pattern, greedy, true).exec(value);
  return match ? value.slice(match[0].length) : value;
}

function trimSuffix(pattern: string, value: string, greedy: boolean): string {
  // A regular expression cannot find the shortest rightmost match, so both are reversed.
  const reversed = Array.from(value).reverse().join('');
  return Array.from(trimPrefix(reversePattern(pattern), reversed, greedy))
    .reverse()
    .join('');
}

/**
 * Lexes one word: removes quotes, expands variables from `vars`, and also
 * splits the result into words. Throws an `Error` on a syntax error (an
 * unterminated quote, `${}`, a bad modifier) or a `${VAR?message}` failure.
 */
export function lexWord(word: string, vars: Variables, options: LexOptions = {}): LexResult {
  const lexer = new Lexer(word, vars, options);
  const { result, words } = lexer.processStopOn(EOF, options.rawEscapes ?? false);
  return { result, words, matched: lexer.matched, unmatched: lexer.unmatched };
}

/** {@link lexWord}'s expanded text alone (BuildKit's ProcessWord). */
export function expandWord(word: string, vars: Variables, escape = '\\'): string {
  return lexWord(word, vars, { escape }).result;
}

/** {@link lexWord}'s words alone (BuildKit's ProcessWords). */
export function expandWords(word: string, vars: Variables, escape = '\\'): string[] {
  return lexWord(word, vars, { escape }).words;
}
