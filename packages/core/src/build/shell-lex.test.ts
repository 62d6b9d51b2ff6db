import { describe, expect, it } from 'vitest';
import { expandWord, expandWords, lexWord, shellPatternToRegExp } from './shell-lex.js';

const vars = (record: Record<string, string>) => new Map(Object.entries(record));

// BuildKit's envVarTest (frontend/dockerfile/shell), the Unix ("A" and "U") lines:
// env PWD=/home SHELL=bash KOREAN=한국어 NULL=; 'error' means the lexer must throw.
const ENV_VAR_CASES: [string, string][] = [
  ['hello', 'hello'],
  ["he'll'o", 'hello'],
  ["he'llo", 'error'],
  ["he\\'llo", "he'llo"],
  ["he\\\\'llo", 'error'],
  ['abc\\tdef', 'abctdef'],
  ['"abc\\tdef"', 'abc\\tdef'],
  ['"abc\\\\tdef"', 'abc\\tdef'],
  ["'abc\\tdef'", 'abc\\tdef'],
  ['hello\\', 'hello'],
  ['hello\\\\', 'hello\\'],
  ['"hello', 'error'],
  ['"hello\\"', 'error'],
  ['"hel\'lo"', "hel'lo"],
  ["'hello", 'error'],
  ["'hello\\'", 'hello\\'],
  ["'hello\\there'", 'hello\\there'],
  ["'hello\\\\there'", 'hello\\\\there'],
  ['"\'\'"', "''"],
  ['$.', '$.'],
  ['$1', ''],
  ['he$1x', 'hex'],
  ['he$.x', 'he$.x'],
  ['he$pwd.', 'he.'],
  ['he$PWD', 'he/home'],
  ['he\\$PWD', 'he$PWD'],
  ['he\\\\$PWD', 'he\\/home'],
  ['"he\\$PWD"', 'he$PWD'],
  ['"he\\\\$PWD"', 'he\\/home'],
  ['\\${}', '${}'],
  ['\\${}aaa', '${}aaa'],
  ['he\\${}', 'he${}'],
  ['he\\${}xx', 'he${}xx'],
  ['${}', 'error'],
  ['${}aaa', 'error'],
  ['he${}', 'error'],
  ['he${}xx', 'error'],
  ['he${hi}', 'he'],
  ['he${hi}xx', 'hexx'],
  ['he${PWD}', 'he/home'],
  ['he${.}', 'error'],
  ['he${XXX:-000}xx', 'he000xx'],
  ['he${PWD:-000}xx', 'he/homexx'],
  ['he${XXX:-$PWD}xx', 'he/homexx'],
  ['he${XXX:-${PWD:-yyy}}xx', 'he/homexx'],
  ['he${XXX:-${YYY:-yyy}}xx', 'heyyyxx'],
  ['he${XXX:YYY}', 'error'],
  ['he${XXX:+${PWD}}xx', 'hexx'],
  ['he${PWD:+${XXX}}xx', 'hexx'],
  ['he${PWD:+${SHELL}}xx', 'hebashxx'],
  ['he${XXX:+000}xx', 'hexx'],
  ['he${PWD:+000}xx', 'he000xx'],
  ["'he${XX}'", 'he${XX}'],
  ['"he${PWD}"', 'he/home'],
  ['"he\'$PWD\'"', "he'/home'"],
  ['"$PWD"', '/home'],
  ["'$PWD'", '$PWD'],
  ["'\\$PWD'", '\\$PWD'],
  ['\'"hello"\'', '"hello"'],
  ["'he\\$PWD'", 'he\\$PWD'],
  ['he${PWD', 'error'],
  ['he${PWD:=000}xx', 'error'],
  ['he${PWD:+${PWD}:}xx', 'he/home:xx'],
  ['he${XXX:-\\$PWD:}xx', 'he$PWD:xx'],
  ['he${XXX:-\\${PWD}z}xx', 'he${PWDz}xx'],
  ['안녕하세요', '안녕하세요'],
  ["안'녕'하세요", '안녕하세요'],
  ["안'녕하세요", 'error'],
  ["안녕\\'하세요", "안녕'하세요"],
  ['안녕\\t하세요', '안녕t하세요'],
  ['"안녕\\t하세요"', '안녕\\t하세요'],
  ['안녕$1x', '안녕x'],
  ['안녕$PWD', '안녕/home'],
  ['$KOREAN', '한국어'],
  ['안녕$KOREAN', '안녕한국어'],
  ['${{aaa}', 'error'],
  ['${aaa}}', '}'],
  ['${aaa', 'error'],
  ['${{aaa:-bbb}', 'error'],
  ['${aaa:-bbb}}', 'bbb}'],
  ['${aaa:-bbb', 'error'],
  ['${aaa:-bbb}', 'bbb'],
  ['${aaa:-${bbb:-ccc}}', 'ccc'],
  ['${aaa:-bbb ${foo}', 'error'],
  ['${aaa:-bbb {foo}', 'bbb {foo'],
  ['${:}', 'error'],
  ['${:-bbb}', 'error'],
  ['${:+bbb}', 'error'],
];

