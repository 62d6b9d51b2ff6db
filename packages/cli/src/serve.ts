import { Command, InvalidArgumentError } from 'commander';
import { apiTokenPath, DEFAULT_TCP_PORT } from '@roost/api';
import { roostHome } from '@roost/core';
import { serve, type ServeOptions } from '@roost/server';
import { daemonStatus, stopDaemon, type DaemonStatus } from './daemon.js';
import { closeOnSignal } from './lifetime.js';

/** `roost serve status`'s exit status when no daemon runs (as `systemctl status` reports an inactive unit). */
export const EXIT_NOT_RUNNING = 3;

interface ServeFlags {
  tcp?: string | true;
  socket?: string;
  maxConcurrentCreates?: number;
  maxSandboxes?: number;
  maxInFlight?: number;
  sessionGrace?: number;
  e2bDomain?: string;
}

/** Parses `--tcp [host:]port` (`[::1]:7423` for IPv6; a bare `--tcp` is 127.0.0.1:7423). */
export function parseTcpAddress(value: string | true): { host: string; port: number } {
  if (value === true) return { host: '127.0.0.1', port: DEFAULT_TCP_PORT };
  const m = /^(?:\[([^\]]+)\]:|([^:]+):)?(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new InvalidArgumentError(`--tcp takes [host:]port (for example 7423, 0.0.0.0:7423 or [::1]:7423), not "${value}"`);
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}

