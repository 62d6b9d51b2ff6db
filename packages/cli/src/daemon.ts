import { spawn } from 'node:child_process';
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { daemonSocketPath, isRoostError, RoostError, sleep, type SandboxStatus } from '@roost/api';
import { RoostClient, type Health } from '@roost/client';
import { HomeLock, isAlive, type HomeOwner } from '@roost/core/internal';

/*
 * The home's daemon as a long-lived owner: found on the home's socket,
 * started in the background when a command leaves behind something only a
 * live owner serves (`ensureDaemon`), reported and stopped by
 * `roost serve status|stop`. The daemon's pid is the one it answers
 * /v1/health with; the home's owner file (written with its lock, owner
 * `roost serve`) names it while it starts or when it does not answer.
 */

/** The `roost` command of this package, which the daemon is started as. */
const ROOST_BIN = fileURLToPath(new URL('../bin/roost.js', import.meta.url));

/** The owner string `roost serve` takes the home's lock with. */
const SERVE_OWNER = 'roost serve';

/** How long a health check may take before a daemon counts as slow (it still owns the home). */
export const PROBE_TIMEOUT_MS = 2_000;

/** How long a started daemon may take to answer on its socket (it recovers the home's sandboxes first). */
const START_TIMEOUT_MS = 60_000;

/** A log larger than this is moved to `daemon.log.1` when the next daemon starts. */
const LOG_ROTATE_BYTES = 8 << 20;

/** Sandboxes a daemon owns (the ones with a VM, or about to have one or to lose it). */
const LIVE: SandboxStatus[] = ['creating', 'running', 'paused', 'stopping'];

/** Where a daemon started by the CLI writes its output: `<home>/logs/daemon.log`. */
export function daemonLogPath(home: string): string {
  return join(home, 'logs', 'daemon.log');
}

/** False when `ROOST_AUTO_DAEMON` is 0 (or false, no, off): then no command starts a daemon. */
export function autoDaemonEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.ROOST_AUTO_DAEMON?.trim().toLowerCase();
  return !(v === '0' || v === 'false' || v === 'no' || v === 'off');
}

/** The home's daemon as its socket shows it: answering (with its health), or there but slow. */
export type HomeDaemon = { client: RoostClient; health: Health } | { client: RoostClient; health: null };

/**
 * Asks the daemon on the home's socket for its health. Null when no socket
 * is there or nobody listens on it (a daemon that died); a daemon that does
 * not answer in time is still the home's owner (health null). Other
 * failures (a refused token) are thrown. The caller closes the client.
 */
