import { DEFAULT_DOCKERFILE_NAME, dockerfileError } from './dockerfile-error.js';
import type { Dockerfile } from './dockerfile-types.js';
import { parseInstruction } from './instructions.js';

export type * from './dockerfile-types.js';

/** Options of {@link parseDockerfile}. */
export interface ParseDockerfileOptions {
  /** The Dockerfile's name in messages and error details (default `Dockerfile`). */
  file?: string;
}

const DIRECTIVE_RE = /^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$/;
const KNOWN_DIRECTIVES = new Set(['syntax', 'escape', 'check']);
const BOM = '\uFEFF';

/** Go's unicode.IsSpace on the left of a line (the parser trims with it). */
function trimLeft(line: string): string {
  return line.replace(/^[\s\u0085]+/u, '');
}

/** The continuation test for an escape character: `X` at the end (after optional blanks), not itself escaped. */
function continuationRegExp(escape: string): RegExp {
  const e = escape === '\\' ? '\\\\' : escape;
  return new RegExp(`([^${e}])${e}[ \\t]*$|^${e}[ \\t]*$`);
}

/**
 * Reads a Dockerfile as Docker's parser does: parser directives at the top
 * (`# syntax=` and `# check=` noted as ignored, `# escape=` obeyed),
 * comments and blank lines skipped, continuation lines joined (comment and
 * blank lines inside a continuation skipped, as Docker), instruction names
 * case-insensitive, exec (JSON) and shell forms. Every instruction Roost
 * cannot build (ONBUILD, RUN --mount, heredocs, COPY --link, ADD from a URL,
 * an unknown instruction) is an error naming its line: nothing is skipped.
 *
 * Throws RoostError INVALID_ARGUMENT `FILE:LINE: ...` with `details: { file, line }`.
 */
export function parseDockerfile(text: string, options: ParseDockerfileOptions = {}): Dockerfile {
  const file = options.file ?? DEFAULT_DOCKERFILE_NAME;
  const lines = text.split('\n').map((l) => l.replace(/\r$/, ''));
  if (lines.length > 0 && lines[0]?.startsWith(BOM)) lines[0] = lines[0].slice(BOM.length);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();

  const result: Dockerfile = { file, escape: '\\', directives: [], globalArgs: [], stages: [], notes: [] };
  let directivesDone = false;
  let continuation = continuationRegExp('\\');

  const readDirective = (raw: string, lineNo: number): void => {
    if (directivesDone) return;
    const match = DIRECTIVE_RE.exec(raw);
    const name = match?.[1]?.toLowerCase();
    if (!match || name === undefined || !KNOWN_DIRECTIVES.has(name)) {
      directivesDone = true;
      return;
    }
    const value = match[2] ?? '';
    if (result.directives.some((d) => d.name === name)) throw dockerfileError(file, lineNo, `only one ${name} parser directive can be used`);
    result.directives.push({ name, value, line: lineNo });
    if (name === 'escape') {
      if (value !== '\\' && value !== '`') throw dockerfileError(file, lineNo, `invalid escape token '${value}' does not match \` or \\`);
      result.escape = value;
      continuation = continuationRegExp(value);
    } else if (name === 'syntax') {
      result.notes.push(`${file}:${lineNo}: # syntax=${value} directive ignored (Roost builds with its own frontend)`);
    } else {
      result.notes.push(`${file}:${lineNo}: # check=${value} directive ignored (Roost runs no build checks)`);
    }
  };

  let i = 0;
  while (i < lines.length) {
    const startLine = i + 1;
    const first = trimLeft(lines[i] ?? '');
    i++;
    readDirective(first, startLine);
    const uncommented = first.startsWith('#') ? '' : first;
    let joined = uncommented;
    let ended = true;
    if (continuation.test(joined)) {
      joined = joined.replace(continuation, '$1');
      ended = false;
    }
    if (ended && joined === '') continue;

    let emptyContinuation = false;
    while (!ended && i < lines.length) {
      const raw = lines[i] ?? '';
      i++;
      if (trimLeft(raw).startsWith('#')) continue; // a comment inside a continuation is skipped
      if (trimLeft(raw) === '') {
        emptyContinuation = true;
        continue;
      }
      if (continuation.test(raw)) joined += raw.replace(continuation, '$1');
      else {
        joined += raw;
        ended = true;
      }
    }
    const endLine = i;
    if (emptyContinuation) {
      result.notes.push(`${file}:${startLine}: empty continuation line (Docker warns about these; they will become errors in a future release)`);
    }

    const parsed = parseInstruction(joined, { file, line: startLine, endLine, escape: result.escape });
    if (parsed.kind === 'from') {
      result.stages.push({
        index: result.stages.length,
        name: parsed.name,
        line: parsed.line,
        text: parsed.text,
        image: parsed.image,
        platform: parsed.platform,
        instructions: [],
      });
      continue;
    }
    const stage = result.stages[result.stages.length - 1];
    if (stage) {
      stage.instructions.push(parsed);
    } else if (parsed.kind === 'arg') {
      result.globalArgs.push(parsed);
    } else {
      throw dockerfileError(file, startLine, `${parsed.text.split(/\s/)[0]?.toUpperCase()} before the first FROM: only ARG may come before FROM`);
    }
  }

  if (result.stages.length === 0) {
    if (result.globalArgs.length === 0) throw dockerfileError(file, 0, 'the Dockerfile has no instructions');
    throw dockerfileError(file, 0, 'the Dockerfile has no FROM: there is no build stage');
  }
  return result;
}