describe('expandWord follows BuildKit envVarTest', () => {
  const env = vars({ PWD: '/home', SHELL: 'bash', KOREAN: '한국어', NULL: '' });
  for (const [input, expected] of ENV_VAR_CASES) {
    it(`${input} -> ${expected}`, () => {
      if (expected === 'error') expect(() => expandWord(input, env)).toThrow();
      else expect(expandWord(input, env)).toBe(expected);
    });
  }
});

// BuildKit's TestProcessWithMatches: [input, env, expected ('error' to throw), matched, unmatched].
const MATCH_CASES: [string, Record<string, string>, string, string[], string[]][] = [
  ['x', { DUMMY: 'dummy' }, 'x', [], []],
  ['x ${UNUSED}', { DUMMY: 'dummy' }, 'x ', [], ['UNUSED']],
  ['x ${FOO}', { FOO: 'y' }, 'x y', ['FOO'], []],
  ['${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}', { FOO: 'xxx', BAR: '' }, 'xxx  ccc', ['FOO', 'BAR'], ['BAZ']],
  ['${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}', { FOO: 'xxx', BAR: '' }, 'xxx bbb ccc', ['FOO', 'BAR'], ['BAZ']],
  ['${FOO:-}', { FOO: 'xxx', BAR: '' }, 'xxx', ['FOO'], []],
  ['${FOO:-}', {}, '', [], ['FOO']],
  ['${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}', { FOO: 'xxx', BAR: '' }, 'aaa bbb ', ['FOO', 'BAR'], ['BAZ']],
  ['${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}', { FOO: 'xxx', BAR: '' }, 'aaa  ', ['FOO', 'BAR'], ['BAZ']],
  ['${FOO?aaa}', { FOO: 'xxx', BAR: '' }, 'xxx', ['FOO'], []],
  ['${BAR?bbb}', { FOO: 'xxx', BAR: '' }, '', ['BAR'], []],
  ['${BAZ?ccc}', { FOO: 'xxx', BAR: '' }, 'error', [], []],
  ['${FOO:?aaa}', { FOO: 'xxx', BAR: '' }, 'xxx', ['FOO'], []],
  ['${BAR:?bbb}', { FOO: 'xxx', BAR: '' }, 'error', [], []],
  ['${BAZ:?ccc}', { FOO: 'xxx', BAR: '' }, 'error', [], []],
  ['${BAZ:?}', { FOO: 'xxx', BAR: '' }, 'error', [], []],
  ['${FOO=aaa}', { FOO: 'xxx', BAR: '' }, 'error', [], []],
  ['${FOO=:aaa}', { FOO: 'xxx', BAR: '' }, 'error', [], []],
  ['${FOO=}', {}, 'error', [], []],
  ['${FOO#()[]{\\}^$.\\*\\?|\\\\}', { FOO: '()[]{}^$.*?|\\x' }, 'x', ['FOO'], []],
  ['${FOO%%\\**}', { FOO: 'xx**' }, 'xx', ['FOO'], []],
  ['${FOO#*x*y}', { FOO: 'xxyy' }, 'y', ['FOO'], []],
  ['${FOO#*}', { FOO: 'xxyy' }, 'xxyy', ['FOO'], []],
  ['${FOO#$BAR}', { FOO: 'xxyy', BAR: 'x' }, 'xyy', ['FOO', 'BAR'], []],
  ['${FOO#$BAR}', { FOO: 'xxyy', BAR: '' }, 'xxyy', ['FOO', 'BAR'], []],
  ['${FOO#}', { FOO: 'xxyy' }, 'xxyy', ['FOO'], []],
  ['${FOO##*x}', { FOO: 'xxyy' }, 'yy', ['FOO'], []],
  ['${FOO##}', { FOO: 'xxyy' }, 'xxyy', ['FOO'], []],
  ['${FOO#?\\?}', { FOO: '???y' }, '?y', ['FOO'], []],
  ['${ABC:-.}${FOO%x}${ABC:-.}', { FOO: 'xxyy' }, '.xxyy.', ['FOO'], ['ABC']],
  ['${FOO%%\\**\\*}', { FOO: 'a***yy*' }, 'a', ['FOO'], []],
  ['${FOO%}', { FOO: 'xxyy' }, 'xxyy', ['FOO'], []],
  ['${FOO%%$BAR}', { FOO: 'xxyy', BAR: '' }, 'xxyy', ['FOO', 'BAR'], []],
  ['${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}', { FOO: '/foo*/*/*.txt', NEEDLE: '\\*/' }, '/foo.*/*.txt - /foo..*.txt', ['FOO', 'NEEDLE'], []],
  ['${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}', { FOO: '/tmp/tmp/bar.txt', NEEDLE: '/tmp' }, '/tmp/bar.txt - /bar.txt', ['FOO', 'NEEDLE'], []],
  [
    '${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}',
    { FOO: '/a/foo/b/c.txt', NEEDLE: '/?/', REPLACEMENT: '/' },
    '/foo/b/c.txt - /foo/c.txt',
    ['FOO', 'NEEDLE', 'REPLACEMENT'],
    [],
  ],
  [
    '${FOO/$NEEDLE/$REPLACEMENT}',
    { FOO: 'http://google.de', NEEDLE: 'http://', REPLACEMENT: 'https://' },
    'https://google.de',
    ['FOO', 'NEEDLE', 'REPLACEMENT'],
    [],
  ],
  ['${FOO//\\//\\/}', { FOO: '/tmp/foo.txt' }, '\\/tmp\\/foo.txt', ['FOO'], []],
  ['${FOO/$BAR/ww}', { FOO: 'xxyy', BAR: '' }, 'wwxxyy', ['FOO', 'BAR'], []],
  ['${FOO//ww}', { FOO: 'xxyy' }, 'error', [], []],
  ['${FOO//}', { FOO: 'xxyy' }, 'error', [], []],
  ['${FOO///}', { FOO: 'xxyy' }, 'xxyy', ['FOO'], []],
  ['${FOO///}', {}, '', [], ['FOO']],
];

