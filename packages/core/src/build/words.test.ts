import { describe, expect, it } from 'vitest';
import { parseGoDuration, parseJsonArray, parseWords, splitBlanks, splitInstruction } from './words.js';

describe('parseGoDuration (time.ParseDuration)', () => {
  it('reads Go durations into nanoseconds', () => {
    expect(parseGoDuration('0')).toBe(0);
    expect(parseGoDuration('30s')).toBe(30e9);
    expect(parseGoDuration('1h2m3.5s')).toBe(3723.5e9);
    expect(parseGoDuration('.5s')).toBe(0.5e9);
    expect(parseGoDuration('1.s')).toBe(1e9);
    expect(parseGoDuration('300ms')).toBe(300e6);
    expect(parseGoDuration('10us')).toBe(10e3);
    expect(parseGoDuration('10µs')).toBe(10e3);
    expect(parseGoDuration('7ns')).toBe(7);
    expect(parseGoDuration('-1m')).toBe(-60e9);
    expect(parseGoDuration('+2h')).toBe(7200e9);
  });

  it('refuses what Go refuses', () => {
    for (const bad of ['', '1', '10', 's', '.s', '1x', '1s2', '--1s', '1 s'])
      expect(() => parseGoDuration(bad), bad).toThrow(/time: (invalid duration|unknown unit)/);
  });
});

describe('splitInstruction (BuildKit splitCommand and its flags)', () => {
  it('splits the name, leading --flags and the rest', () => {
    expect(splitInstruction('  COPY --from=build --chown="a b" src dest ')).toEqual({ name: 'copy', flags: ['from=build', 'chown=a b'], rest: 'src dest' });
    expect(splitInstruction("RUN --flag='x y' --bool -- --not-a-flag")).toEqual({ name: 'run', flags: ['flag=x y', 'bool'], rest: '--not-a-flag' });
    expect(splitInstruction('RUN -single dash')).toEqual({ name: 'run', flags: [], rest: '-single dash' });
    expect(splitInstruction('ENV\tA=1')).toEqual({ name: 'env', flags: [], rest: 'A=1' });
    expect(splitInstruction('CMD')).toEqual({ name: 'cmd', flags: [], rest: '' });
    expect(splitInstruction('RUN --x=a\\ b c')).toEqual({ name: 'run', flags: ['x=a b'], rest: 'c' });
  });
});

describe('parseWords (quotes kept for expansion)', () => {
  it('splits on blanks outside quotes, keeping quotes and escapes', () => {
    expect(parseWords('a=1 b="x y" c=\'p q\' d=e\\ f', '\\')).toEqual(['a=1', 'b="x y"', "c='p q'", 'd=e\\ f']);
    expect(parseWords('k="with \\" quote" x', '\\')).toEqual(['k="with \\" quote"', 'x']);
    expect(parseWords("k='no \\' escape'", '\\')).toEqual(["k='no \\'", "escape'"]);
    expect(parseWords('a=`  b', '`')).toEqual(['a=` ', 'b']);
    expect(parseWords('  ', '\\')).toEqual([]);
    expect(parseWords('""', '\\')).toEqual(['""']);
  });

  it('splits whitespace-delimited arguments', () => {
    expect(splitBlanks('80  443/tcp\t53/udp')).toEqual(['80', '443/tcp', '53/udp']);
    expect(splitBlanks('')).toEqual([]);
  });
});

describe('parseJsonArray (the exec form)', () => {
  it('reads JSON arrays of strings, falls back for anything else, flags non-strings', () => {
    expect(parseJsonArray(' ["a", "b c"] ')).toEqual({ json: true, values: ['a', 'b c'] });
    expect(parseJsonArray('[]')).toEqual({ json: true, values: [] });
    expect(parseJsonArray('echo [a]')).toEqual({ json: false });
    expect(parseJsonArray("['a']")).toEqual({ json: false });
    expect(parseJsonArray('["a",]')).toEqual({ json: false });
    expect(parseJsonArray('["a", 1]')).toEqual({ json: 'not-strings' });
    expect(parseJsonArray('[null]')).toEqual({ json: 'not-strings' });
  });
});
