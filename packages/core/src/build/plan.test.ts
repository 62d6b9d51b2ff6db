import { describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { parseDockerfile } from './dockerfile.js';
import { DEFAULT_PATH, planBuild, type BuildPlan, type PlanBuildOptions, type PlannedStep, type StepConfig, type StepCopy, type StepRun } from './plan.js';

function plan(text: string, options: PlanBuildOptions = {}): BuildPlan {
  return planBuild(parseDockerfile(text), options);
}

/** The steps of the target stage. */
function steps(text: string, options: PlanBuildOptions = {}): PlannedStep[] {
  const p = plan(text, options);
  return p.stages[p.stages.length - 1]?.steps ?? [];
}

function runs(text: string, options: PlanBuildOptions = {}): StepRun[] {
  return steps(text, options).filter((s): s is StepRun => s.kind === 'run');
}
function copies(text: string, options: PlanBuildOptions = {}): StepCopy[] {
  return steps(text, options).filter((s): s is StepCopy => s.kind === 'copy');
}
function changes(text: string, options: PlanBuildOptions = {}): StepConfig['change'][] {
  return steps(text, options)
    .filter((s): s is StepConfig => s.kind === 'config')
    .map((s) => s.change);
}

function expectPlanError(text: string, line: number, fragment: string, options: PlanBuildOptions = {}): void {
  let thrown: unknown;
  try {
    plan(text, options);
  } catch (err) {
    thrown = err;
  }
  expect(isRoostError(thrown, 'INVALID_ARGUMENT'), `expected an error for ${JSON.stringify(text)}`).toBe(true);
  const err = thrown as { message: string; details: Record<string, unknown> };
  expect(err.message.startsWith(line > 0 ? `Dockerfile:${line}: ` : 'Dockerfile: '), err.message).toBe(true);
  expect(err.message).toContain(fragment);
  expect(err.details).toMatchObject({ line, file: 'Dockerfile' });
}

describe('where variables are expanded', () => {
  it('expands ENV, LABEL, COPY, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL', () => {
    const text = [
      'FROM alpine',
      'ENV D=/srv U=app P=8080 S=SIGQUIT M=644 N=data',
      'LABEL version="$P" "k$N"=v',
      'WORKDIR $D/www',
      'USER $U:$U',
      'EXPOSE $P ${P}/udp',
      'VOLUME ["$D/$N"]',
      'STOPSIGNAL $S',
      'COPY --chown=$U --chmod=$M ${N}.txt $D/',
    ].join('\n');
    expect(changes(text)).toEqual([
      {
        env: [
          ['D', '/srv'],
          ['U', 'app'],
          ['P', '8080'],
          ['S', 'SIGQUIT'],
          ['M', '644'],
          ['N', 'data'],
        ],
      },
      { labels: { version: '8080', kdata: 'v' } },
      { workdir: '/srv/www' },
      { user: 'app:app' },
      { exposedPorts: ['8080/tcp', '8080/udp'] },
      { volumes: ['/srv/data'] },
      { stopSignal: 'SIGQUIT' },
    ]);
    expect(copies(text)[0]).toMatchObject({ sources: ['data.txt'], dest: '/srv/', chown: 'app', chmod: 0o644, user: 'app:app', workdir: '/srv/www' });
  });

  it('never expands RUN, CMD, ENTRYPOINT or HEALTHCHECK (their shell does)', () => {
    const text = 'FROM a\nENV X=1\nRUN echo $X\nRUN ["echo", "$X"]\nCMD echo $X\nENTRYPOINT ["run", "${X}"]\nHEALTHCHECK CMD test $X';
    expect(runs(text).map((r) => r.argv)).toEqual([
      ['/bin/sh', '-c', 'echo $X'],
      ['echo', '$X'],
    ]);
    expect(changes(text).slice(1)).toEqual([
      { cmd: ['/bin/sh', '-c', 'echo $X'] },
      { entrypoint: ['run', '${X}'], resetsCmd: false },
      { healthcheck: { test: ['CMD-SHELL', 'test $X'] } },
    ]);
  });

  it('expands one ENV line with the values from before it (Docker: def=hello)', () => {
    expect(changes('FROM a\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc')).toEqual([
      { env: [['abc', 'hello']] },
      {
        env: [
          ['abc', 'bye'],
          ['def', 'hello'],
        ],
      },
      { env: [['ghi', 'bye']] },
    ]);
  });

  it('removes quotes and honours escapes in ENV values; legacy ENV keeps inner blanks', () => {
    expect(changes('FROM a\nENV a="x y" b=\'$c\' c=d\\ e\nENV legacy  one  two')).toEqual([
      {
        env: [
          ['a', 'x y'],
          ['b', '$c'],
          ['c', 'd e'],
        ],
      },
      { env: [['legacy', 'one  two']] },
    ]);
  });

  it('uses the backtick escape when the Dockerfile says so', () => {
    expect(changes('# escape=`\nFROM a\nENV P="C:\\dir `$X"')).toEqual([{ env: [['P', 'C:\\dir $X']] }]);
  });

  it('names the line of an expansion error', () => {
    expectPlanError('FROM a\n\nENV X="${NOPE:?must be set}"', 3, 'NOPE: must be set');
    expectPlanError('FROM a\nWORKDIR ${X', 2, "missing '}'");
  });
});

describe('ENV', () => {
  it('persists across the stage and into RUN steps, and is inherited through FROM <stage>', () => {
    const p = plan('FROM a AS base\nENV A=1\nRUN one\nENV B=$A-2\nFROM base\nENV C=3\nRUN two');
    expect(p.stages.map((s) => s.index)).toEqual([0, 1]);
    expect((p.stages[0]?.steps[1] as StepRun).env).toEqual({ A: '1' });
    expect((p.stages[1]?.steps[1] as StepRun).env).toEqual({ A: '1', B: '1-2', C: '3' });
  });

  it("expands with the base image's Env when the engine gives it, but keeps it out of the steps' env", () => {
    const options: PlanBuildOptions = {
      baseImageConfig: (ref) => (ref === 'golang:1.22' ? { env: ['PATH=/go/bin:/usr/bin', 'GOPATH=/go'], workingDir: '/go' } : undefined),
    };
    const text = 'FROM golang:1.22\nENV PATH=/app/bin:$PATH\nWORKDIR src\nCOPY x .\nRUN go build';
    expect(changes(text, options)).toEqual([{ env: [['PATH', '/app/bin:/go/bin:/usr/bin']] }, { workdir: '/go/src' }]);
    expect(copies(text, options)[0]?.dest).toBe('/go/src/');
    expect(runs(text, options)[0]?.env).toEqual({ PATH: '/app/bin:/go/bin:/usr/bin' });
    // Without the config, $PATH is unknown and the base's WorkingDir is taken as /.
    expect(changes(text)).toEqual([{ env: [['PATH', '/app/bin:']] }, { workdir: '/src' }]);
  });

  it("starts FROM scratch with Docker's default PATH, and accepts a config Env as a record", () => {
    expect(changes('FROM scratch\nENV PATH=/x:$PATH')).toEqual([{ env: [['PATH', `/x:${DEFAULT_PATH}`]] }]);
    expect(changes('FROM a\nENV Y=$X', { baseImageConfig: () => ({ env: { X: 'rec' } }) })).toEqual([{ env: [['Y', 'rec']] }]);
  });

  it('refuses a base image with ONBUILD triggers', () => {
    expectPlanError('FROM a\nFROM onbuilder\nRUN x', 2, 'ONBUILD triggers', {
      baseImageConfig: (r) => (r === 'onbuilder' ? { onBuild: ['RUN x'] } : undefined),
    });
  });
});

describe('ARG scoping', () => {
  it('uses global ARGs in FROM, and in a stage only when re-declared', () => {
    const text = 'ARG TAG=3.20\nARG OTHER=o\nFROM alpine:$TAG\nRUN a\nARG TAG\nRUN b\nENV T=$TAG O=${OTHER:-unset}';
    const p = plan(text);
    expect(p.stages[0]?.base).toEqual({ kind: 'image', reference: 'alpine:3.20' });
    const [a, b] = runs(text);
    expect(a?.args).toEqual({});
    expect(b?.args).toEqual({ TAG: '3.20' });
    expect(changes(text).at(-1)).toEqual({
      env: [
        ['T', '3.20'],
        ['O', 'unset'],
      ],
    });
  });

  it('takes --build-arg over the default, in global and stage scope, unexpanded', () => {
    const text = 'ARG TAG=3.20\nFROM alpine:${TAG}\nARG V=default\nARG W=$V\nRUN x';
    const p = plan(text, { buildArgs: { TAG: 'edge', V: '$literal' } });
    expect(p.stages[0]?.base).toEqual({ kind: 'image', reference: 'alpine:edge' });
    expect(runs(text, { buildArgs: { TAG: 'edge', V: '$literal' } })[0]?.args).toEqual({ V: '$literal', W: '$literal' });
    expect(runs(text)[0]?.args).toEqual({ V: 'default', W: 'default' });
  });

  it('leaves an ARG with no value, default or global value out of the args', () => {
    const text = 'FROM a\nARG NONE\nARG X=1 Y=$X\nRUN x\nENV E=${NONE-unset}';
    expect(runs(text)[0]?.args).toEqual({ X: '1', Y: '1' });
    expect(changes(text)).toEqual([{ arg: {} }, { arg: { X: '1', Y: '1' } }, { env: [['E', 'unset']] }]);
  });

  it('expands a stage ARG default with ENV, and ENV wins over an ARG of the same name', () => {
    const text = 'FROM a\nENV HOME=/root\nARG CACHE=$HOME/.cache\nARG HOME=/other\nENV C=$CACHE H=$HOME\nRUN x';
    expect(changes(text).at(-1)).toEqual({
      env: [
        ['C', '/root/.cache'],
        ['H', '/root'],
      ],
    });
    const run = runs(text)[0];
    expect(run?.args).toEqual({ CACHE: '/root/.cache', HOME: '/other' });
    expect(run?.env).toMatchObject({ HOME: '/root' });
  });

  it('inherits ARGs through FROM <stage>, not into sibling stages', () => {
    const text = 'FROM a AS base\nARG NAME=joe\nFROM base AS child\nRUN echo\nFROM a AS sibling\nRUN echo';
    expect(runs(text, { target: 'child' })[0]?.args).toEqual({ NAME: 'joe' });
    expect(runs(text, { target: 'sibling' })[0]?.args).toEqual({});
  });

  it('predefines the platform args (global scope, declared in a stage to use them)', () => {
    const text = 'FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETOS TARGETARCH\nRUN GOOS=$TARGETOS go build\nENV A=${TARGETARCH}-${BUILDARCH}';
    expect(runs(text)[0]?.args).toEqual({ TARGETOS: 'linux', TARGETARCH: 'amd64' });
    expect(changes(text).at(-1)).toEqual({ env: [['A', 'amd64-']] });
    expect(plan('ARG P=linux/amd64\nFROM --platform=$P a').stages).toHaveLength(1);
    expect(plan('FROM --platform=linux/x86_64 a').stages).toHaveLength(1);
  });

  it('refuses another platform, naming the line', () => {
    expectPlanError('FROM a\nFROM --platform=linux/arm64 b', 2, 'FROM --platform=linux/arm64: Roost builds only for linux/amd64');
    expectPlanError('FROM --platform=$TARGETPLATFORM a', 1, 'from $TARGETPLATFORM', { buildArgs: { TARGETPLATFORM: 'linux/arm/v7' } });
  });

  it('passes predefined proxy args to RUN without a declaration, kept apart from args', () => {
    const text = 'FROM a\nRUN one\nARG NO_PROXY\nRUN two';
    const buildArgs = { HTTP_PROXY: 'http://p:3128', NO_PROXY: 'localhost' };
    const [one, two] = runs(text, { buildArgs });
    expect(one?.proxy).toEqual(buildArgs);
    expect(one?.args).toEqual({});
    expect(two?.proxy).toEqual({ HTTP_PROXY: 'http://p:3128' });
    expect(two?.args).toEqual({ NO_PROXY: 'localhost' });
    expect(plan(text, { buildArgs }).unusedBuildArgs).toEqual([]);
  });

  it('reports --build-args no ARG declares', () => {
    expect(plan('ARG G\nFROM a\nARG S').unusedBuildArgs).toEqual([]);
    const text = 'ARG G\nFROM a AS first\nARG S\nFROM b AS second\nARG ONLY_SECOND';
    expect(plan(text, { target: 'first', buildArgs: { G: '1', S: '2', ONLY_SECOND: '3', TYPO: '4', TARGETARCH: 'amd64' } }).unusedBuildArgs).toEqual([
      'ONLY_SECOND',
      'TYPO',
    ]);
  });
});

describe('stages and the target', () => {
  const multi = [
    'FROM alpine AS base', // 1
    'RUN base',
    'FROM base AS deps', // 3
    'RUN deps',
    'FROM golang AS tools', // 5
    'RUN tools',
    'FROM base AS build', // 7
    'COPY --from=deps /d /d',
    'COPY --from=2 /t /t',
    'FROM scratch AS final', // 10
    'COPY --from=build /out /',
    'FROM base AS unrelated', // 12
    'RUN x',
  ].join('\n');

  it('builds only what the target needs, in dependency order', () => {
    const p = plan(multi, { target: 'final' });
    expect(p.stages.map((s) => [s.index, s.name])).toEqual([
      [0, 'base'],
      [1, 'deps'],
      [2, 'tools'],
      [3, 'build'],
      [4, 'final'],
    ]);
    expect(p.stages.map((s) => s.base)).toEqual([
      { kind: 'image', reference: 'alpine' },
      { kind: 'stage', index: 0 },
      { kind: 'image', reference: 'golang' },
      { kind: 'stage', index: 0 },
      { kind: 'scratch' },
    ]);
    expect((p.stages[3]?.steps as StepCopy[]).map((s) => s.from)).toEqual([{ stage: 1 }, { stage: 2 }]);
  });

  it('defaults to the last stage, finds the target in any case, prunes the rest', () => {
    expect(plan(multi).stages.map((s) => s.index)).toEqual([0, 5]);
    expect(plan(multi, { target: 'TOOLS' }).stages.map((s) => s.index)).toEqual([2]);
    expect(plan(multi, { target: 'deps' }).stages.map((s) => [s.index, s.line])).toEqual([
      [0, 1],
      [1, 3],
    ]);
  });

  it('allows COPY --from a later stage, and orders it first', () => {
    const p = plan('FROM a AS main\nCOPY --from=helper /x /x\nFROM b AS helper\nRUN make', { target: 'main' });
    expect(p.stages.map((s) => s.index)).toEqual([1, 0]);
  });

  it('takes COPY --from that names no stage as an image, never expanded', () => {
    const p = plan('FROM a\nCOPY --from=nginx:1.27 /etc/nginx /etc/nginx\nCOPY --from=registry:5000/x@sha256:' + 'a'.repeat(64) + ' / /');
    expect((p.stages[0]?.steps as StepCopy[]).map((s) => s.from)).toEqual([{ image: 'nginx:1.27' }, { image: 'registry:5000/x@sha256:' + 'a'.repeat(64) }]);
    expectPlanError('ARG I=x\nFROM a\nCOPY --from=$I /a /b', 3, '--from does not expand variables');
    expectPlanError('FROM a\nCOPY --from=Not_A_Ref! /a /b', 2, 'names no stage, and is not an image reference');
    expectPlanError('FROM a\nFROM b\nCOPY --from=2 /a /b', 3, 'invalid stage index 2');
  });

  it('refuses cycles, unknown targets, duplicate names and bad base images', () => {
    expectPlanError('FROM a AS one\nCOPY --from=two /x /x\nFROM b AS two\nCOPY --from=one /y /y', 2, 'circular dependency');
    expectPlanError('FROM a AS self\nCOPY --from=self /x /y', 2, 'circular dependency');
    expectPlanError('FROM a AS x\nFROM b', 0, 'target stage "nope" could not be found', { target: 'nope' });
    expectPlanError('FROM a AS x\nFROM b AS x', 2, 'duplicate stage name "x"');
    expectPlanError('FROM a\nFROM UPPER/Case', 2, 'FROM UPPER/Case');
    expectPlanError('ARG EMPTY\nFROM $EMPTY', 2, 'base name ($EMPTY) should not be blank');
  });
});

describe('WORKDIR, COPY destinations, USER', () => {
  it('resolves WORKDIR against the previous one, from /', () => {
    expect(changes('FROM a\nWORKDIR app\nWORKDIR sub/../src/\nWORKDIR /abs//x/.\nWORKDIR ..')).toEqual([
      { workdir: '/app' },
      { workdir: '/app/src' },
      { workdir: '/abs/x' },
      { workdir: '/abs' },
    ]);
    expectPlanError('FROM a\nWORKDIR $NOTHING', 2, 'is empty after expansion');
  });

  it('resolves COPY dest against WORKDIR and marks directories', () => {
    const text = [
      'FROM a',
      'COPY a rel', // file
      'WORKDIR /w',
      'COPY a rel',
      'COPY a .',
      'COPY a ./',
      'COPY a b /multi',
      'COPY a sub/',
      'COPY ["a", "/abs/x"]',
      'COPY a ..',
    ].join('\n');
    expect(copies(text).map((c) => [c.dest, c.workdir])).toEqual([
      ['/rel', null],
      ['/w/rel', '/w'],
      ['/w/', '/w'],
      ['/w/', '/w'],
      ['/multi/', '/w'],
      ['/w/sub/', '/w'],
      ['/abs/x', '/w'],
      ['/', '/w'],
    ]);
  });

  it("keeps USER and WORKDIR for RUN steps (null: the base's), and through FROM <stage>", () => {
    const p = plan('FROM a AS b\nRUN x\nUSER app\nWORKDIR /h\nRUN y\nFROM b\nRUN z');
    expect(p.stages.flatMap((s) => s.steps.filter((x): x is StepRun => x.kind === 'run')).map((r) => [r.user, r.workdir])).toEqual([
      [null, null],
      ['app', '/h'],
      ['app', '/h'],
    ]);
  });
});

describe('COPY and ADD', () => {
  it('plans ADD of local files, with --chmod as a number', () => {
    expect(copies('FROM a\nADD --chmod=755 app.tar.gz /opt/')[0]).toMatchObject({
      add: true,
      sources: ['app.tar.gz'],
      dest: '/opt/',
      chmod: 0o755,
      from: null,
    });
  });

  it('refuses ADD from a URL that a variable names, an empty source and a symbolic --chmod', () => {
    expectPlanError('FROM a\nARG U=https://x.test/a.tgz\nADD $U /a', 3, 'ADD from a URL is not supported');
    expectPlanError('FROM a\nCOPY $NONE /a', 2, 'is empty after expansion');
    expectPlanError('FROM a\nCOPY --chmod=u+x a /b', 2, 'not an octal mode');
    expectPlanError('FROM a\nCOPY --chmod=99 a /b', 2, 'not an octal mode');
  });
});

describe('SHELL, CMD, ENTRYPOINT', () => {
  it('wraps shell forms with the SHELL in force', () => {
    const text = 'FROM a\nRUN one\nSHELL ["/bin/bash", "-o", "pipefail", "-c"]\nRUN two | three\nCMD serve\nENTRYPOINT exec app';
    expect(runs(text).map((r) => r.argv)).toEqual([
      ['/bin/sh', '-c', 'one'],
      ['/bin/bash', '-o', 'pipefail', '-c', 'two | three'],
    ]);
    expect(changes(text)).toEqual([
      { shell: ['/bin/bash', '-o', 'pipefail', '-c'] },
      { cmd: ['/bin/bash', '-o', 'pipefail', '-c', 'serve'] },
      { entrypoint: ['/bin/bash', '-o', 'pipefail', '-c', 'exec app'], resetsCmd: false },
    ]);
  });

  it("takes the base image's Shell, and says when ENTRYPOINT resets the base's CMD", () => {
    expect(runs('FROM win\nRUN dir', { baseImageConfig: () => ({ shell: ['pwsh', '-c'] }) })[0]?.argv).toEqual(['pwsh', '-c', 'dir']);
    expect(changes('FROM a\nENTRYPOINT ["x"]\nCMD ["y"]')).toEqual([{ entrypoint: ['x'], resetsCmd: true }, { cmd: ['y'] }]);
  });
});

describe('EXPOSE, STOPSIGNAL, LABEL, MAINTAINER, HEALTHCHECK, VOLUME', () => {
  it('normalizes EXPOSE specs and expands words', () => {
    expect(changes('FROM a\nARG PORTS="80 443"\nEXPOSE $PORTS 53/UDP 7000-7002/tcp 80')).toEqual([
      { arg: { PORTS: '80 443' } },
      { exposedPorts: ['80/tcp', '443/tcp', '53/udp', '7000/tcp', '7001/tcp', '7002/tcp'] },
    ]);
    const p = plan('FROM a\nEXPOSE 127.0.0.1:8080:80');
    expect(p.stages[0]?.steps[0]).toMatchObject({ change: { exposedPorts: ['80/tcp'] } });
    expect(p.notes).toEqual(['Dockerfile:2: EXPOSE 127.0.0.1:8080:80: the host part is ignored (EXPOSE never publishes a port)']);
    expectPlanError('FROM a\nEXPOSE 80/icmp', 2, 'invalid proto: icmp');
    expectPlanError('FROM a\nEXPOSE 99999', 2, 'invalid port');
    expectPlanError('FROM a\nEXPOSE http', 2, 'invalid port');
  });

  it('checks STOPSIGNAL', () => {
    expect(changes('FROM a\nSTOPSIGNAL 9\nSTOPSIGNAL sigterm\nSTOPSIGNAL RTMIN+3')).toEqual([
      { stopSignal: '9' },
      { stopSignal: 'sigterm' },
      { stopSignal: 'RTMIN+3' },
    ]);
    expectPlanError('FROM a\nSTOPSIGNAL SIGNOPE', 2, 'invalid signal');
    expectPlanError('FROM a\nSTOPSIGNAL 0', 2, 'invalid signal');
  });

  it('turns MAINTAINER into the maintainer label, keeps HEALTHCHECK and VOLUME', () => {
    expect(changes('FROM a\nMAINTAINER Jane $X\nHEALTHCHECK --interval=5s CMD ["check"]\nHEALTHCHECK NONE\nVOLUME /data /logs')).toEqual([
      { labels: { maintainer: 'Jane $X' } },
      { healthcheck: { test: ['CMD', 'check'], interval: 5e9 } },
      { healthcheck: { test: ['NONE'] } },
      { volumes: ['/data', '/logs'] },
    ]);
  });
});

describe('the plan as a whole', () => {
  it("keeps the parser notes and each step's line and text", () => {
    const p = plan('# syntax=docker/dockerfile:1\nFROM a\nRUN echo \\\n  hi');
    expect(p.notes).toEqual(['Dockerfile:1: # syntax=docker/dockerfile:1 directive ignored (Roost builds with its own frontend)']);
    expect(p.stages[0]?.steps[0]).toMatchObject({ kind: 'run', line: 3, text: 'RUN echo   hi' });
  });

  it('names the file given to planBuild', () => {
    expect(() => planBuild(parseDockerfile('FROM a\nWORKDIR ${'), { file: 'sub/Dockerfile.dev' })).toThrow(/^sub\/Dockerfile\.dev:2: /);
  });
});
