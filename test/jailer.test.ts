import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from './helpers.js';

/*
 * host/jailer for real, as root: roost-jailer builds a jail (namespaces, a
 * read-only tmpfs root of bind mounts, its own uid/gid, no capabilities,
 * NoNewPrivs) around jail-probe, which prints what it sees from inside; the
 * fds the jailer opens as root arrive at their numbers; setup failures come
 * back as `error ...` on the report fd; the jailer dies as its child did.
 * roost-jail-preload.so is checked on a small glibc program, and the real
 * QEMU runs once jailed.
 */

const asRoot = process.getuid?.() === 0;
const SRC = fileURLToPath(new URL('../host/jailer', import.meta.url));
const UID = 61_234;
const GID = 61_235;

let work = '';
let out = '';
let probe = '';
const running = new Set<ChildProcess>();

interface JailRun {
  child: ChildProcess;
  /** Resolves with everything once the jailer exits. */
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; report: string }>;
  stdout: () => string;
  report: () => string;
  kv: () => Map<string, string>;
}

function parseKv(text: string): Map<string, string> {
  const kv = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) kv.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return kv;
}

/** Starts roost-jailer with `opts` around `program` (the probe by default), report on fd 3. */
function jail(opts: string[], args: string[] = [], program = probe): JailRun {
  const root = mkdtempSync(join(work, 'root-'));
  const child = spawn(join(out, 'roost-jailer'), ['--root', root, '--report', '3', ...opts, '--', program, ...args], {
    stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
  });
  running.add(child);
  let stdout = '';
  let stderr = '';
  let report = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const reportStream = child.stdio[3] as NodeJS.ReadableStream;
  reportStream.on('data', (c: Buffer) => (report += c.toString()));
  const reportEnd = new Promise<void>((resolve) => reportStream.on('end', resolve).on('close', resolve));
  const stdoutEnd = new Promise<void>((resolve) => child.stdout!.on('close', resolve));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  ).then(async (r) => {
    await Promise.all([reportEnd, stdoutEnd]);
    running.delete(child);
    rmdirSync(root);
    return { ...r, stdout, stderr, report };
  });
  return { child, done, stdout: () => stdout, report: () => report, kv: () => parseKv(stdout) };
}

const base = ['--uid', String(UID), '--gid', String(GID)];

/** The probe's host pid from the report fd, once the jailer has written it. */
async function reportedPid(run: JailRun): Promise<number> {
  await eventually(() => /^pid \d+\n/.test(run.report()), 10_000, 'the pid line');
  return Number(/^pid (\d+)/.exec(run.report())![1]);
}

