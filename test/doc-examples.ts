import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';

/**
 * Type-checks the ```ts blocks of Markdown documents against the built
 * workspace packages (`@roost/core`, `@roost/client`, `@roost/api` resolve
 * through node_modules to their `dist/*.d.ts`), so an example that does not
 * compile fails a test instead of misleading a reader.
 *
 * The convention for documents:
 *
 * - Every ```ts block is its own ES module (top-level `await` works). It
 *   imports what it uses, as a reader would have to.
 * - Fragments that continue an earlier example use names from the
 *   document's prelude: one HTML comment, invisible on GitHub, that opens
 *   with `<!-- ts-prelude` on a line of its own and ends with `-->`. Its
 *   text is a module of its own that declares the shared names globally:
 *
 *   ```text
 *   <!-- ts-prelude
 *   import type { Runtime, Sandbox } from '@roost/core';
 *   declare global {
 *     const sandbox: Sandbox;
 *     const runtime: Runtime;
 *   }
 *   -->
 *   ```
 *
 *   A block's own declarations shadow the prelude's, so a block may declare
 *   `sandbox` itself and the next one may still use the prelude's.
 * - A snippet that is not TypeScript belongs in a ```sh or ```text block.
 */

/** One ```ts block of a document. */
export interface DocBlock {
  /** The document's path as given (for messages). */
  doc: string;
  /** 1-based line of the block's first code line in the document. */
  line: number;
  code: string;
}

/** The blocks and the prelude of one document. */
export interface DocExamples {
  doc: string;
  blocks: DocBlock[];
  /** The prelude's text and the 1-based document line of its first line, or null. */
  prelude: { code: string; line: number } | null;
}

/** One compiler complaint, located in the Markdown document. */
export interface DocDiagnostic {
  /** `doc:line`, the line in the Markdown document. */
  where: string;
  message: string;
}

/**
 * A fence opens a code block as CommonMark says: three or more backticks and
 * an info string without backticks (so a line that starts with inline code
 * such as ```` ```ts ```` is text). Groups: indentation, the fence, the language.
 */
