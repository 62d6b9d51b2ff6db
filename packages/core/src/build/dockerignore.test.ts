import { describe, expect, it } from 'vitest';
import { IgnoreMatcher, parseIgnoreFile } from './dockerignore.js';
import { containsWildcards, filepathMatch, splitWildcards } from './glob.js';

type Pass = 'fail' | 'exact' | 'inexact';

// moby/patternmatcher TestMatches (Unix cases): pattern, path, and whether it matches
// exactly (the path itself), inexactly (through a parent directory) or not at all.
const MATCH_CASES: [string, string, Pass][] = [
  ['**', 'file', 'exact'],
  ['**', 'file/', 'exact'],
  ['**/', 'file', 'exact'],
  ['**/', 'file/', 'exact'],
  ['**', '/', 'exact'],
  ['**/', '/', 'exact'],
  ['**', 'dir/file', 'exact'],
  ['**/', 'dir/file', 'exact'],
  ['**', 'dir/file/', 'exact'],
  ['**/', 'dir/file/', 'exact'],
  ['**/**', 'dir/file', 'exact'],
  ['**/**', 'dir/file/', 'exact'],
  ['dir/**', 'dir/file', 'exact'],
  ['dir/**', 'dir/file/', 'exact'],
  ['dir/**', 'dir/dir2/file', 'exact'],
  ['dir/**', 'dir/dir2/file/', 'exact'],
  ['**/dir', 'dir', 'exact'],
  ['**/dir', 'dir/file', 'inexact'],
  ['**/dir2/*', 'dir/dir2/file', 'exact'],
  ['**/dir2/*', 'dir/dir2/file/', 'inexact'],
  ['**/dir2/**', 'dir/dir2/dir3/file', 'exact'],
  ['**/dir2/**', 'dir/dir2/dir3/file/', 'exact'],
  ['**file', 'file', 'exact'],
  ['**file', 'dir/file', 'exact'],
  ['**/file', 'dir/file', 'exact'],
  ['**file', 'dir/dir/file', 'exact'],
  ['**/file', 'dir/dir/file', 'exact'],
  ['**/file*', 'dir/dir/file', 'exact'],
  ['**/file*', 'dir/dir/file.txt', 'exact'],
  ['**/file*txt', 'dir/dir/file.txt', 'exact'],
  ['**/file*.txt', 'dir/dir/file.txt', 'exact'],
  ['**/file*.txt*', 'dir/dir/file.txt', 'exact'],
  ['**/**/*.txt', 'dir/dir/file.txt', 'exact'],
  ['**/**/*.txt2', 'dir/dir/file.txt', 'fail'],
  ['**/*.txt', 'file.txt', 'exact'],
  ['**/**/*.txt', 'file.txt', 'exact'],
  ['a**/*.txt', 'a/file.txt', 'exact'],
  ['a**/*.txt', 'a/dir/file.txt', 'exact'],
  ['a**/*.txt', 'a/dir/dir/file.txt', 'exact'],
  ['a/*.txt', 'a/dir/file.txt', 'fail'],
  ['a/*.txt', 'a/file.txt', 'exact'],
  ['a/*.txt**', 'a/file.txt', 'exact'],
  ['a[b-d]e', 'ae', 'fail'],
  ['a[b-d]e', 'ace', 'exact'],
  ['a[b-d]e', 'aae', 'fail'],
  ['a[^b-d]e', 'aze', 'exact'],
  ['.*', '.foo', 'exact'],
  ['.*', 'foo', 'fail'],
  ['abc.def', 'abcdef', 'fail'],
  ['abc.def', 'abc.def', 'exact'],
  ['abc.def', 'abcZdef', 'fail'],
  ['abc?def', 'abcZdef', 'exact'],
  ['abc?def', 'abcdef', 'fail'],
  ['**/foo/bar', 'foo/bar', 'exact'],
  ['**/foo/bar', 'dir/foo/bar', 'exact'],
  ['**/foo/bar', 'dir/dir2/foo/bar', 'exact'],
  ['abc/**', 'abc', 'fail'],
  ['abc/**', 'abc/def', 'exact'],
  ['abc/**', 'abc/def/ghi', 'exact'],
  ['**/.foo', '.foo', 'exact'],
  ['**/.foo', 'bar.foo', 'fail'],
  ['a(b)c/def', 'a(b)c/def', 'exact'],
  ['a(b)c/def', 'a(b)c/xyz', 'fail'],
  ['a.|)$(}+{bc', 'a.|)$(}+{bc', 'exact'],
  ['dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'exact'],
  ['dist/*.whl', 'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'exact'],
  ['a\\\\', 'a\\', 'exact'],
  ['a\\*b', 'a*b', 'exact'],
];

const MULTI_CASES: [string[], string, Pass][] = [
  [['**', '!util/docker/web'], 'util/docker/web/foo', 'fail'],
  [['**', '!util/docker/web', 'util/docker/web/foo'], 'util/docker/web/foo', 'exact'],
  [['**', '!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl'], 'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'fail'],
  [['**', '!dist/*.whl'], 'dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl', 'fail'],
];

/** Go's filepath.Dir parents of a path ("dir/file/" has parents dir, dir/file). */
function parents(path: string): string[] {
  const cut = path.lastIndexOf('/');
  const dir = cut === -1 ? '.' : path.slice(0, cut).replace(/\/+$/, '') || '/';
  if (dir === '.' || dir === '/') return [];
  const parts = dir.split('/');
  return parts.map((_, i) => parts.slice(0, i + 1).join('/'));
}

describe('IgnoreMatcher follows moby/patternmatcher TestMatches', () => {
  for (const [pattern, path, pass] of MATCH_CASES) {
    it(`${pattern} ~ ${path}: ${pass}`, () => {
      const m = IgnoreMatcher.fromStrings([pattern]);
      // MatchesExact: no parent results, no parent checks.
      expect(m.match(path, [false]).ignored).toBe(pass === 'exact');
      // MatchesOrParentMatches: the parents checked here.
      expect(m.match(path).ignored).toBe(pass !== 'fail');
      // MatchesUsingParentResults: the parents' results passed down, as a walk does.
      let info: readonly boolean[] | undefined;
      for (const parent of parents(path)) info = m.match(parent, info).info;
      expect(m.match(path, info).ignored).toBe(pass !== 'fail');
    });
  }
  for (const [patterns, path, pass] of MULTI_CASES) {
    it(`${patterns.join(' ')} ~ ${path}: ${pass}`, () => {
      const m = IgnoreMatcher.fromStrings(patterns);
      expect(m.match(path).ignored).toBe(pass !== 'fail');
      let info: readonly boolean[] | undefined;
      for (const parent of parents(path)) info = m.match(parent, info).info;
      expect(m.match(path, info).ignored).toBe(pass !== 'fail');
    });
  }
});

describe('IgnoreMatcher: the small patternmatcher tests', () => {
  const ignores = (path: string, patterns: string[]) => IgnoreMatcher.fromStrings(patterns).ignores(path);
  it('matches wildcards, exceptions in order, folders and their exceptions', () => {
    expect(ignores('fileutils.go', ['*'])).toBe(true);
    expect(ignores('fileutils.go', ['*.go'])).toBe(true);
    expect(ignores('fileutils.go', ['!fileutils.go', '*.go'])).toBe(true);
    expect(ignores('fileutils.go', ['*.go', '!fileutils.go'])).toBe(false);
    expect(ignores('docs/README.md', ['docs', '!docs/README.md'])).toBe(false);
    expect(ignores('docs/README.md', ['docs/', '!docs/README.md'])).toBe(false);
    expect(ignores('docs/README.md', ['docs/*', '!docs/README.md'])).toBe(false);
    expect(ignores('docs/other.md', ['docs/*', '!docs/README.md'])).toBe(true);
    expect(ignores('.', ['*.go'])).toBe(false);
    expect(ignores('any/path/there', [])).toBe(false);
  });

  it('refuses a lone ! and malformed patterns', () => {
    expect(() => IgnoreMatcher.fromStrings(['!'])).toThrow('illegal exclusion pattern: "!"');
    expect(() => IgnoreMatcher.fromStrings(['['])).toThrow('syntax error in pattern');
  });

  it('is case-sensitive (Linux), unlike @balena/dockerignore', () => {
    expect(ignores('README.md', ['readme.md'])).toBe(false);
  });
});

// Go's filepath.Match tests, as patternmatcher runs them (TestMatch).
const GO_MATCH: [string, string, boolean | 'bad'][] = [
  ['abc', 'abc', true],
  ['*', 'abc', true],
  ['*c', 'abc', true],
  ['a*', 'a', true],
  ['a*', 'abc', true],
  ['a*', 'ab/c', true],
  ['a*/b', 'abc/b', true],
  ['a*/b', 'a/c/b', false],
  ['a*b*c*d*e*/f', 'axbxcxdxe/f', true],
  ['a*b*c*d*e*/f', 'axbxcxdxexxx/f', true],
  ['a*b*c*d*e*/f', 'axbxcxdxe/xxx/f', false],
  ['a*b*c*d*e*/f', 'axbxcxdxexxx/fff', false],
  ['a*b?c*x', 'abxbbxdbxebxczzx', true],
  ['a*b?c*x', 'abxbbxdbxebxczzy', false],
  ['ab[c]', 'abc', true],
  ['ab[b-d]', 'abc', true],
  ['ab[e-g]', 'abc', false],
  ['ab[^c]', 'abc', false],
  ['ab[^b-d]', 'abc', false],
  ['ab[^e-g]', 'abc', true],
  ['a\\*b', 'a*b', true],
  ['a\\*b', 'ab', false],
  ['a?b', 'a☺b', true],
  ['a[^a]b', 'a☺b', true],
  ['a???b', 'a☺b', false],
  ['a[^a][^a][^a]b', 'a☺b', false],
  ['[a-ζ]*', 'α', true],
  ['*[a-ζ]', 'A', false],
  ['a?b', 'a/b', false],
  ['a*b', 'a/b', false],
  ['[\\]a]', ']', true],
  ['[\\-]', '-', true],
  ['[x\\-]', 'x', true],
  ['[x\\-]', '-', true],
  ['[x\\-]', 'z', false],
  ['[\\-x]', 'x', true],
  ['[\\-x]', '-', true],
  ['[\\-x]', 'a', false],
  ['[]a]', ']', 'bad'],
  ['[-]', '-', 'bad'],
  ['[x-]', 'x', 'bad'],
  ['[-x]', 'x', 'bad'],
  ['\\', 'a', 'bad'],
  ['[a-b-c]', 'a', 'bad'],
  ['[', 'a', 'bad'],
  ['[^', 'a', 'bad'],
  ['[^bc', 'a', 'bad'],
  ['a[', 'a', 'bad'],
  ['a[', 'ab', 'bad'],
  ['*x', 'xxx', true],
];

describe('Go filepath.Match semantics (TestMatch)', () => {
  for (const [pattern, name, want] of GO_MATCH) {
    it(`${pattern} ~ ${name}: ${String(want)}`, () => {
      if (want === 'bad') {
        expect(() => IgnoreMatcher.fromStrings([pattern])).toThrow('syntax error in pattern');
        expect(() => filepathMatch(pattern, name)).toThrow('syntax error in pattern');
        return;
      }
      expect(IgnoreMatcher.fromStrings([pattern]).ignores(name)).toBe(want);
    });
  }

  it('filepathMatch is exact per component (what COPY globs use)', () => {
    expect(filepathMatch('*.txt', 'a.txt')).toBe(true);
    expect(filepathMatch('*.txt', 'd/a.txt')).toBe(false);
    expect(filepathMatch('*/*.txt', 'd/a.txt')).toBe(true);
    expect(filepathMatch('**/*.txt', 'd/a.txt')).toBe(true);
    expect(filepathMatch('**/*.txt', 'd/e/a.txt')).toBe(false);
    expect(filepathMatch('[z-a]', 'q')).toBe(false);
    expect(filepathMatch('a*', 'ab/c')).toBe(false);
  });

  it('finds and splits wildcards as BuildKit', () => {
    expect(containsWildcards('a\\*b')).toBe(false);
    expect(containsWildcards('a[b]')).toBe(true);
    expect(splitWildcards('src/app/*.js')).toEqual({ dir: 'src/app', pattern: '*.js' });
    expect(splitWildcards('src/*/lib/x?')).toEqual({ dir: 'src', pattern: '*/lib/x?' });
    expect(splitWildcards('plain/path')).toEqual({ dir: 'plain/path', pattern: '' });
  });
});

describe('parseIgnoreFile (ignorefile.ReadAll)', () => {
  it('reads comments, blanks, exceptions, leading / and ./, and cleans', () => {
    const text = '\uFEFFtest1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n ./x//y/ \n  # not a comment: leading space\r\n';
    expect(parseIgnoreFile(text).map((p) => [p.exclusion ? '!' + p.pattern : p.pattern, p.line])).toEqual([
      ['test1', 1],
      ['test2', 2],
      ['a/file/here', 3],
      ['lastfile', 5],
      ['!inverted/abs/path', 7],
      ['x/y', 8],
      ['# not a comment: leading space', 9],
    ]);
  });

  it('names the line of a bad pattern', () => {
    expect(() => parseIgnoreFile('ok\n!\n')).toThrow('line 2: illegal exclusion pattern: "!"');
    expect(() => parseIgnoreFile('ok\n\nsrc/[a\n')).toThrow('line 3: syntax error in pattern "src/[a"');
  });
});
