import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { text } from 'node:stream/consumers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { openContext, type BuildContext, type CopyEntry } from './context.js';

let dir: string;
let outside: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'roost-ctx-'));
  outside = mkdtempSync(join(tmpdir(), 'roost-outside-'));
  writeFileSync(join(outside, 'secret'), 'not yours');
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
});

/** Writes files (a string is contents; null makes a directory). */
function tree(files: Record<string, string | null>): void {
  for (const [path, contents] of Object.entries(files)) {
    const full = join(dir, path);
    if (contents === null) mkdirSync(full, { recursive: true });
    else {
      mkdirSync(dirname(full), { recursive: true });
      writeFileSync(full, contents);
    }
  }
}

function link(path: string, target: string): void {
  mkdirSync(dirname(join(dir, path)), { recursive: true });
  symlinkSync(target, join(dir, path));
}

const paths = (ctx: BuildContext) => ctx.entries.map((e) => e.path);
const picked = (entries: CopyEntry[]) => entries.map((e) => `${e.path} -> ${e.target}`);

function resolveError(ctx: BuildContext, sources: string[], line = 7): { message: string; details: Record<string, unknown> } {
  try {
    ctx.resolveSources(sources, { line });
  } catch (err) {
    expect(isRoostError(err, 'INVALID_ARGUMENT')).toBe(true);
    return err as { message: string; details: Record<string, unknown> };
  }
  throw new Error(`expected ${sources.join(' ')} to fail`);
}