describe('lexWord follows BuildKit TestProcessWithMatches', () => {
  for (const [input, env, expected, matched, unmatched] of MATCH_CASES) {
    it(`${input} with ${JSON.stringify(env)}`, () => {
      if (expected === 'error') {
        expect(() => lexWord(input, vars(env))).toThrow();
        return;
      }
      const result = lexWord(input, vars(env));
      expect(result.result).toBe(expected);
      expect([...result.matched].sort()).toEqual([...matched].sort());
      expect([...result.unmatched].sort()).toEqual([...unmatched].sort());
    });
  }

  it('builds release file names with nested :+ (TestProcessWithMatchesPlatform)', () => {
    const word = 'something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz';
    const base = { VERSION: 'v1.2.3', TARGETOS: 'linux', TARGETARCH: 'arm' };
    expect(expandWord(word, vars({ ...base, TARGETVARIANT: 'v7' }))).toBe('something-v1.2.3.linux-arm-v7.tar.gz');
    expect(expandWord(word, vars({ ...base, TARGETVARIANT: '' }))).toBe('something-v1.2.3.linux-arm.tar.gz');
  });
});

describe('the ? modifier (TestShellParserMandatoryEnvVars)', () => {
  it('says the message, itself expanded', () => {
    expect(expandWord('${VAR:?message here$ARG}', vars({ VAR: 'plain', ARG: 'x' }))).toBe('plain');
    expect(() => expandWord('${VAR:?message here$ARG}', vars({ VAR: '', ARG: 'x' }))).toThrow('message herex');
    expect(() => expandWord('${VAR:?message here$ARG}', vars({ ARG: 'x' }))).toThrow('message herex');
    expect(expandWord('${VAR?message here$ARG}', vars({ VAR: '', ARG: 'x' }))).toBe('');
    expect(() => expandWord('${VAR?message here$ARG}', vars({ ARG: 'x' }))).toThrow('VAR: message herex');
    expect(() => expandWord('${VAR?}', vars({}))).toThrow('VAR: is not allowed to be unset');
    expect(() => expandWord('${VAR:?}', vars({ VAR: '' }))).toThrow('VAR: is not allowed to be empty');
  });
});

