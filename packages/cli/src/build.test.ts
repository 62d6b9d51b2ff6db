import { describe, expect, it } from 'vitest';
import { isRoostError, RoostError, templateImageTag } from '@roost/api';
import { buildArgs, buildOptions, buildSummary, describeBuildFailure, sourceDateEpoch } from './build.js';

const where = { context: 'ctx', cwd: '/work', env: {}, remote: false };

describe('buildOptions', () => {
  it('maps every flag to the BuildOptions of the contract', () => {
    expect(
      buildOptions(
        {
          tag: ['app:1', 'app:latest'],
          file: 'ctx/docker/Dockerfile.dev',
          buildArg: ['A=1', 'B=x=y'],
          target: 'runtime',
          cache: false,
          pull: true,
          sourceDateEpoch: '1700000000',
          network: 'user',
          allow: ['example.com:443'],
          deny: [],
          cpus: 2,
          memory: 1024,
          disk: 8192,
        },
        where,
      ),
    ).toEqual({
      tags: ['app:1', 'app:latest'],
      dockerfile: 'docker/Dockerfile.dev',
      buildArgs: { A: '1', B: 'x=y' },
      target: 'runtime',
      noCache: true,
      pull: true,
      sourceDateEpoch: 1700000000,
      network: 'user',
      egress: { default: 'deny', allow: ['example.com:443'], deny: [] },
      cpus: 2,
      memoryMiB: 1024,
      diskSizeMiB: 8192,
    });
  });

  it('gives nothing for no flags (the cache flag on, as commander sets it)', () => {
    expect(buildOptions({ buildArg: [], cache: true }, where)).toEqual({});
  });

  it('takes -f relative to the current directory, as docker does; outside the context only embedded', () => {
    expect(buildOptions({ buildArg: [], file: 'Dockerfile' }, { ...where, context: '.' }).dockerfile).toBe('Dockerfile');
    expect(buildOptions({ buildArg: [], file: '/work/ctx/sub/D' }, where).dockerfile).toBe('sub/D');
    expect(buildOptions({ buildArg: [], file: 'other/Dockerfile' }, where).dockerfile).toBe('/work/other/Dockerfile');
    const err = (() => {
      try {
        buildOptions({ buildArg: [], file: 'other/Dockerfile' }, { ...where, remote: true });
      } catch (e) {
        return e;
      }
    })();
    expect(isRoostError(err, 'INVALID_ARGUMENT')).toBe(true);
    expect((err as Error).message).toMatch(/^-f other\/Dockerfile: the Dockerfile must be inside the build context \(ctx\)/);
  });

  it('refuses --network none with egress rules', () => {
    expect(() => buildOptions({ buildArg: [], network: 'none', allow: ['a.com'], deny: [] }, where)).toThrow(/--network none/);
  });
});

describe('buildArgs and SOURCE_DATE_EPOCH', () => {
  it('takes K=V, and K from the environment (left out when unset)', () => {
    expect(buildArgs(['A=1', 'FROM_ENV', 'UNSET', 'E='], { FROM_ENV: 'v' })).toEqual({ A: '1', FROM_ENV: 'v', E: '' });
    expect(() => buildArgs(['=x'], {})).toThrow(/--build-arg =x: expected NAME=VALUE/);
    expect(() => buildArgs(['1A=x'], {})).toThrow(/expected NAME=VALUE/);
  });

  it('takes --source-date-epoch, else $SOURCE_DATE_EPOCH (empty: unset), naming the one that is wrong', () => {
    expect(sourceDateEpoch('5', { SOURCE_DATE_EPOCH: '7' })).toBe(5);
    expect(sourceDateEpoch(undefined, { SOURCE_DATE_EPOCH: '7' })).toBe(7);
    expect(sourceDateEpoch(undefined, { SOURCE_DATE_EPOCH: '' })).toBeUndefined();
    expect(sourceDateEpoch(undefined, {})).toBeUndefined();
    expect(() => sourceDateEpoch(undefined, { SOURCE_DATE_EPOCH: 'yesterday' })).toThrow(/^SOURCE_DATE_EPOCH "yesterday": expected whole seconds/);
    expect(() => sourceDateEpoch('-1', {})).toThrow(/^--source-date-epoch "-1"/);
  });
});

describe('what roost build prints', () => {
  it('names the failed step, then the end of its output under bars (sanitized)', () => {
    const e = new RoostError('BUILD_FAILED', 'Dockerfile:3: RUN make: exited with status 2\ncc: error\n\x1b[31mmake: *** failed\x1b[0m');
    expect(describeBuildFailure(e)).toBe('roost: build failed: Dockerfile:3: RUN make: exited with status 2\n  | cc: error\n  | make: *** failed\n');
  });

  it('ends with the image id and its tags, in their familiar form', () => {
    const image = { id: 'sha256:ab', tags: ['docker.io/library/app:1', 'registry:5000/team/app:2'] } as Parameters<typeof buildSummary>[0]['image'];
    expect(buildSummary({ image, ran: 1, cached: 3 }, 2345)).toBe(
      'Built sha256:ab in 2.3s (1 step ran, 3 cached)\nTagged app:1\nTagged registry:5000/team/app:2\n',
    );
  });

  it('tags a template built from a Dockerfile roost-template/NAME:latest, a repository name whatever the template name', () => {
    expect(templateImageTag('web')).toBe('roost-template/web:latest');
    expect(templateImageTag('Web.App_1')).toMatch(/^roost-template\/web-app-1-[0-9a-f]{6}:latest$/);
    expect(templateImageTag('Web')).not.toBe(templateImageTag('web'));
    expect(templateImageTag('a..b')).toMatch(/^roost-template\/a-b-[0-9a-f]{6}:latest$/);
  });
});
