import { Command, InvalidArgumentError } from 'commander';
import { apiTokenPath, DEFAULT_TCP_PORT } from '@roost/api';
import { serve, type ServeOptions } from '@roost/server';

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

/**
 * Registers `roost serve`: runs the daemon on this home until SIGINT or
 * SIGTERM, then closes it gracefully (streams end, non-detached sandboxes
 * stop, the home's lock is released).
 */
export function addServeCommand(program: Command): Command {
  return program
    .command('serve')
    .description('run the Roost daemon: the REST API on a unix socket in the home (and on TCP with --tcp), until SIGINT or SIGTERM')
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

      const daemon = await serve(options);
      process.stderr.write(`roost serve: home ${daemon.home}\n`);
      process.stderr.write(`roost serve: listening on unix://${daemon.socketPath}\n`);
      if (daemon.url) process.stderr.write(`roost serve: listening on ${daemon.url}\n`);
      if (daemon.e2bDomain) process.stderr.write(`roost serve: E2B sandbox hosts: <port>-<sandbox id>.${daemon.e2bDomain}\n`);
      process.stderr.write(`roost serve: bearer token in ${apiTokenPath(daemon.home)}\n`);

      await new Promise<void>((resolve) => {
        let closing = false;
        const onSignal = (signal: NodeJS.Signals) => {
          if (closing) {
            // A second signal: the user wants out now.
            process.stderr.write(`roost serve: ${signal} again, exiting\n`);
            process.exit(130);
          }
          closing = true;
          process.stderr.write(`roost serve: ${signal}, shutting down\n`);
          daemon.close().then(
            () => resolve(),
            (e: unknown) => {
              process.stderr.write(`roost serve: closing failed: ${e instanceof Error ? e.message : String(e)}\n`);
              resolve();
            },
          );
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
      });
    });
}
