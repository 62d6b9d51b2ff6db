import { describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { parseDockerfile, type Dockerfile, type Instruction } from './dockerfile.js';

/** The instructions of the only stage of `FROM x` + body. */
function body(text: string, escapeDirective = ''): Instruction[] {
  return parseDockerfile(`${escapeDirective}FROM alpine\n${text}\n`).stages[0]?.instructions ?? [];
}

function one(text: string): Instruction {
  const all = body(text);
  expect(all).toHaveLength(1);
  return all[0] as Instruction;
}

/** Expects a parse error naming `line`, whose message contains `fragment`. */
function expectError(text: string, line: number, fragment: string, file = 'Dockerfile'): void {
  let thrown: unknown;
  try {
    parseDockerfile(text, file === 'Dockerfile' ? {} : { file });
  } catch (err) {
    thrown = err;
  }
  expect(isRoostError(thrown, 'INVALID_ARGUMENT'), `expected an error for ${JSON.stringify(text)}`).toBe(true);
  const err = thrown as { message: string; details: Record<string, unknown> };
  expect(err.message.startsWith(line > 0 ? `${file}:${line}: ` : `${file}: `), err.message).toBe(true);
  expect(err.message).toContain(fragment);
  expect(err.details).toMatchObject({ line, file });
}

describe('parser directives', () => {
  it('notes # syntax= and # check= as ignored and obeys # escape=', () => {
    const df = parseDockerfile('# syntax=docker/dockerfile:1\n# check=skip=all\n# escape=`\nFROM alpine\nRUN echo `\n  hi\n');
    expect(df.escape).toBe('`');
    expect(df.directives.map((d) => [d.name, d.value, d.line])).toEqual([
      ['syntax', 'docker/dockerfile:1', 1],
      ['check', 'skip=all', 2],
      ['escape', '`', 3],
    ]);
    expect(df.notes).toEqual([
      'Dockerfile:1: # syntax=docker/dockerfile:1 directive ignored (Roost builds with its own frontend)',
      'Dockerfile:2: # check=skip=all directive ignored (Roost runs no build checks)',
    ]);
    expect(df.stages[0]?.instructions[0]).toMatchObject({ kind: 'run', command: { form: 'shell', script: 'echo   hi' }, line: 5, endLine: 6 });
  });

  it('accepts any case and spaces around =', () => {
    const df = parseDockerfile('#  ESCAPE = `\nFROM a\n');
    expect(df.escape).toBe('`');
  });

  it('stops reading directives at a comment, a blank line or an instruction', () => {
    expect(parseDockerfile('# hello\n# escape=`\nFROM a\n').escape).toBe('\\');
    expect(parseDockerfile('\n# escape=`\nFROM a\n').escape).toBe('\\');
    expect(parseDockerfile('FROM a\n# escape=`\n').escape).toBe('\\');
    expect(parseDockerfile('# unknown=1\n# escape=`\nFROM a\n').escape).toBe('\\');
    expect(parseDockerfile('# syntax=x\n\n# escape=`\nFROM a\n').directives).toHaveLength(1);
  });

  it('refuses a repeated directive and a bad escape, naming the line', () => {
    expectError('# escape=`\n# escape=\\\nFROM a\n', 2, 'only one escape parser directive can be used');
    expectError('# escape=x\nFROM a\n', 1, "invalid escape token 'x'");
  });
});

describe('lines', () => {
  it('skips comments and blank lines, strips a BOM, reads CRLF', () => {
    const df = parseDockerfile('\uFEFF# c\r\n\r\nFROM a\r\n   # indented comment\r\nRUN x\r\n');
    expect(df.stages[0]).toMatchObject({ line: 3, image: 'a' });
    expect(df.stages[0]?.instructions).toMatchObject([{ kind: 'run', line: 5, command: { script: 'x' } }]);
  });

  it('joins continuations, skipping comment lines inside them (as Docker)', () => {
    const [run] = body('RUN apt-get update && \\\n# a comment\n    apt-get install -y \\\n  curl');
    expect(run).toMatchObject({ line: 2, endLine: 5, text: 'RUN apt-get update &&     apt-get install -y   curl' });
    expect(run).toMatchObject({ command: { form: 'shell', script: 'apt-get update &&     apt-get install -y   curl' } });
  });

  it('notes an empty continuation line, and keeps going', () => {
    const df = parseDockerfile('FROM a\nRUN a \\\n\n  b\n');
    expect(df.stages[0]?.instructions[0]).toMatchObject({ command: { script: 'a   b' }, endLine: 4 });
    expect(df.notes[0]).toMatch(/^Dockerfile:2: empty continuation line/);
  });

  it('does not continue after an escaped escape, allows blanks after the backslash', () => {
    expect(body('RUN echo \\\\\nRUN b')).toHaveLength(2);
    expect(body('RUN a \\   \n b')).toMatchObject([{ command: { script: 'a  b' } }]);
    expect(body('RUN a \\')).toMatchObject([{ command: { script: 'a' } }]);
  });

  it('reads instruction names in any case', () => {
    const df = parseDockerfile('from alpine as Base\nrUn echo\nWorkDir /x\n');
    expect(df.stages[0]).toMatchObject({ name: 'base', image: 'alpine' });
    expect(df.stages[0]?.instructions.map((i) => i.kind)).toEqual(['run', 'workdir']);
  });
});

describe('FROM', () => {
  it('reads the image, the stage name and --platform', () => {
    const df = parseDockerfile('ARG V=1\nFROM --platform=$BUILDPLATFORM golang:$V AS Build\nFROM scratch\nFROM build\n');
    expect(df.globalArgs).toMatchObject([{ kind: 'arg', args: [{ name: 'V', value: '1' }], line: 1 }]);
    expect(df.stages.map((s) => [s.index, s.name, s.image, s.platform, s.line])).toEqual([
      [0, 'build', 'golang:$V', '$BUILDPLATFORM', 2],
      [1, null, 'scratch', null, 3],
      [2, null, 'build', null, 4],
    ]);
  });

  it('refuses bad forms', () => {
    expectError('FROM\n', 1, 'FROM requires either one or three arguments');
    expectError('FROM a b\n', 1, 'FROM requires either one or three arguments');
    expectError('FROM a AS 1x\n', 1, 'invalid name for build stage');
    expectError('FROM a AS scratch\n', 1, 'reserved');
    expectError('FROM --plat=x a\n', 1, 'unknown flag --plat for FROM');
    expectError('FROM --platform a\n', 1, 'missing a value on flag --platform');
  });

  it('needs a FROM, and only ARG before it', () => {
    expectError('RUN x\nFROM a\n', 1, 'RUN before the first FROM');
    expectError('', 0, 'no instructions');
    expectError('# only a comment\n\n', 0, 'no instructions');
    expectError('ARG X\n', 0, 'no FROM');
  });
});

describe('RUN, CMD, ENTRYPOINT, SHELL', () => {
  it('reads the exec form (JSON) and the shell form', () => {
    expect(one('RUN ["/bin/echo", "a b"]')).toMatchObject({ kind: 'run', command: { form: 'exec', argv: ['/bin/echo', 'a b'] } });
    expect(one('RUN echo "a  b" $X')).toMatchObject({ kind: 'run', command: { form: 'shell', script: 'echo "a  b" $X' } });
    expect(one('CMD ["run"]')).toMatchObject({ kind: 'cmd', command: { form: 'exec', argv: ['run'] } });
    expect(one('CMD run --fast')).toMatchObject({ kind: 'cmd', command: { form: 'shell', script: 'run --fast' } });
    expect(one('ENTRYPOINT []')).toMatchObject({ kind: 'entrypoint', command: { form: 'exec', argv: [] } });
    expect(one('SHELL ["/bin/bash", "-eo", "pipefail", "-c"]')).toMatchObject({ kind: 'shell', argv: ['/bin/bash', '-eo', 'pipefail', '-c'] });
  });

  it('falls back to the shell form for malformed JSON, as Docker', () => {
    expect(one("CMD ['single', 'quotes']")).toMatchObject({ command: { form: 'shell', script: "['single', 'quotes']" } });
    expect(one('RUN ["a", "b"')).toMatchObject({ command: { form: 'shell', script: '["a", "b"' } });
    expect(one('RUN ["a"] && b')).toMatchObject({ command: { form: 'shell' } });
  });

  it('refuses JSON arrays of non-strings, empty commands and SHELL in shell form', () => {
    expectError('FROM a\nRUN ["a", 1]\n', 2, 'arrays must be comprised of strings only');
    expectError('FROM a\nRUN\n', 2, 'RUN requires at least one argument');
    expectError('FROM a\nRUN []\n', 2, 'RUN requires at least one argument');
    expectError('FROM a\nSHELL /bin/bash -c\n', 2, 'SHELL requires the arguments to be in JSON form');
    expectError('FROM a\nSHELL []\n', 2, 'SHELL requires at least one argument');
  });

  it('refuses RUN --mount, --network, --security, --device and unknown flags, naming line and flag', () => {
    expectError('FROM a\nRUN --mount=type=cache,target=/root/.cache pip install x\n', 2, 'RUN --mount is not supported');
    expectError('FROM a\n\nRUN --network=none true\n', 3, 'RUN --network is not supported');
    expectError('FROM a\nRUN --security=insecure true\n', 2, 'RUN --security is not supported');
    expectError('FROM a\nRUN --device=x true\n', 2, 'RUN --device is not supported');
    expectError('FROM a\nRUN --frobnicate true\n', 2, 'unknown flag --frobnicate for RUN');
  });

  it('keeps a shell-form command that merely contains --flags', () => {
    expect(one('RUN ls --all')).toMatchObject({ command: { script: 'ls --all' } });
    expect(one('RUN -- --weird')).toMatchObject({ command: { script: '--weird' } });
  });

  it('refuses heredocs in RUN, COPY and ADD', () => {
    expectError('FROM a\nRUN <<EOF\necho hi\nEOF\n', 2, 'heredoc');
    expectError('FROM a\nRUN cat <<-"END" > /x\nEND\n', 2, 'heredoc');
    expectError('FROM a\nCOPY <<EOF /etc/x\nhi\nEOF\n', 2, 'heredoc');
    expect(one('RUN echo "a<<b" && cat <<<"here string"')).toMatchObject({ kind: 'run' });
    expect(one('RUN ["cat", "<<EOF"]')).toMatchObject({ command: { form: 'exec' } });
  });
});

describe('COPY and ADD', () => {
  it('reads sources, dest and flags', () => {
    expect(one('COPY --from=build --chown=app:app --chmod=0755 a b* /dest/')).toMatchObject({
      kind: 'copy',
      add: false,
      sources: ['a', 'b*'],
      dest: '/dest/',
      from: 'build',
      chown: 'app:app',
      chmod: '0755',
    });
    expect(one('ADD ["a b.tar", "/x"]')).toMatchObject({ kind: 'copy', add: true, sources: ['a b.tar'], dest: '/x', from: null, chown: null, chmod: null });
    expect(one('COPY --chown="a b" x y')).toMatchObject({ chown: 'a b' });
  });

  it('refuses --link, --parents, --exclude, ADD-only flags and ADD --from', () => {
    expectError('FROM a\nCOPY --link a /b\n', 2, 'COPY --link is not supported');
    expectError('FROM a\nCOPY --parents a /b\n', 2, 'COPY --parents is not supported');
    expectError('FROM a\nCOPY --exclude=*.md . /b\n', 2, 'COPY --exclude is not supported');
    expectError('FROM a\nADD --keep-git-dir=true a /b\n', 2, 'ADD --keep-git-dir is not supported');
    expectError('FROM a\nADD --checksum=sha256:00 a /b\n', 2, 'ADD --checksum is not supported');
    expectError('FROM a\nADD --from=x a /b\n', 2, 'unknown flag --from for ADD');
    expectError('FROM a\nCOPY --from=a --from=b x /y\n', 2, 'duplicate flag specified: --from');
  });

  it('refuses ADD from a URL or git', () => {
    const message = 'ADD from a URL is not supported: download in a RUN step or COPY the file';
    expectError('FROM a\nADD https://example.com/x.tgz /x\n', 2, message);
    expectError('FROM a\nADD git@github.com:moby/buildkit.git /src\n', 2, message);
    expectError('FROM a\nADD local http://x/y /x/\n', 2, message);
    expect(one('COPY http-client /x')).toMatchObject({ kind: 'copy' });
  });

  it('needs a destination', () => {
    expectError('FROM a\nCOPY onlyone\n', 2, 'COPY requires at least two arguments');
    expectError('FROM a\nADD\n', 2, 'ADD requires at least two arguments');
  });
});

describe('ENV, LABEL, ARG', () => {
  it('reads k=v pairs with quotes kept for expansion, and the legacy form', () => {
    expect(one('ENV a=1 b="two words" c=three\\ words')).toMatchObject({
      kind: 'env',
      pairs: [
        { key: 'a', value: '1' },
        { key: 'b', value: '"two words"' },
        { key: 'c', value: 'three\\ words' },
      ],
    });
    expect(one('ENV PATH /usr/local/bin:$PATH')).toMatchObject({ pairs: [{ key: 'PATH', value: '/usr/local/bin:$PATH' }] });
    expect(one('ENV greeting hello  world')).toMatchObject({ pairs: [{ key: 'greeting', value: 'hello  world' }] });
    expect(one('ENV empty=')).toMatchObject({ pairs: [{ key: 'empty', value: '' }] });
    expect(one('LABEL "com.example.v"="1.0" desc=\'a b\'')).toMatchObject({
      kind: 'label',
      pairs: [
        { key: '"com.example.v"', value: '"1.0"' },
        { key: 'desc', value: "'a b'" },
      ],
    });
  });

  it('refuses malformed pairs', () => {
    expectError('FROM a\nENV onlykey\n', 2, 'ENV must have two arguments');
    expectError('FROM a\nENV a=1 b\n', 2, `can't find = in "b"`);
    expectError('FROM a\nENV =x\n', 2, 'ENV names can not be blank');
    expectError('FROM a\nLABEL\n', 2, 'LABEL requires at least one argument');
  });

  it('reads ARGs with and without defaults, several per line', () => {
    expect(one('ARG A B=2 C="x y"')).toMatchObject({
      kind: 'arg',
      args: [
        { name: 'A', value: null },
        { name: 'B', value: '2' },
        { name: 'C', value: '"x y"' },
      ],
    });
    expectError('FROM a\nARG =1\n', 2, 'ARG names can not be blank');
    expectError('FROM a\nARG\n', 2, 'ARG requires at least one argument');
  });
});

describe('the other instructions', () => {
  it('reads WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL, MAINTAINER', () => {
    expect(
      body('WORKDIR /app\nUSER app:staff\nEXPOSE 80 53/udp $P\nVOLUME ["/data", "/logs"]\nVOLUME /a /b\nSTOPSIGNAL SIGINT\nMAINTAINER Jane <j@x>'),
    ).toMatchObject([
      { kind: 'workdir', path: '/app' },
      { kind: 'user', user: 'app:staff' },
      { kind: 'expose', ports: ['80', '53/udp', '$P'] },
      { kind: 'volume', paths: ['/data', '/logs'] },
      { kind: 'volume', paths: ['/a', '/b'] },
      { kind: 'stopsignal', signal: 'SIGINT' },
      { kind: 'maintainer', maintainer: 'Jane <j@x>' },
    ]);
  });

  it('refuses them empty', () => {
    for (const [name, message] of [
      ['WORKDIR', 'WORKDIR requires exactly one argument'],
      ['USER', 'USER requires exactly one argument'],
      ['EXPOSE', 'EXPOSE requires at least one argument'],
      ['VOLUME', 'VOLUME requires at least one argument'],
      ['STOPSIGNAL', 'STOPSIGNAL requires exactly one argument'],
    ] as const) {
      expectError(`FROM a\n${name}\n`, 2, message);
    }
    expectError('FROM a\nVOLUME ["/a", " "]\n', 2, 'VOLUME specified can not be an empty string');
    expectError('FROM a\nENV X=1\nWORKDIR --x=1 /a\n', 3, 'unknown flag --x for WORKDIR');
  });

  it('reads HEALTHCHECK in Docker config form, durations in nanoseconds', () => {
    expect(one('HEALTHCHECK NONE')).toMatchObject({ kind: 'healthcheck', test: ['NONE'] });
    expect(
      one('HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=500ms --retries=3 CMD curl -f http://localhost/ || exit 1'),
    ).toEqual(
      expect.objectContaining({
        test: ['CMD-SHELL', 'curl -f http://localhost/ || exit 1'],
        interval: 30e9,
        timeout: 90e9,
        startPeriod: 1.5e9,
        startInterval: 500e6,
        retries: 3,
      }),
    );
    const exec = one('HEALTHCHECK cmd ["/bin/check", "-q"]');
    expect(exec).toMatchObject({ test: ['CMD', '/bin/check', '-q'] });
    expect(exec).not.toHaveProperty('interval');
  });

  it('refuses bad HEALTHCHECKs', () => {
    expectError('FROM a\nHEALTHCHECK\n', 2, 'HEALTHCHECK requires at least one argument');
    expectError('FROM a\nHEALTHCHECK NONE x\n', 2, 'HEALTHCHECK NONE takes no arguments');
    expectError('FROM a\nHEALTHCHECK --retries=1 NONE\n', 2, 'HEALTHCHECK NONE takes no flags');
    expectError('FROM a\nHEALTHCHECK RUN x\n', 2, 'unknown type "RUN" in HEALTHCHECK (try CMD)');
    expectError('FROM a\nHEALTHCHECK CMD\n', 2, 'missing command after HEALTHCHECK CMD');
    expectError('FROM a\nHEALTHCHECK --interval=10 CMD x\n', 2, 'HEALTHCHECK --interval');
    expectError('FROM a\nHEALTHCHECK --timeout=10us CMD x\n', 2, 'cannot be less than 1ms');
    expectError('FROM a\nHEALTHCHECK --retries=-1 CMD x\n', 2, 'cannot be negative');
    expectError('FROM a\nHEALTHCHECK --retries=x CMD x\n', 2, 'invalid number');
    expectError('FROM a\nHEALTHCHECK --every=1s CMD x\n', 2, 'unknown flag --every for HEALTHCHECK');
  });

  it('refuses ONBUILD and unknown instructions, naming the line', () => {
    expectError('FROM a\nONBUILD RUN x\n', 2, 'ONBUILD is not supported');
    expectError('FROM a\nRUN x\nFOO bar\n', 3, 'unknown instruction FOO');
    expectError('FROM a\ncopyy a b\n', 2, 'unknown instruction COPYY');
  });

  it('names the file given in options', () => {
    expectError('FROM a\nBAD\n', 2, 'unknown instruction BAD', 'docker/app.Dockerfile');
  });
});

describe('a whole Dockerfile', () => {
  it('splits stages and keeps instruction text and lines', () => {
    const df: Dockerfile = parseDockerfile(
      [
        '# syntax=docker/dockerfile:1.7',
        'ARG BASE=debian:12',
        'FROM $BASE AS build',
        'WORKDIR /src',
        'COPY . .',
        'RUN make \\',
        '    all',
        '',
        'FROM scratch',
        'COPY --from=build /src/out /app',
        'ENTRYPOINT ["/app"]',
      ].join('\n'),
    );
    expect(df.globalArgs).toHaveLength(1);
    expect(df.stages).toHaveLength(2);
    expect(df.stages[0]?.instructions.map((i) => [i.kind, i.line, i.text])).toEqual([
      ['workdir', 4, 'WORKDIR /src'],
      ['copy', 5, 'COPY . .'],
      ['run', 6, 'RUN make     all'],
    ]);
    expect(df.stages[1]).toMatchObject({ index: 1, line: 9, text: 'FROM scratch' });
  });
});