function positiveInt(flag: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} takes a positive whole number, not "${v}"`);
    return n;
  };
}

/** "42s", "5m 3s", "2h 10m", "3d 4h". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** `roost serve status` as a person reads it. */
export function formatStatus(st: DaemonStatus): string {
  if (!st.running) {
    const by = st.heldBy;
    // Commands name themselves with their pid (`roost run (pid 42)`).
    const held = by ? `\n  the home is held by ${by.owner}${by.owner.includes(`pid ${by.pid}`) ? '' : ` (pid ${by.pid})`}, since ${by.since}` : '';
    return `roost serve: not running for ${st.home}${held}\n`;
  }
  const rows: [string, string][] = [
    ['pid', st.pid === null ? '-' : String(st.pid)],
    ['socket', st.answering ? st.socket : `${st.socket} (not answering: starting, busy, or listening on another --socket)`],
    ['tcp', st.url ?? '-'],
  ];
  if (st.uptimeSeconds !== null) rows.push(['uptime', duration(st.uptimeSeconds)]);
  if (st.sandboxes) rows.push(['sandboxes', `${st.sandboxes.live} (${st.sandboxes.detached} detached)`]);
  if (st.version) rows.push(['version', st.version]);
  if (st.log) rows.push(['log', st.log]);
  return `roost serve: running for ${st.home}\n` + rows.map(([k, v]) => `  ${`${k}:`.padEnd(11)}${v}\n`).join('');
}

/**
 * Registers `roost serve`: runs the daemon on this home until SIGINT or
 * SIGTERM, then closes it gracefully (streams end, non-detached sandboxes
 * stop, the home's lock is released); and `roost serve status|stop`, which
 * find the daemon of the home ($ROOST_HOME, whatever --host says).
 */
export function addServeCommand(program: Command, setExit: (code: number) => void): Command {
  const command = program
    .command('serve')
    .description(
      'run the Roost daemon: the REST API on a unix socket in the home (and on TCP with --tcp), until SIGINT or SIGTERM; `roost run -d` with ports or a network starts one in the background when none runs (ROOST_AUTO_DAEMON=0: never)',
    )
    .option(
      '--tcp [address]',
      `also listen on TCP, [host:]port (default 127.0.0.1:${DEFAULT_TCP_PORT}; port 0 picks a free one); every request needs the token`,
    )
    .option('--socket <path>', 'the unix socket (default: roost.sock in the Roost home)')
    .option('--max-concurrent-creates <n>', 'sandboxes booting at once (more are answered 429)', positiveInt('--max-concurrent-creates'))
    .option('--max-sandboxes <n>', 'sandboxes with a VM at once (more are answered 429)', positiveInt('--max-sandboxes'))
    .option('--max-in-flight <n>', 'requests handled at once, streams included (more are answered 503; default 256)', positiveInt('--max-in-flight'))
    .option(
      '--session-grace <ms>',
      "how long a client's sandboxes that are not detached outlive its connection, for it to reconnect (default 5000)",
      positiveInt('--session-grace'),
    )
    .option(
      '--e2b-domain <domain>',
      "the domain of E2B's sandbox hosts, routed on the TCP listener: sandbox.getHost(port) is <port>-<id>.<domain> (default localhost:<tcp port>; see docs/e2b.md)",
    )
    .action(async (flags: ServeFlags) => {
      const options: ServeOptions = { limits: {} };
      if (flags.tcp !== undefined) options.tcp = parseTcpAddress(flags.tcp);
      if (flags.socket) options.socket = flags.socket;
      if (flags.maxConcurrentCreates !== undefined) options.limits!.maxConcurrentCreates = flags.maxConcurrentCreates;
      if (flags.maxSandboxes !== undefined) options.limits!.maxSandboxes = flags.maxSandboxes;
      if (flags.maxInFlight !== undefined) options.limits!.maxInFlight = flags.maxInFlight;
      if (flags.sessionGrace !== undefined) options.limits!.sessionGraceMs = flags.sessionGrace;
      if (flags.e2bDomain !== undefined) options.e2b = { domain: flags.e2bDomain };

      // Signals are handled from before the socket exists: one that comes while
      // it starts closes the daemon once it has started.
      const starting = serve(options);
      const closed = closeOnSignal('roost serve', async () => (await starting).close());
      const daemon = await starting;
      process.stderr.write(`roost serve: home ${daemon.home}\n`);
      process.stderr.write(`roost serve: listening on unix://${daemon.socketPath}\n`);
      if (daemon.url) process.stderr.write(`roost serve: listening on ${daemon.url}\n`);
      if (daemon.e2bDomain) process.stderr.write(`roost serve: E2B sandbox hosts: <port>-<sandbox id>.${daemon.e2bDomain}\n`);
      process.stderr.write(`roost serve: bearer token in ${apiTokenPath(daemon.home)}\n`);

      await closed;
    });

  command
    .command('status')
    .description(`is a daemon running for the Roost home: its pid, socket, TCP address, uptime and sandboxes (exit ${EXIT_NOT_RUNNING} when none runs)`)
    .option('--json', 'print JSON')
    .action(async (flags: { json?: boolean }) => {
      const st = await daemonStatus(roostHome());
      process.stdout.write(flags.json ? JSON.stringify(st, null, 2) + '\n' : formatStatus(st));
      if (!st.running) setExit(EXIT_NOT_RUNNING);
    });

  command
    .command('stop')
    .description("stop the Roost home's daemon gracefully (SIGTERM) and wait for it to exit; detached sandboxes keep running")
    .option('-t, --timeout <ms>', 'how long to wait for it to exit', positiveInt('--timeout'), 30_000)
    .option(
      '-f, --force',
      'stop it even while it keeps deployments or warm pools (nothing restarts their replicas, serves their ports or refills the pools until a roost process owns the home again)',
    )
    .action(async (flags: { timeout: number; force?: boolean }) => {
      const home = roostHome();
      const stopped = await stopDaemon(home, { timeoutMs: flags.timeout, ...(flags.force ? { force: true } : {}) });
      if (!stopped) {
        process.stderr.write(`roost serve: no daemon runs for ${home}\n`);
        return;
      }
      process.stderr.write(`roost serve: stopped the daemon of ${home} (pid ${stopped.pid})\n`);
      if (stopped.detached > 0) {
        process.stderr.write(
          `roost serve: ${stopped.detached} detached sandbox${stopped.detached === 1 ? '' : 'es'} run on, without their networks and published ports until a roost process owns the home again\n`,
        );
      }
    });

  return command;
}
