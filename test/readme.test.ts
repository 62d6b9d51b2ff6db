import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ExampleCompiler, extractExamples, readExamples, requireBuiltPackages, type DocBlock, type DocDiagnostic } from './doc-examples.js';

// The ```ts examples of README.md and docs/*.md compile against the built
// packages (the convention for fragments is in test/doc-examples.ts). No
// VM is booted: this needs only `npm run build`.

const root = fileURLToPath(new URL('..', import.meta.url));
const docs = [
  'README.md',
  ...readdirSync(join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];

requireBuiltPackages(root, ['api', 'core', 'client']);
const compiler = new ExampleCompiler(root, join(root, 'test', 'tsconfig.doc-examples.json'));
const format = (list: DocDiagnostic[]) => list.map((d) => `${d.where}: ${d.message}`).join('\n');

describe('the checker', () => {
  it('reports a block that does not compile at its line in the document', () => {
    const markdown = [
      '# t',
      '<!-- ts-prelude',
      "import type { Sandbox } from '@roost/core';",
      'declare global { const sandbox: Sandbox }',
      '-->',
      '```ts',
      "await sandbox.commands.run('true');",
      '```',
      '',
      '```ts',
      "import { Runtime } from '@roost/core';",
      'const images = new Runtime().images;',
      '```',
      '```text',
      '```ts',
      '```',
      '```` ```ts ```` in a sentence is inline code, not a block',
    ].join('\n');
    const examples = extractExamples('t.md', markdown);
    expect(examples.blocks.map((b) => b.line)).toEqual([7, 11]);
    const [good, bad] = [...compiler.check(examples).values()];
    expect(good).toEqual([]);
    expect(bad).toHaveLength(1);
    expect(bad?.[0]?.where).toBe('t.md:12');
    expect(bad?.[0]?.message).toMatch(/TS2673: Constructor of class 'Runtime' is private/);
  });
});

for (const doc of docs) {
  const examples = readExamples(root, doc);
  if (examples.blocks.length === 0) continue;
  describe(doc, () => {
    // One program per document (compiled on first use), one test per block.
    let checked: Map<DocBlock, DocDiagnostic[]> | undefined;
    for (const block of examples.blocks) {
      it(`compiles the example at line ${block.line}`, () => {
        checked ??= compiler.check(examples);
        expect(format(checked.get(block) ?? [])).toBe('');
      });
    }
  });
}

it('finds the examples of the README', () => {
  expect(readExamples(root, 'README.md').blocks.length).toBeGreaterThan(0);
});