const FENCE_OPEN = /^(\s*)(`{3,})\s*([^`\s]*)[^`]*$/;
const PRELUDE_OPEN = /^\s*<!--\s*ts-prelude\s*$/;

/** Finds the ```ts blocks and the prelude comment of a Markdown text. */
export function extractExamples(doc: string, markdown: string): DocExamples {
  const lines = markdown.split('\n');
  const blocks: DocBlock[] = [];
  let prelude: DocExamples['prelude'] = null;
  for (let i = 0; i < lines.length; i++) {
    const text = lines[i] ?? '';
    const fence = FENCE_OPEN.exec(text);
    if (fence) {
      const [, indent = '', ticks = '', lang = ''] = fence;
      // It ends at a line of at least as many backticks and nothing else.
      const closes = (l: string) => l.trim().length >= ticks.length && /^`+$/.test(l.trim());
      const end = findLine(lines, i + 1, closes, `${doc}:${i + 1}: a code block is not closed`);
      if (lang === 'ts' || lang === 'typescript') {
        // Blocks inside list items are indented: the indentation of the fence is not code.
        const code = lines.slice(i + 1, end).map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l));
        blocks.push({ doc, line: i + 2, code: code.join('\n') + '\n' });
      }
      // Other languages' blocks are skipped whole, so a ```ts inside one (as
      // in a ```text sample) is not taken for an example.
      i = end;
    } else if (PRELUDE_OPEN.test(text)) {
      if (prelude) throw new Error(`${doc}:${i + 1}: a document has at most one ts-prelude comment`);
      const end = findLine(lines, i + 1, (l) => l.trim() === '-->', `${doc}:${i + 1}: the ts-prelude comment is not closed by a line '-->'`);
      prelude = { code: lines.slice(i + 1, end).join('\n') + '\n', line: i + 2 };
      i = end;
    }
  }
  return { doc, blocks, prelude };
}

function findLine(lines: string[], from: number, match: (line: string) => boolean, error: string): number {
  for (let j = from; j < lines.length; j++) if (match(lines[j] ?? '')) return j;
  throw new Error(error);
}

/**
 * Compiles documents' examples and reports diagnostics per block. Parsed
 * library files (lib.d.ts, @types/node, the packages' declarations) are cached
 * across documents, which are compiled one program each so that their
 * preludes' globals do not meet.
 */
export class ExampleCompiler {
  readonly #root: string;
  readonly #options: ts.CompilerOptions;
  readonly #sourceCache = new Map<string, ts.SourceFile>();

  /**
   * @param root the repository root: examples are placed below it (in memory
   *   only), so `@roost/*` resolves through its node_modules and its
   *   package.json makes them ES modules.
   * @param tsconfig the compiler options to check with.
   */
  constructor(root: string, tsconfig: string) {
    this.#root = root;
    const parsed = ts.getParsedCommandLineOfConfigFile(
      tsconfig,
      {},
      {
        ...ts.sys,
        onUnRecoverableConfigFileDiagnostic: (d) => {
          throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
        },
      },
    );
    if (!parsed) throw new Error(`cannot read ${tsconfig}`);
    this.#options = { ...parsed.options, noEmit: true };
  }

  /** Every diagnostic of every block (and of the prelude), keyed by block. */
  check(examples: DocExamples): Map<DocBlock, DocDiagnostic[]> {
    // Virtual files in a directory that does not exist: nothing is written.
    const dir = join(this.#root, '.doc-examples', examples.doc.replace(/[^\w.-]/g, '_'));
    const files = new Map<string, { text: string; firstLine: number; block: DocBlock | null }>();
    if (examples.prelude) {
      files.set(join(dir, 'prelude.ts'), { text: examples.prelude.code, firstLine: examples.prelude.line, block: null });
    }
    for (const block of examples.blocks) files.set(join(dir, `line-${block.line}.ts`), { text: block.code, firstLine: block.line, block });

    const host = ts.createCompilerHost(this.#options);
    const readFile = host.readFile.bind(host);
    const fileExists = host.fileExists.bind(host);
    const getSourceFile = host.getSourceFile.bind(host);
    host.getCurrentDirectory = () => this.#root;
    host.fileExists = (name) => files.has(name) || fileExists(name);
    host.readFile = (name) => files.get(name)?.text ?? readFile(name);
    host.getSourceFile = (name, languageVersion, onError) => {
      const file = files.get(name);
      if (file) return ts.createSourceFile(name, file.text, languageVersion, true);
      const cached = this.#sourceCache.get(name);
      if (cached) return cached;
      const parsed = getSourceFile(name, languageVersion, onError);
      if (parsed) this.#sourceCache.set(name, parsed);
      return parsed;
    };
    const program = ts.createProgram({ rootNames: [...files.keys()], options: this.#options, host });

    const result = new Map<DocBlock, DocDiagnostic[]>(examples.blocks.map((b) => [b, []]));
    const preludeErrors: DocDiagnostic[] = [];
    const global = program.getGlobalDiagnostics().concat(program.getOptionsDiagnostics());
    for (const [name, file] of files) {
      const sourceFile = program.getSourceFile(name);
      if (!sourceFile) throw new Error(`${name} is not part of the program`);
      const diagnostics = [...program.getSyntacticDiagnostics(sourceFile), ...program.getSemanticDiagnostics(sourceFile)];
      const list = file.block ? result.get(file.block)! : preludeErrors;
      for (const d of diagnostics) list.push(this.#locate(examples.doc, file.firstLine, d));
    }
    // A broken prelude or configuration breaks every block: report it on each.
    const shared = [...preludeErrors, ...global.map((d) => this.#locate(examples.doc, 0, d))];
    if (shared.length > 0) for (const list of result.values()) list.push(...shared);
    return result;
  }

  #locate(doc: string, firstLine: number, d: ts.Diagnostic): DocDiagnostic {
    const message = `TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
    if (!d.file || d.start === undefined) return { where: doc, message };
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    const local = d.file.fileName.startsWith(join(this.#root, '.doc-examples'));
    return local ? { where: `${doc}:${firstLine + line}`, message } : { where: `${d.file.fileName}:${line + 1}`, message };
  }
}

/**
 * Throws unless the packages the examples import have been built: their
 * declarations are what the examples are checked against.
 */
export function requireBuiltPackages(root: string, packages: readonly string[]): void {
  for (const name of packages) {
    const types = join(root, 'packages', name, 'dist', 'index.d.ts');
    if (!existsSync(types)) throw new Error(`${types} is missing: run \`npm run build\` first (the examples are checked against the built packages)`);
  }
}

/** Reads a document relative to the repository root and extracts its examples. */
export function readExamples(root: string, doc: string): DocExamples {
  return extractExamples(doc, readFileSync(join(root, doc), 'utf8'));
}
