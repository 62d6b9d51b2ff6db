#!/usr/bin/env node
/**
 * The layout rules of issue 15 that no linter checks, run by `npm run lint`:
 *
 * 1. No file in packages/*\/src is over 800 lines (tests included).
 * 2. No import cycle between the source files of packages/*\/src.
 *
 * Edges are the relative imports between .ts files: static imports and
 * re-exports, dynamic import() and `import('...')` types. Type-only imports
 * count too: a cycle through types still means two modules that cannot be
 * read, moved or tested one without the other. Imports of other workspace
 * packages (@roost/*) are not followed: package references are a DAG already,
 * since `tsc -b` refuses circular project references.
 *
 * Parses with the TypeScript compiler the repository already has (no new
 * dependency). Prints every problem and exits 1 if there is one.
 *
 * Usage: node scripts/check-layout.mjs [--max-lines N]
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const maxLinesFlag = process.argv.indexOf('--max-lines');
const MAX_LINES = maxLinesFlag === -1 ? 800 : Number(process.argv[maxLinesFlag + 1]);
if (!Number.isInteger(MAX_LINES) || MAX_LINES < 1) {
  console.error('usage: node scripts/check-layout.mjs [--max-lines N]');
  process.exit(2);
}

/** Every file under `dir`, recursively (no dist/ or node_modules/ lives under src/). */
function walk(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...walk(path));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

function sourceFiles() {
  const packages = join(root, 'packages');
  const files = [];
  for (const name of readdirSync(packages).sort()) {
    const src = join(packages, name, 'src');
    if (statSync(src, { throwIfNoEntry: false })?.isDirectory()) files.push(...walk(src));
  }
  return files.sort();
}

/** Lines as `wc -l` counts them, plus a last line without its newline. */
function lineCount(text) {
  if (text === '') return 0;
  let n = 0;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n++;
  return text.endsWith('\n') ? n : n + 1;
}

/** The .ts file a relative specifier names ('./x.js' is './x.ts' under NodeNext), or null. */
function resolveImport(from, specifier, known) {
  if (!specifier.startsWith('./') && !specifier.startsWith('../')) return null;
  const base = resolve(dirname(from), specifier);
  const candidates = [base.replace(/\.(m|c)?js$/, '.$1ts'), base, `${base}.ts`, join(base, 'index.ts')];
  return candidates.find((c) => known.has(c)) ?? null;
}

/** The relative imports of one file: [specifier, kind] with kind 'value', 'type-only' or 'dynamic'. */
function importsOf(path, text) {
  const source = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const found = [];
  const visit = (node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      const typeOnly = ts.isImportDeclaration(node)
        ? node.importClause?.isTypeOnly === true ||
          (node.importClause !== undefined &&
            node.importClause.name === undefined &&
            node.importClause.namedBindings !== undefined &&
            ts.isNamedImports(node.importClause.namedBindings) &&
            node.importClause.namedBindings.elements.length > 0 &&
            node.importClause.namedBindings.elements.every((e) => e.isTypeOnly))
        : node.isTypeOnly;
      found.push([node.moduleSpecifier.text, typeOnly ? 'type-only' : 'value']);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [arg] = node.arguments;
      if (arg && ts.isStringLiteralLike(arg)) found.push([arg.text, 'dynamic']);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      found.push([node.argument.literal.text, 'type-only']);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** Strongly connected components of more than one file, or of a file importing itself (Tarjan). */
function cyclicComponents(graph) {
  let counter = 0;
  const index = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const components = [];
  const connect = (v) => {
    index.set(v, counter);
    low.set(v, counter);
    counter++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)?.keys() ?? []) {
      if (!index.has(w)) {
        connect(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v), index.get(w)));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || graph.get(v)?.has(v)) components.push(component.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!index.has(v)) connect(v);
  return components;
}

/** A shortest cycle through `start` inside `members` (breadth-first), as a list of files ending where it began. */
function shortestCycle(graph, start, members) {
  const previous = new Map();
  const queue = [start];
  for (let i = 0; i < queue.length; i++) {
    const v = queue[i];
    for (const w of graph.get(v)?.keys() ?? []) {
      if (!members.has(w)) continue;
      if (w === start) {
        const path = [v];
        while (path[0] !== start) path.unshift(previous.get(path[0]));
        return [...path, start];
      }
      if (!previous.has(w)) {
        previous.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start, start];
}

const started = performance.now();
const files = sourceFiles();
const tsFiles = new Set(files.filter((f) => /\.(m|c)?ts$/.test(f) && !f.endsWith('.d.ts')));
const problems = [];
const show = (f) => relative(root, f);

for (const file of files) {
  const lines = lineCount(readFileSync(file, 'utf8'));
  if (lines > MAX_LINES) problems.push(`too long: ${show(file)} has ${lines} lines (at most ${MAX_LINES}): split it by job`);
}

/** file -> (imported file -> the kinds of its imports there). */
const graph = new Map();
for (const file of tsFiles) {
  const edges = new Map();
  for (const [specifier, kind] of importsOf(file, readFileSync(file, 'utf8'))) {
    const target = resolveImport(file, specifier, tsFiles);
    if (target === null) continue;
    if (!edges.has(target)) edges.set(target, new Set());
    edges.get(target).add(kind);
  }
  graph.set(file, edges);
}

for (const component of cyclicComponents(graph)) {
  const members = new Set(component);
  const cycle = shortestCycle(graph, component[0], members);
  const steps = cycle.slice(1).map((to, i) => {
    const kinds = [...graph.get(cycle[i]).get(to)].sort();
    const note = kinds.length === 1 && kinds[0] === 'value' ? '' : ` (${kinds.join('+')})`;
    return ` -> ${show(to)}${note}`;
  });
  const more = component.length > cycle.length - 1 ? `; ${component.length} files in this knot: ${component.map(show).join(', ')}` : '';
  problems.push(`import cycle: ${show(cycle[0])}${steps.join('')}${more}`);
}

const seconds = ((performance.now() - started) / 1000).toFixed(1);
if (problems.length > 0) {
  for (const p of problems) console.error(`check-layout: ${p}`);
  console.error(`check-layout: ${problems.length} problem(s) in ${files.length} files of packages/*/src (${seconds} s)`);
  process.exit(1);
}
console.log(`check-layout: ${files.length} files of packages/*/src, none over ${MAX_LINES} lines, no import cycle (${seconds} s)`);