export async function probeHomeDaemon(home: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<HomeDaemon | null> {
  const socket = daemonSocketPath(home);
  if (!existsSync(socket)) return null;
  const client = new RoostClient({ home, host: `unix://${socket}` });
  try {
    return { client, health: await client.health({ timeoutMs }) };
  } catch (e) {
    if (isRoostError(e, 'TIMEOUT')) return { client, health: null };
    await client.close();
    if (!isRoostError(e, 'UNAVAILABLE')) throw e;
    return null;
  }
}

/** The home's holder when it is a `roost serve` alive on this machine (it may be starting, or listening elsewhere). */
function servingOwner(home: string): HomeOwner | null {
  const holder = HomeLock.owner(home);
  return holder && holder.owner === SERVE_OWNER && holder.hostname === hostname() && isAlive(holder.pid) ? holder : null;
}

/**
 * Waits for a daemon that holds the home (its lock taken, its socket not yet
 * there) to answer on the home's socket: a command that lost the home to a
 * daemon starting then talks to it. Null at once when no daemon holds the
 * home or it took the home more than `timeoutMs` ago (it is not starting: it
 * listens on another --socket), else when it does not answer in time.
 */
export async function waitForStartingDaemon(home: string, timeoutMs: number): Promise<RoostClient | null> {
  const holder = servingOwner(home);
  const since = holder ? Date.parse(holder.since) : NaN;
  if (!Number.isFinite(since)) return null;
  const deadline = Math.min(Date.now(), since) + timeoutMs;
  while (Date.now() < deadline && servingOwner(home)) {
    const found = await probeHomeDaemon(home);
    if (found) return found.client;
    await sleep(50);
  }
  return null;
}

/** What `ensureDaemon` found or did. */
export interface EnsuredDaemon {
  /** The daemon's pid (null when it was too slow to tell and the owner file did not). */
  pid: number | null;
  /** True when this call started it (and said so on stderr). */
  started: boolean;
  /** Where the daemons the CLI starts write their output (`<home>/logs/daemon.log`). */
  log: string;
}

/**
 * Makes sure a daemon owns `home`, so that what a command leaves behind
 * (`reason`: "published ports", "deployment web", "warm pool py") keeps being
 * served after the command exits. A daemon answering on the home's socket is
 * used as it is. Else `roost serve` is started for the home in the
 * background, in a session of its own (the terminal closing does not end
 * it), its output appended to `<home>/logs/daemon.log`, and this waits until
 * it answers on the home's socket, then says so once on stderr. The command
 * then goes through it (`connect` finds it on the socket).
 *
 * Two commands starting at once start two, and the home's lock lets one win:
 * the other exits at once, and its command waits for the winner and uses it
 * (without a message). Returns null, starting nothing, when
 * `ROOST_AUTO_DAEMON=0`: then the caller keeps the embedded runtime and its
 * note. Throws (naming the log) when the daemon exits before it answers, for
 * example because another command holds the home, or when it does not
 * answer within `timeoutMs`.
 */
export async function ensureDaemon(home: string, reason: string, options: { timeoutMs?: number; by?: string } = {}): Promise<EnsuredDaemon | null> {
  if (!autoDaemonEnabled()) return null;
  const log = daemonLogPath(home);
  const running = await probeHomeDaemon(home);
  if (running) {
    await running.client.close();
    return { pid: running.health?.pid ?? servingOwner(home)?.pid ?? null, started: false, log };
  }

  const child = startDaemonProcess(home, log, `${options.by ?? 'roost'} (pid ${process.pid}), for ${reason}`);
  const state: { ended: string | null } = { ended: null };
  child.process.once('exit', (code, signal) => (state.ended = signal ? `was killed by ${signal}` : `exited with status ${code}`));
  child.process.once('error', (e) => (state.ended = `could not be started: ${e.message}`));
  child.process.unref();

  const socket = daemonSocketPath(home);
  const deadline = Date.now() + (options.timeoutMs ?? START_TIMEOUT_MS);
  for (;;) {
    const found = await probeHomeDaemon(home);
    if (found) {
      await found.client.close();
      const pid = found.health?.pid ?? servingOwner(home)?.pid ?? null;
      const started = pid !== null && pid === child.process.pid;
      if (started) process.stderr.write(`roost: started a daemon for ${home} (pid ${pid}, log ${log}); stop it with roost serve stop\n`);
      return { pid, started, log };
    }
    if (state.ended !== null && !servingOwner(home)) {
      // Not a race lost to another command's daemon (that one holds the home, and is waited for): its own failure.
      const why = lastLogLine(log, child.logOffset);
      throw new RoostError(
        'UNAVAILABLE',
        `could not start a daemon for ${home} (needed for ${reason}): it ${state.ended}${why ? `: ${why}` : ''} (see ${log}; ROOST_AUTO_DAEMON=0 runs the command without one)`,
        { details: { home, log } },
      );
    }
    if (Date.now() >= deadline) {
      throw new RoostError(
        'TIMEOUT',
        `the daemon started for ${home} (pid ${child.process.pid}) did not answer on ${socket} within ${Math.round((options.timeoutMs ?? START_TIMEOUT_MS) / 1000)} s: see ${log} (it may still come up; \`roost serve status\` tells, \`roost serve stop\` stops it)`,
        { details: { home, log, ...(child.process.pid !== undefined ? { pid: child.process.pid } : {}) } },
      );
    }
    await sleep(50);
  }
}

/** Starts `roost serve` for `home`, detached, its output appended to `log` after a line saying why. */
function startDaemonProcess(home: string, log: string, why: string): { process: ReturnType<typeof spawn>; logOffset: number } {
  mkdirSync(dirname(log), { recursive: true, mode: 0o700 });
  try {
    if (statSync(log).size > LOG_ROTATE_BYTES) renameSync(log, `${log}.1`);
  } catch {
    // No log yet.
  }
  const fd = openSync(log, 'a', 0o600);
  try {
    const logOffset = fstatSync(fd).size;
    writeSync(fd, `--- ${new Date().toISOString()} roost serve started by ${why}\n`);
    const child = spawn(process.execPath, [ROOST_BIN, 'serve'], {
      // Its own session: no terminal's hangup or Ctrl-C reaches it, and the CLI can exit.
      detached: true,
      stdio: ['ignore', fd, fd],
      // Not the CLI's directory, which the daemon must not keep busy.
      cwd: home,
      env: { ...process.env, ROOST_HOME: home },
    });
    return { process: child, logOffset };
  } finally {
    closeSync(fd);
  }
}

/** The last line a daemon wrote to its log after `offset` (its failure, `roost: ...`), without the `roost: `. */
function lastLogLine(log: string, offset: number): string {
  let text = '';
  try {
    const fd = openSync(log, 'r');
    try {
      const buf = Buffer.alloc(64 << 10);
      const size = fstatSync(fd).size;
      const from = Math.max(offset, size - buf.length);
      text = buf.subarray(0, readSync(fd, buf, 0, buf.length, from)).toString('utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return '';
  }
  const lines = text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('--- '));
  return (lines.at(-1) ?? '').replace(/^roost( serve)?: /, '');
}

/** What `roost serve status` reports. */
export interface DaemonStatus {
  home: string;
  running: boolean;
  /** The daemon's pid (from its health, else from the home's owner file). */
  pid: number | null;
  /** `unix://<home>/roost.sock`. */
  socket: string;
  /** True when it answered on the socket; a running daemon that does not is starting, busy, or listening on another --socket. */
  answering: boolean;
  /** Its TCP listener, `http://host:port`, or null. */
  url: string | null;
  version: string | null;
  uptimeSeconds: number | null;
  /** The sandboxes it owns (with a VM), and how many of those are detached. */
  sandboxes: { live: number; detached: number } | null;
  /** The log of daemons the CLI started, when there is one. */
  log: string | null;
  /** Who else holds the home when no daemon does (an embedded `roost` command, a program). */
  heldBy: HomeOwner | null;
}

/** Finds the home's daemon and what it owns; `running` false when there is none. */
export async function daemonStatus(home: string): Promise<DaemonStatus> {
  const log = daemonLogPath(home);
  const status: DaemonStatus = {
    home,
    running: false,
    pid: null,
    socket: `unix://${daemonSocketPath(home)}`,
    answering: false,
    url: null,
    version: null,
    uptimeSeconds: null,
    sandboxes: null,
    log: existsSync(log) ? log : null,
    heldBy: null,
  };
  const found = await probeHomeDaemon(home);
  if (found) {
    try {
      status.running = true;
      if (found.health) {
        status.answering = true;
        status.pid = found.health.pid;
        status.url = found.health.url ?? null;
        status.version = found.health.version;
        status.uptimeSeconds = found.health.uptimeSeconds;
        const live = await found.client.list({ status: LIVE });
        status.sandboxes = { live: live.length, detached: live.filter((s) => s.detached).length };
      } else {
        status.pid = servingOwner(home)?.pid ?? null;
      }
    } finally {
      await found.client.close();
    }
    return status;
  }
  const serving = servingOwner(home);
  if (serving) {
    status.running = true;
    status.pid = serving.pid;
    return status;
  }
  const holder = HomeLock.owner(home);
  if (holder && (holder.hostname !== hostname() || isAlive(holder.pid))) status.heldBy = holder;
  return status;
}

/**
 * What the daemon keeps that ends with it, and that `roost serve stop`
 * refuses to end without --force: its deployments and warm pools, as
 * "deployment web", "pool py" (issue 19). Every deployment counts (its
 * replicas' workloads and its service ports are the daemon's, even at 0
 * replicas its ports are served); pools of size 0 need no owner and are
 * not counted.
 */
export async function workloadsKeptBy(client: RoostClient): Promise<string[]> {
  const [deployments, pools] = await Promise.all([
    // A daemon of a Roost without deployments answers 404 (no route): it keeps none.
    client.deployments.list().catch((e: unknown) => {
      if (isRoostError(e, 'NOT_FOUND')) return [];
      throw e;
    }),
    client.pools.list(),
  ]);
  return [...deployments.map((d) => `deployment ${d.name}`), ...pools.filter((p) => p.size > 0).map((p) => `pool ${p.name}`)];
}

/** What `stopDaemon` did. */
export interface StoppedDaemon {
  pid: number;
  /** Detached sandboxes left running (their networks and ports wait for the next owner of the home). */
  detached: number;
}

/**
 * `roost serve stop`: asks the home's daemon to stop (SIGTERM to its pid,
 * the signal `roost serve` shuts down gracefully on: streams end,
 * non-detached sandboxes stop, the lock is released, the socket removed) and
 * waits for the process to exit. Refuses while it keeps deployments or pools
 * (`workloadsKeptBy`) unless `force`; refuses to signal a process that is
 * not `roost serve` (a program that serves the home itself). Null when no
 * daemon runs.
 */
export async function stopDaemon(home: string, options: { timeoutMs: number; force?: boolean }): Promise<StoppedDaemon | null> {
  const status = await daemonStatus(home);
  if (!status.running) return null;
  const pid = status.pid;
  if (pid === null) {
    throw new RoostError(
      'UNAVAILABLE',
      `the daemon of ${home} does not answer on ${status.socket}, and the home's owner file does not name it: find it with \`ps\` and send it SIGTERM`,
    );
  }
  if (status.answering) {
    const found = await probeHomeDaemon(home);
    if (found) {
      try {
        const kept = await workloadsKeptBy(found.client);
        if (kept.length > 0 && !options.force) {
          throw new RoostError(
            'INVALID_STATE',
            `the daemon of ${home} keeps ${kept.join(', ')}, which nothing keeps filled or running once it stops: remove them first, or \`roost serve stop --force\``,
            { details: { kept } },
          );
        }
      } finally {
        await found.client.close();
      }
    }
  }
  const command = commandLine(pid);
  if (command !== null && !isRoostServe(command)) {
    throw new RoostError(
      'INVALID_STATE',
      `the daemon of ${home} runs inside pid ${pid} (${command.join(' ')}), not as \`roost serve\`: stop it in that program`,
      { details: { pid } },
    );
  }
  try {
    process.kill(pid, 'SIGTERM');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
  const deadline = Date.now() + options.timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() >= deadline) {
      throw new RoostError(
        'TIMEOUT',
        `the daemon of ${home} (pid ${pid}) did not exit within ${Math.round(options.timeoutMs / 1000)} s of SIGTERM: it may still be stopping sandboxes; wait, or end it now with \`kill -KILL ${pid}\``,
        { details: { pid } },
      );
    }
    await sleep(50);
  }
  return { pid, detached: status.sandboxes?.detached ?? 0 };
}

/** A process's arguments (null without /proc, or when it is gone). */
function commandLine(pid: number): string[] | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return null;
  }
}

/** `node .../roost.js serve ...` or `roost serve ...` (global options may stand between). */
function isRoostServe(argv: string[]): boolean {
  const bin = argv.findIndex((a) => /^roost(\.js)?$/.test(basename(a)));
  return bin >= 0 && argv.slice(bin + 1).includes('serve');
}