describe('listing a context', () => {
  it('lists files, directories and symlinks in sorted order, never following links', async () => {
    tree({ Dockerfile: 'FROM a', 'b/z.txt': 'z', 'b-c': 'x', 'a.txt': 'aa', 'empty/': null });
    link('b/link', '../a.txt');
    link('loop1', 'loop2');
    link('loop2', 'loop1');
    link('self', '.');
    chmodSync(join(dir, 'a.txt'), 0o4755);
    const ctx = await openContext(dir);
    expect(paths(ctx)).toEqual(['Dockerfile', 'a.txt', 'b', 'b/link', 'b/z.txt', 'b-c', 'empty', 'loop1', 'loop2', 'self']);
    const a = ctx.entry('a.txt');
    expect(a).toMatchObject({ type: 'file', mode: 0o4755, size: 2, linkTarget: null, hostPath: join(ctx.root, 'a.txt') });
    expect(a?.uid).toBe(process.getuid?.());
    expect(ctx.entry('b/link')).toMatchObject({ type: 'symlink', linkTarget: '../a.txt', size: 0 });
    expect(ctx.entry('self')).toMatchObject({ type: 'symlink', linkTarget: '.' });
    expect(ctx.rootEntry).toMatchObject({ path: '.', type: 'directory' });
    expect(ctx.entry('.')).toBe(ctx.rootEntry);
  });

  it('does not list FIFOs, and says so', async () => {
    tree({ Dockerfile: 'FROM a' });
    execFileSync('mkfifo', [join(dir, 'pipe')]);
    const ctx = await openContext(dir);
    expect(paths(ctx)).toEqual(['Dockerfile']);
    expect(ctx.skipped).toEqual(['pipe']);
  });

  it('refuses a context that is not a directory, and a missing Dockerfile', async () => {
    tree({ file: 'x' });
    await expect(openContext(join(dir, 'file'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(openContext(join(dir, 'nope'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(openContext(dir)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(openContext(dir, { dockerfile: 'x/Dockerfile' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('stops when aborted', async () => {
    tree({ Dockerfile: 'FROM a' });
    await expect(openContext(dir, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORTED' });
  });
});

describe('.dockerignore', () => {
  it('excludes what it names, with exceptions, keeping the parents of what an exception includes', async () => {
    tree({
      Dockerfile: 'FROM a',
      '.dockerignore': '# build output\nnode_modules\n**/*.log\n/dist/\n!dist/keep.js\n./tmp\ndocs/*\n!docs/README.md\n*.md\n!README.md\n',
      'node_modules/x/index.js': '',
      'src/app.js': '',
      'src/debug.log': '',
      'app.log': '',
      'dist/bundle.js': '',
      'dist/keep.js': '',
      'tmp/t': '',
      'docs/README.md': '',
      'docs/guide.md': '',
      'README.md': '',
      'NOTES.md': '',
    });
    const ctx = await openContext(dir);
    // `*.md` matches at the root only (`*` never crosses `/`), so docs/README.md, re-included, stays.
    expect(paths(ctx)).toEqual(['.dockerignore', 'Dockerfile', 'README.md', 'dist', 'dist/keep.js', 'docs', 'docs/README.md', 'src', 'src/app.js']);
    expect(ctx.ignoreFile).toBe(join(ctx.root, '.dockerignore'));
    expect(ctx.ignorePatterns.map((p) => (p.exclusion ? '!' : '') + p.pattern)).toEqual([
      'node_modules',
      '**/*.log',
      'dist',
      '!dist/keep.js',
      'tmp',
      'docs/*',
      '!docs/README.md',
      '*.md',
      '!README.md',
    ]);
  });

  it('can exclude the Dockerfile and itself: the builder still reads the Dockerfile, COPY cannot', async () => {
    tree({ Dockerfile: 'FROM a\n', '.dockerignore': 'Dockerfile\n.dockerignore\n', 'app.txt': 'x' });
    const ctx = await openContext(dir);
    expect(paths(ctx)).toEqual(['app.txt']);
    expect(await ctx.readDockerfile()).toBe('FROM a\n');
    expect(resolveError(ctx, ['Dockerfile']).message).toContain('file not found in build context or excluded by .dockerignore');
  });

  it('prefers <Dockerfile>.dockerignore beside the Dockerfile', async () => {
    tree({
      'docker/app.Dockerfile': 'FROM a',
      'docker/app.Dockerfile.dockerignore': 'b.txt',
      '.dockerignore': 'a.txt',
      'a.txt': '',
      'b.txt': '',
    });
    const ctx = await openContext(dir, { dockerfile: 'docker/app.Dockerfile' });
    expect(ctx.ignoreFile).toBe(join(ctx.root, 'docker/app.Dockerfile.dockerignore'));
    expect(paths(ctx)).toEqual(['.dockerignore', 'a.txt', 'docker', 'docker/app.Dockerfile', 'docker/app.Dockerfile.dockerignore']);
    expect(ctx.dockerfilePath).toBe(join(ctx.root, 'docker/app.Dockerfile'));
  });

  it('names the line of a bad pattern', async () => {
    tree({ Dockerfile: 'FROM a', '.dockerignore': 'ok\n\n[oops\n' });
    await expect(openContext(dir)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: '.dockerignore:3: syntax error in pattern "[oops"',
      details: { file: '.dockerignore', line: 3 },
    });
  });

  it('does not enter an excluded directory no exception reaches (so unreadable ones do not matter)', async () => {
    tree({ Dockerfile: 'FROM a', '.dockerignore': 'private\n', 'private/x': '', 'pub/y': '' });
    const ctx = await openContext(dir);
    expect(paths(ctx)).toEqual(['.dockerignore', 'Dockerfile', 'pub', 'pub/y']);
  });
});

describe('resolving COPY sources', () => {
  beforeEach(() => {
    tree({
      Dockerfile: 'FROM a',
      'a.txt': 'A',
      'b.txt': 'B',
      'c.md': 'C',
      'src/main.c': 'int main;',
      'src/lib/util.c': 'u',
      'src/lib/util.h': 'h',
      'src/inc/x.h': 'x',
      'deep/one/two/three.txt': '3',
    });
    link('src/lib/alias.c', 'util.c');
    link('to-src', 'src');
    link('to-a', 'a.txt');
  });

  it('copies a file by its base name, and a directory by its contents (the directory itself as target "")', async () => {
    const ctx = await openContext(dir);
    expect(picked(ctx.resolveSources(['a.txt']))).toEqual(['a.txt -> a.txt']);
    expect(picked(ctx.resolveSources(['src/lib']))).toEqual([
      'src/lib -> ',
      'src/lib/alias.c -> alias.c',
      'src/lib/util.c -> util.c',
      'src/lib/util.h -> util.h',
    ]);
    expect(ctx.resolveSources(['src/lib'])[1]).toMatchObject({ type: 'symlink', linkTarget: 'util.c' });
  });

  it('copies the whole context for . (also written ./ or /)', async () => {
    const ctx = await openContext(dir);
    const all = ctx.resolveSources(['.']);
    expect(all[0]).toMatchObject({ path: '.', target: '' });
    expect(all.slice(1).map((e) => e.target)).toEqual(paths(ctx));
    expect(picked(ctx.resolveSources(['./']))).toEqual(picked(all));
    expect(picked(ctx.resolveSources(['/']))).toEqual(picked(all));
  });

  it('treats an absolute source as relative to the context root, as Docker', async () => {
    const ctx = await openContext(dir);
    expect(picked(ctx.resolveSources(['/a.txt', '/src/../b.txt']))).toEqual(['a.txt -> a.txt', 'b.txt -> b.txt']);
  });

  it('expands globs per path component, ** being just *, a matched directory copied by its contents', async () => {
    const ctx = await openContext(dir);
    expect(picked(ctx.resolveSources(['*.txt']))).toEqual(['a.txt -> a.txt', 'b.txt -> b.txt']);
    expect(picked(ctx.resolveSources(['src/*/*.h']))).toEqual(['src/inc/x.h -> x.h', 'src/lib/util.h -> util.h']);
    expect(resolveError(ctx, ['**/*.h']).message).toContain('nothing in the build context matches "**/*.h"');
    expect(picked(ctx.resolveSources(['src/**/*.h']))).toEqual(['src/inc/x.h -> x.h', 'src/lib/util.h -> util.h']);
    expect(picked(ctx.resolveSources(['src/[il]*']))).toEqual([
      'src/inc -> ',
      'src/inc/x.h -> x.h',
      'src/lib -> ',
      'src/lib/alias.c -> alias.c',
      'src/lib/util.c -> util.c',
      'src/lib/util.h -> util.h',
    ]);
    expect(picked(ctx.resolveSources(['?.md', 'a.txt', 'a.txt']))).toEqual(['c.md -> c.md', 'a.txt -> a.txt']);
  });

  it('follows a symlink named as a source (or matched by a glob), inside the context', async () => {
    const ctx = await openContext(dir);
    expect(picked(ctx.resolveSources(['to-a']))).toEqual(['a.txt -> to-a']);
    expect(picked(ctx.resolveSources(['to-src/lib/util.h', 'to-src/inc']))).toEqual(['src/lib/util.h -> util.h', 'src/inc -> ', 'src/inc/x.h -> x.h']);
    expect(picked(ctx.resolveSources(['src/lib/alias*']))).toEqual(['src/lib/util.c -> alias.c']);
    expect(picked(ctx.resolveSources(['to-src/*.c']))).toEqual(['src/main.c -> main.c']);
  });

  it('accepts an absolute symlink that points inside the context by its host path', async () => {
    link('abs-in', join(dir, 'b.txt'));
    const ctx = await openContext(dir);
    expect(picked(ctx.resolveSources(['abs-in']))).toEqual(['b.txt -> abs-in']);
  });

  it('refuses .. that leaves the context, naming the line', async () => {
    const ctx = await openContext(dir);
    for (const source of ['../secret', 'src/../../x', '/../etc/passwd']) {
      const err = resolveError(ctx, [source]);
      expect(err.message).toMatch(/^Dockerfile:7: COPY failed: ".*" is outside the build context/);
      expect(err.details).toMatchObject({ line: 7, file: 'Dockerfile', source });
    }
  });

  it('refuses a symlink that leads out of the context, as the source or on its way', async () => {
    link('out-rel', `../${outside.split('/').pop()}/secret`);
    link('out-abs', join(outside, 'secret'));
    link('out-dir', outside);
    link('src/up', '../..');
    link('etc', '/etc');
    const ctx = await openContext(dir);
    for (const source of ['out-rel', 'out-abs', 'out-dir/secret', 'src/up/x', 'etc/passwd', 'out-*']) {
      const err = resolveError(ctx, [source]);
      expect(err.message, source).toContain('leads outside the build context (through the symlink');
    }
    // Kept as symlinks inside a copied directory: never followed there.
    expect(picked(ctx.resolveSources(['src'])).filter((p) => p.startsWith('src/up'))).toEqual(['src/up -> up']);
  });

  it('stops at a symlink loop instead of hanging', async () => {
    link('loop1', 'loop2');
    link('loop2', 'loop1');
    link('dirloop/self', '../dirloop/self');
    const ctx = await openContext(dir);
    expect(resolveError(ctx, ['loop1']).message).toContain('too many levels of symbolic links');
    expect(resolveError(ctx, ['dirloop/self/x']).message).toContain('too many levels of symbolic links');
    expect(picked(ctx.resolveSources(['dirloop']))).toEqual(['dirloop -> ', 'dirloop/self -> self']);
  });

  it('says what matched nothing, naming the line', async () => {
    tree({ '.dockerignore': 'c.md' });
    const ctx = await openContext(dir);
    expect(resolveError(ctx, ['nope.txt']).message).toBe('Dockerfile:7: COPY failed: file not found in build context or excluded by .dockerignore: "nope.txt"');
    expect(resolveError(ctx, ['c.md']).message).toContain('excluded by .dockerignore');
    expect(resolveError(ctx, ['*.nothing']).message).toBe(
      'Dockerfile:7: COPY failed: no source files were specified: nothing in the build context matches "*.nothing"',
    );
    expect(resolveError(ctx, ['a.txt/x']).message).toContain('file not found');
    expect(resolveError(ctx, []).message).toBe('Dockerfile:7: COPY failed: no source files were specified');
    expect(() => ctx.resolveSources(['x'], { line: 3, file: 'Other', instruction: 'ADD' })).toThrow('Other:3: ADD failed: file not found');
  });
});

describe('reading entries', () => {
  it('streams a file, and refuses one replaced since listing', async () => {
    tree({ Dockerfile: 'FROM a', 'f.txt': 'hello', 'g.txt': 'world' });
    const ctx = await openContext(dir);
    const f = ctx.entry('f.txt');
    if (!f) throw new Error('no f.txt');
    expect(await text(ctx.open(f))).toBe('hello');
    unlinkSync(join(dir, 'f.txt'));
    symlinkSync('g.txt', join(dir, 'f.txt'));
    await expect(text(ctx.open(f))).rejects.toMatchObject({ code: 'INVALID_STATE', message: expect.stringContaining('f.txt: it is now a symlink') });
    const g = ctx.entry('g.txt');
    if (!g) throw new Error('no g.txt');
    writeFileSync(join(dir, 'g.txt'), 'world, longer');
    await expect(text(ctx.open(g))).rejects.toMatchObject({ code: 'INVALID_STATE' });
    expect(() => ctx.open(ctx.rootEntry)).toThrow('not a file');
  });
});
