import { describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { familiarImageReference, formatImageReference, parseImageReference, registryApiHost } from './reference.js';

const D = 'sha256:' + 'ab'.repeat(32);

describe('parseImageReference normalizes as Docker does', () => {
  const cases: [string, string][] = [
    ['alpine', 'docker.io/library/alpine:latest'],
    ['alpine:3.20', 'docker.io/library/alpine:3.20'],
    ['docker.io/library/alpine', 'docker.io/library/alpine:latest'],
    ['index.docker.io/library/alpine:edge', 'docker.io/library/alpine:edge'],
    ['docker.io/alpine', 'docker.io/library/alpine:latest'],
    ['team/app', 'docker.io/team/app:latest'],
    ['team/sub/app:1', 'docker.io/team/sub/app:1'],
    ['host:5000/a/b:tag', 'host:5000/a/b:tag'],
    ['127.0.0.1:5000/x', '127.0.0.1:5000/x:latest'],
    ['[::1]:5000/x:1', '[::1]:5000/x:1'],
    ['localhost/app', 'localhost/app:latest'],
    ['localhost:5000/app@' + D, 'localhost:5000/app@' + D],
    ['alpine:3.20@' + D, 'docker.io/library/alpine:3.20@' + D],
    ['quay.io/org/sub/app:v1.2.3', 'quay.io/org/sub/app:v1.2.3'],
    ['Registry.Example/app', 'Registry.Example/app:latest'],
    ['my_app:a_b-c.d', 'docker.io/library/my_app:a_b-c.d'],
    ['a--b/c__d/e.f', 'docker.io/a--b/c__d/e.f:latest'],
  ];
  for (const [input, expected] of cases) {
    it(`${input} -> ${expected}`, () => {
      expect(formatImageReference(parseImageReference(input))).toBe(expected);
    });
  }

  it('keeps tag and digest apart, and a digest alone has no tag', () => {
    expect(parseImageReference('h:5000/a/b@' + D)).toEqual({ registry: 'h:5000', repository: 'a/b', digest: D });
    expect(parseImageReference('a:1@' + D)).toEqual({ registry: 'docker.io', repository: 'library/a', tag: '1', digest: D });
  });

  it('gives the familiar short form back', () => {
    expect(familiarImageReference(parseImageReference('docker.io/library/alpine'))).toBe('alpine:latest');
    expect(familiarImageReference(parseImageReference('team/app:2'))).toBe('team/app:2');
    expect(familiarImageReference(parseImageReference('h:5000/library/x:1'))).toBe('h:5000/library/x:1');
    expect(familiarImageReference(parseImageReference('docker.io/library/a/b:1'))).toBe('library/a/b:1');
  });

  it('sends Docker Hub API calls to its registry host', () => {
    expect(registryApiHost('docker.io')).toBe('registry-1.docker.io');
    expect(registryApiHost('127.0.0.1:5000')).toBe('127.0.0.1:5000');
  });
});

describe('parseImageReference refuses malformed references with INVALID_ARGUMENT', () => {
  const bad: [string, RegExp][] = [
    ['', /empty/],
    [' alpine', /white space/],
    ['Alpine', /lowercase/],
    ['team/App', /lowercase/],
    ['alpine:', /not a tag/],
    ['alpine:-x', /not a tag/],
    ['alpine:' + 'x'.repeat(129), /not a tag/],
    ['alpine@sha256:abc', /not a digest/],
    ['alpine@sha256:' + 'AB'.repeat(32), /64 lowercase hex/],
    ['alpine@' + 'sha256:' + 'ab'.repeat(33), /64 lowercase hex/],
    ['alpine@', /not a digest/],
    ['a//b', /empty path component/],
    ['/alpine', /empty path component/],
    ['host:5000/', /empty path component/],
    ['host:5000/a/', /empty path component/],
    ['_app', /not a valid repository path component/],
    ['app-', /not a valid repository path component/],
    ['a___b', /not a valid repository path component/],
    ['alpine:tag:more', /not a valid repository path component/],
    ['-host.io/a', /not a registry host/],
    ['localhost:99999/x', /port 99999 .* out of range/],
    ['host.io:0/x', /port 0 .* out of range/],
    ['host.io:000000443/x', /out of range/],
    ['[::1]:70000/x', /out of range/],
    ['a'.repeat(256), /longer than 255/],
    ['ab'.repeat(32), /image id/],
    [':tag', /no repository name/],
  ];
  for (const [input, why] of bad) {
    it(JSON.stringify(input.length > 40 ? input.slice(0, 40) + '...' : input), () => {
      let err: unknown;
      try {
        parseImageReference(input);
      } catch (e) {
        err = e;
      }
      expect(isRoostError(err, 'INVALID_ARGUMENT')).toBe(true);
      expect((err as Error).message).toMatch(why);
    });
  }
});
