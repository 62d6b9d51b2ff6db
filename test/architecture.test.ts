import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// docs/ARCHITECTURE.md shows the whole layer map: every workspace package,
// and every directory and top-level module of @roost/core, is in it. A new
// package, directory or core module without a line there fails here.

const root = fileURLToPath(new URL('..', import.meta.url));
const architecture = readFileSync(join(root, 'docs', 'ARCHITECTURE.md'), 'utf8');

/**
 * The paths the tree under "## Inside @roost/core" names, relative to
 * packages/core/src: a name ending in `/` opens a directory for the lines
 * indented below it; a line may name several files (`a.ts b.ts`), and a
 * name may have a directory in it (`agent/connection.ts`).
 */
function coreMapPaths(markdown: string): Set<string> {
  const section = /^## Inside @roost\/core\n[\s\S]*?```\n([\s\S]*?)```/m.exec(markdown);
  if (!section?.[1]) throw new Error('docs/ARCHITECTURE.md has no "## Inside @roost/core" section with a code block');
  const lines = section[1].split('\n');
  if (lines[0]?.trim() !== 'packages/core/src') throw new Error('the core map must start with the line "packages/core/src"');
  const paths = new Set<string>();
  // Open directories, by the indentation of their line.
  const open: { indent: number; path: string }[] = [];
  for (const line of lines.slice(1)) {
    const indent = line.length - line.trimStart().length;
    while (open.length > 0 && open[open.length - 1]!.indent >= indent) open.pop();
    const parent = open[open.length - 1]?.path ?? '';
    // Names come first on a line and end at the description.
    for (const word of line.trim().split(/\s+/)) {
      if (!/^[\w.-]+(\/[\w.-]+)*(\/|\.ts)$/.test(word)) break;
      const path = parent + word;
      // `agent/connection.ts` names the directory `agent/` too.
      const parts = path.split('/');
      for (let i = 1; i < parts.length; i++) paths.add(parts.slice(0, i).join('/') + '/');
      paths.add(path);
      if (word.endsWith('/')) open.push({ indent, path });
    }
  }
  return paths;
}

/** Directories below `dir`, relative to it, each ending in `/`. */
function directories(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .flatMap((e) => [`${prefix}${e.name}/`, ...directories(join(dir, e.name), `${prefix}${e.name}/`)]);
}

describe('docs/ARCHITECTURE.md', () => {
  it('names every workspace package', () => {
    const packages = readdirSync(join(root, 'packages'), { withFileTypes: true }).filter((e) => e.isDirectory());
    const missing = packages.map((e) => `packages/${e.name}`).filter((p) => !architecture.includes(`\`${p}\``));
    expect(missing).toEqual([]);
  });

  it('says what each package imports of the others, as its package.json does', () => {
    const table = /^## Packages\n[\s\S]*?```\n([\s\S]*?)```/m.exec(architecture)?.[1] ?? '';
    const said = new Map<string, string[]>();
    for (const line of table.split('\n').slice(1)) {
      // Columns are two or more spaces apart: package, imports, what.
      const [name, imports] = line.trim().split(/\s{2,}/);
      if (!name?.startsWith('packages/') || imports === undefined) continue;
      said.set(name.slice('packages/'.length), imports === 'nothing' ? [] : (imports.replace(/\(.*?\)/g, '').match(/[a-z][a-z0-9]*/g) ?? []).sort());
    }
    const actual = new Map<string, string[]>();
    for (const e of readdirSync(join(root, 'packages'), { withFileTypes: true }).filter((d) => d.isDirectory())) {
      const pkg = JSON.parse(readFileSync(join(root, 'packages', e.name, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
      const roost = Object.keys(pkg.dependencies ?? {}).filter((d) => d.startsWith('@roost/'));
      actual.set(e.name, roost.map((d) => d.slice('@roost/'.length)).sort());
    }
    expect(Object.fromEntries(said)).toEqual(Object.fromEntries(actual));
  });

  it("maps every directory and top-level module of @roost/core's src", () => {
    const src = join(root, 'packages', 'core', 'src');
    const named = coreMapPaths(architecture);
    const modules = readdirSync(src).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'));
    const missing = [...directories(src), ...modules].filter((p) => !named.has(p));
    expect(missing).toEqual([]);
  });

  it('reads nested directories and several names on a line', () => {
    const map = [
      '## Inside @roost/core',
      '',
      '```',
      'packages/core/src',
      '  index.ts   exports',
      '  vmm/       the seam',
      '    qemu/    backend',
      '      args.ts qmp.ts   files',
      '  agent/connection.ts  host end',
      '```',
    ].join('\n');
    expect([...coreMapPaths(map)].sort()).toEqual(['agent/', 'agent/connection.ts', 'index.ts', 'vmm/', 'vmm/qemu/', 'vmm/qemu/args.ts', 'vmm/qemu/qmp.ts']);
  });
});