function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe.skipIf(!asRoot)('roost-jailer (runs as root: skipped when not root)', () => {
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'roost-jailer-'));
    chmodSync(work, 0o755);
    out = join(work, 'build');
    execFileSync('make', ['-s', '-C', SRC, `OUT=${out}`], { stdio: 'inherit' });
    probe = join(out, 'jail-probe');
  });

  afterEach(() => {
    for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('runs the program as pid 1 of its own namespaces, as its uid/gid, without capabilities, in a root of only its binds', async () => {
    const ro = join(work, 'ro-dir');
    const rw = join(work, 'rw-dir');
    mkdirSync(ro);
    mkdirSync(rw);
    writeFileSync(join(ro, 'file'), 'x');
    chownSync(rw, UID, GID);
    const run = jail(
      [
        ...base,
        '--groups',
        '7,8',
        '--ro',
        probe,
        '--ro',
        ro,
        '--rw',
        rw,
        '--dev',
        '/dev/null',
        '--symlink',
        '/lib=usr/lib',
        '--hostname',
        'jailbox',
        '--nofile',
        '100',
        '--env',
        'A=1',
      ],
      [
        'exists:/etc',
        'exists:/root',
        'exists:/proc',
        `exists:${ro}/file`,
        'exists:/lib',
        `writable:${ro}`,
        `writable:${ro}/file`,
        `writable:${rw}`,
        'writable:/',
        'writable:/dev/null',
        'exit:3',
      ],
    );
    const r = await run.done;
    expect(r.code, r.stderr).toBe(3);
    expect(r.report).toMatch(/^pid \d+\n$/);
    const kv = parseKv(r.stdout);
    expect(kv.get('done')).toBe('1');
    expect(kv.get('uid')).toBe(`${UID},${UID},${UID}`);
    expect(kv.get('gid')).toBe(`${GID},${GID},${GID}`);
    expect(kv.get('groups')).toBe('7,8');
    for (const set of ['CapEff', 'CapPrm', 'CapInh', 'CapAmb', 'CapBnd']) expect(kv.get(set), set).toMatch(/^0+$/);
    expect(kv.get('NoNewPrivs')).toBe('1');
    expect(kv.get('Seccomp')).toBe('0');
    expect(kv.get('pid')).toBe('1');
    expect(kv.get('hostname')).toBe('jailbox');
    expect(kv.get('cwd')).toBe('/');
    // Only what was bound or linked: the first components of the paths, /dev and /lib.
    const top = [...new Set([probe, ro, rw].map((p) => p.split('/')[1]))];
    expect(kv.get('root')!.split(',')).toEqual([...top, 'dev', 'lib'].sort());
    expect(kv.get('exists:/etc')).toBe('0');
    expect(kv.get('exists:/root')).toBe('0');
    expect(kv.get('exists:/proc')).toBe('0');
    expect(kv.get(`exists:${ro}/file`)).toBe('1');
    expect(kv.get('exists:/lib')).toBe('1');
    expect(kv.get(`writable:${ro}`)).toBe('0');
    expect(kv.get(`writable:${ro}/file`)).toBe('0');
    expect(kv.get(`writable:${rw}`)).toBe('1');
    expect(kv.get('writable:/')).toBe('0');
    expect(kv.get('writable:/dev/null')).toBe('1');
    // Only 0-2 (what the parent gave it): not the report fd, not the jailer's own.
    expect(kv.get('fds')).toBe('0,1,2');
    expect(kv.get('nofile')).toBe('100,100');
    expect(kv.get('core')).toBe('0,0');
    expect(kv.get('umask')).toBe('077');
  });

  it('passes the fds it opened as root at their numbers, with their access modes; a listening socket takes connections from the host', async () => {
    const roFile = join(work, 'fd-ro');
    const rwFile = join(work, 'fd-rw');
    const log = join(work, 'fd-log');
    const sock = join(work, 'fd.sock');
    const tap = `rjt${process.pid % 100_000}`;
    writeFileSync(roFile, 'ro\n', { mode: 0o600 });
    writeFileSync(rwFile, 'rw\n', { mode: 0o600 });
    const run = jail(
      [
        ...base,
        '--ro',
        probe,
        '--fd',
        `5:ro:${roFile}`,
        '--fd',
        `6:rw:${rwFile}`,
        '--fd',
        `7:append:${log}`,
        '--fd',
        `9:listen:${sock}`,
        '--fd',
        `63:tap:${tap}`,
      ],
      ['write:5', 'write:6', 'write:7', 'wait'],
    );
    const pid = await reportedPid(run);
    await eventually(() => run.kv().get('waiting') === '1', 10_000, 'the probe waiting');
    // The reported pid is the probe's, seen from the host: pid 1 in its own namespace.
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/^NSpid:\s+\d+\s+1$/m);
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/^CapEff:\s+0+$/m);
    expect(statSync(sock).mode & 0o777).toBe(0o600);
    await new Promise<void>((resolve, reject) => {
      const c = connect(sock, () => {
        c.destroy();
        resolve();
      });
      c.on('error', reject);
    });
    run.child.stdin!.end();
    const r = await run.done;
    expect(r.code, r.stderr).toBe(0);
    const kv = parseKv(r.stdout);
    expect(kv.get('fds')).toBe('0,1,2,5,6,7,9,63');
    expect(kv.get('fd.5')).toBe('rdonly,reg');
    expect(kv.get('fd.6')).toBe('rdwr,reg');
    expect(kv.get('fd.7')).toBe('wronly,reg,append');
    expect(kv.get('fd.9')).toBe('rdwr,sock');
    expect(kv.get('fd.63')).toBe('rdwr,chr');
    expect(kv.get('write:5')).toBe('Bad file descriptor');
    expect(kv.get('write:6')).toBe('ok');
    expect(kv.get('write:7')).toBe('ok');
    expect(readFileSync(roFile, 'utf8')).toBe('ro\n');
    expect(readFileSync(rwFile, 'utf8')).toBe('probe\n');
    expect(readFileSync(log, 'utf8')).toBe('probe\n');
    expect(statSync(log).mode & 0o777).toBe(0o600);
    // The TAP device lived only as long as its fd.
    expect(existsSync(`/sys/class/net/${tap}`)).toBe(false);
  });

  it('keeps a capability it is asked to keep, as an ambient one', async () => {
    const r = await jail([...base, '--ro', probe, '--keep-cap', 'dac_override']).done;
    expect(r.code, r.stderr).toBe(0);
    const kv = parseKv(r.stdout);
    for (const set of ['CapEff', 'CapPrm', 'CapInh', 'CapAmb', 'CapBnd']) expect(kv.get(set), set).toBe('0000000000000002');
    expect(kv.get('NoNewPrivs')).toBe('1');
  });

  it('reports a failing setup as `error ...` and exits non-zero', async () => {
    const missing = await jail([...base, '--ro', join(work, 'nonexistent')]).done;
    expect(missing.code).toBe(126);
    expect(missing.report).toMatch(/^pid \d+\nerror bind source .*nonexistent: No such file or directory\n$/);
    expect(missing.stderr).toContain('roost-jailer: bind source');

    const root = await jail(['--uid', '0', '--gid', String(GID), '--ro', probe]).done;
    expect(root.code).toBe(2);
    expect(root.report).toMatch(/^error usage: --uid '0': a non-zero decimal uid\n$/);

    const dir = await jail([...base, '--ro', probe, '--fd', `5:ro:${work}`]).done;
    expect(dir.code).toBe(1);
    expect(dir.report).toBe(`error --fd 5: ${work} is not a regular file\n`);

    const notSock = join(work, 'not-a-socket');
    writeFileSync(notSock, 'keep me');
    const sock = await jail([...base, '--ro', probe, '--fd', `5:listen:${notSock}`]).done;
    expect(sock.code).toBe(1);
    expect(sock.report).toMatch(/^error --fd 5: .* exists and is not a socket: File exists\n$/);
    expect(readFileSync(notSock, 'utf8')).toBe('keep me');

    const noProgram = await jail([...base], [], '/nonexistent').done;
    expect(noProgram.code).toBe(126);
    expect(noProgram.report).toMatch(/^pid \d+\nerror execve \/nonexistent: No such file or directory\n$/);
  });

  it('dies by SIGKILL when its child is killed by SIGKILL', async () => {
    const run = jail([...base, '--ro', probe], ['wait']);
    const pid = await reportedPid(run);
    await eventually(() => run.kv().get('waiting') === '1', 10_000, 'the probe waiting');
    process.kill(pid, 'SIGKILL');
    const r = await run.done;
    expect(r.signal).toBe('SIGKILL');
  });

  it('exits with the program (--die-with-parent: and the program dies with it) when its parent dies', async () => {
    const report = join(work, 'dwp-report');
    const root = mkdtempSync(join(work, 'root-'));
    // sh starts the jailer in the background, prints its pid and becomes `sleep`: the jailer's parent.
    const sh = spawn(
      'sh',
      [
        '-c',
        '"$@" 3>"$REPORT" & echo $!; exec sleep 60',
        'sh',
        join(out, 'roost-jailer'),
        '--root',
        root,
        '--report',
        '3',
        ...base,
        '--die-with-parent',
        '--ro',
        probe,
        '--',
        probe,
        'sleep:60',
      ],
      { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, REPORT: report } },
    );
    running.add(sh);
    let shOut = '';
    sh.stdout.on('data', (c: Buffer) => (shOut += c.toString()));
    await eventually(() => /^\d+\n/.test(shOut), 10_000, 'the jailer pid');
    const jailerPid = Number(shOut.trim().split('\n')[0]);
    await eventually(() => existsSync(report) && /^pid \d+\n/.test(readFileSync(report, 'utf8')), 10_000, 'the pid line');
    const probePid = Number(/^pid (\d+)/.exec(readFileSync(report, 'utf8'))![1]);
    expect(alive(jailerPid) && alive(probePid)).toBe(true);
    sh.kill('SIGKILL');
    await eventually(() => !alive(jailerPid) && !alive(probePid), 10_000, 'the jailer and the probe gone');
    running.delete(sh);
    rmdirSync(root);
  });

  it('joins the cgroups it is given before the fork (v1 through `tasks`, v2 through cgroup.procs)', async () => {
    const v1 = existsSync('/sys/fs/cgroup/pids/cgroup.procs');
    const name = `roost-jailer-test-${process.pid}`;
    // A v1 host often has the v2 hierarchy mounted beside (as this machine does): both ways of joining are tried.
    const parents = v1 ? ['/sys/fs/cgroup/pids', ...(existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? ['/sys/fs/cgroup/unified'] : [])] : ['/sys/fs/cgroup'];
    const dirs = parents.map((p) => join(p, name));
    for (const dir of dirs) mkdirSync(dir);
    try {
      const run = jail([...base, '--ro', probe, ...dirs.flatMap((d) => ['--cgroup', d])], ['wait']);
      const pid = await reportedPid(run);
      const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
      if (v1) expect(cgroups).toMatch(new RegExp(`^\\d+:pids:/${name}$`, 'm'));
      if (dirs.length > 1 || !v1) expect(cgroups).toMatch(new RegExp(`^0::/${name}$`, 'm'));
      for (const dir of dirs) {
        // The program and the jailer (which joined before the fork) are in each, whole.
        const procs = readFileSync(join(dir, 'cgroup.procs'), 'utf8').trim().split('\n').map(Number);
        expect(procs.sort()).toEqual([run.child.pid!, pid].sort());
      }
      run.child.stdin!.end();
      expect((await run.done).code).toBe(0);
    } finally {
      for (const dir of dirs) {
        await eventually(
          () => {
            try {
              rmdirSync(dir);
              return true;
            } catch {
              return false;
            }
          },
          10_000,
          'the test cgroup removed',
        );
      }
    }
  });

  it('roost-jail-preload.so hands a mapped path out as the read-only fd it was given', async () => {
    const src = join(work, 'open-rw.c');
    const bin = join(work, 'open-rw');
    writeFileSync(
      src,
      `#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		int fd = i == 1 ? open(argv[i], O_RDWR) : openat(AT_FDCWD, argv[i], O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			printf("%s=open %s\\n", argv[i], strerror(errno));
			continue;
		}
		int acc = fcntl(fd, F_GETFL) & O_ACCMODE;
		ssize_t n = write(fd, "x", 1);
		char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		int mapped = m != MAP_FAILED;
		if (mapped)
			m[0] = 'y';
		printf("%s=%s,%s,%s,%s\\n", argv[i], acc == O_RDONLY ? "rdonly" : acc == O_RDWR ? "rdwr" : "wronly",
		       n == 1 ? "written" : strerror(errno), mapped ? "mapped" : "unmapped",
		       fcntl(fd, F_GETFD) & FD_CLOEXEC ? "cloexec" : "inherit");
	}
	return 0;
}
`,
    );
    execFileSync('gcc', ['-O1', '-o', bin, src]);
    const image = join(work, 'ram-image');
    const other = join(work, 'other-file');
    writeFileSync(image, Buffer.alloc(4096, 'a'));
    writeFileSync(other, Buffer.alloc(4096, 'b'));
    const fd = openSync(image, 'r');
    try {
      const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const c = spawn(bin, [image, image, other], {
          stdio: ['ignore', 'pipe', 'pipe', 'ignore', 'ignore', fd],
          env: { LD_PRELOAD: join(out, 'roost-jail-preload.so'), ROOST_JAIL_OPEN: `/unused=9\n${image}=5\n` },
        });
        let stdout = '';
        let stderr = '';
        c.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
        c.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
        c.on('close', (code) => resolve({ code, stdout, stderr }));
      });
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n');
      expect(lines).toEqual([
        `${image}=rdonly,Bad file descriptor,mapped,inherit`,
        `${image}=rdonly,Bad file descriptor,mapped,cloexec`,
        `${other}=rdwr,written,mapped,cloexec`,
      ]);
      expect(readFileSync(image)).toEqual(Buffer.alloc(4096, 'a'));
    } finally {
      closeSync(fd);
    }
  });

  it('runs the real QEMU jailed, with the preload', async () => {
    const image = join(work, 'qemu-ram');
    writeFileSync(image, '');
    const r = await jail(
      [
        ...base,
        '--ro',
        '/usr',
        '--symlink',
        '/lib=usr/lib',
        '--symlink',
        '/lib64=usr/lib64',
        '--symlink',
        '/bin=usr/bin',
        '--ro',
        out,
        '--fd',
        `5:ro:${image}`,
        '--env',
        `LD_PRELOAD=${join(out, 'roost-jail-preload.so')}`,
        '--env',
        `ROOST_JAIL_OPEN=${image}=5`,
      ],
      ['--version'],
      '/usr/bin/qemu-system-x86_64',
    ).done;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^QEMU emulator version \d+\.\d+/);
  });
});
