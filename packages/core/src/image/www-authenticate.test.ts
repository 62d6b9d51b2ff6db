import { describe, expect, it } from 'vitest';
import { parseWwwAuthenticate } from './www-authenticate.js';

describe('parseWwwAuthenticate', () => {
  it('parses a Bearer challenge with quoted parameters', () => {
    expect(parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' } },
    ]);
  });

  it('keeps commas and escaped quotes inside quoted strings, and is case-insensitive in names', () => {
    const [c] = parseWwwAuthenticate('BEARER Realm="a,b", Scope = "repository:x:pull,push" , error="say \\"hi\\"\\\\"');
    expect(c).toEqual({ scheme: 'bearer', params: { realm: 'a,b', scope: 'repository:x:pull,push', error: 'say "hi"\\' } });
  });

  it('splits several challenges, with token values and token68', () => {
    expect(parseWwwAuthenticate('Negotiate abc+/d==, Basic realm=fake, Bearer realm="r",service=s')).toEqual([
      { scheme: 'negotiate', params: {}, token68: 'abc+/d==' },
      { scheme: 'basic', params: { realm: 'fake' } },
      { scheme: 'bearer', params: { realm: 'r', service: 's' } },
    ]);
    expect(parseWwwAuthenticate('Basic, Bearer realm="r"')).toEqual([
      { scheme: 'basic', params: {} },
      { scheme: 'bearer', params: { realm: 'r' } },
    ]);
  });

  it('returns what it read before malformed input, and nothing for nothing', () => {
    expect(parseWwwAuthenticate('')).toEqual([]);
    expect(parseWwwAuthenticate('Bearer realm="r", service="unterminated')).toEqual([{ scheme: 'bearer', params: { realm: 'r' } }]);
    expect(parseWwwAuthenticate('Basic realm="x" junk')).toEqual([{ scheme: 'basic', params: { realm: 'x' } }]);
    expect(parseWwwAuthenticate('=oops')).toEqual([]);
  });
});
