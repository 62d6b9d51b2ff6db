/**
 * Node module hooks that run the workspace's TypeScript sources without a
 * build: `@roost/<pkg>` resolves to packages/<pkg>/src/index.ts, a relative
 * './x.js' to './x.ts' when that exists (NodeNext style), and .ts files are
 * transpiled one by one with the TypeScript compiler the repository already
 * has (no type check; isolatedModules makes that safe). Registered by
 * ts-register.mjs; for the child processes and worker threads of unit tests,
 * which cannot use vitest's transform (`node --import scripts/ts-register.mjs`).
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const packages = new URL('../packages/', import.meta.url);

export async function resolve(specifier, context, nextResolve) {
  const workspace = /^@roost\/([a-z0-9-]+)$/.exec(specifier);
  if (workspace) {
    const entry = new URL(`${workspace[1]}/src/index.ts`, packages);
    if (existsSync(entry)) return { url: entry.href, shortCircuit: true };
  }
  if ((specifier.startsWith('./') || specifier.startsWith('../')) && specifier.endsWith('.js') && context.parentURL?.endsWith('.ts')) {
    const source = new URL(specifier.replace(/\.js$/, '.ts'), context.parentURL);
    if (existsSync(source)) return { url: source.href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return nextLoad(url, context);
  const path = fileURLToPath(url);
  const { outputText } = ts.transpileModule(readFileSync(path, 'utf8'), {
    fileName: path,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false, inlineSourceMap: true, verbatimModuleSyntax: true },
  });
  return { format: 'module', source: outputText, shortCircuit: true };
}