describe('shell patterns (TestConvertShellPatternToRegex)', () => {
  it('converts wildcards and escapes regex characters', () => {
    expect(shellPatternToRegExp('*', true, true).source).toBe('^.*');
    expect(shellPatternToRegExp('?', true, true).source).toBe('^.');
    expect(shellPatternToRegExp('\\*', true, true).source).toBe('^\\*');
    expect(shellPatternToRegExp('(()[]{\\}^$.\\*\\?|\\\\', true, true).test('(()[]{}^$.*?|\\')).toBe(true);
    for (const bad of ['\\', '\\x', '\\\\\\']) expect(() => shellPatternToRegExp(bad, true, true)).toThrow();
  });
});

describe('word splitting (ProcessWords)', () => {
  const env = vars({ TWO: 'a b', EMPTY: '' });
  it('splits on blanks, keeps quoted blanks, splits variable values', () => {
    expect(expandWords('a b  c', env)).toEqual(['a', 'b', 'c']);
    expect(expandWords('"a b" c', env)).toEqual(['a b', 'c']);
    expect(expandWords("'a  b'c d", env)).toEqual(['a  bc', 'd']);
    expect(expandWords('$TWO c', env)).toEqual(['a', 'b', 'c']);
    expect(expandWords('"$TWO" c', env)).toEqual(['a b', 'c']);
    expect(expandWords('a\\ b', env)).toEqual(['a b']);
    expect(expandWords('$EMPTY x ""', env)).toEqual(['x']);
  });

  it('keeps white space between words in the single-word result', () => {
    expect(expandWord('a  b', env)).toBe('a  b');
    expect(expandWord('$TWO', env)).toBe('a b');
  });
});

describe('the backtick escape', () => {
  it('escapes with ` and leaves \\ alone', () => {
    const env = vars({ X: '1' });
    expect(expandWord('c:\\dir\\$X', env, '`')).toBe('c:\\dir\\1');
    expect(expandWord('`$X', env, '`')).toBe('$X');
    expect(expandWord('"a`"b"', env, '`')).toBe('a"b');
  });
});

describe('raw lexing (used to find heredocs)', () => {
  it('keeps quotes, escapes and unset variables', () => {
    const result = lexWord(`cat <<"EOF" \\$x $UNSET \${U:-d}`, new Map(), { rawQuotes: true, rawEscapes: true, skipUnset: true });
    expect(result.words).toEqual(['cat', '<<"EOF"', '\\$x', '$UNSET', '${U:-d}']);
  });
});
