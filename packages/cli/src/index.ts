import { stat } from 'node:fs/promises';
import { Command, Option } from 'commander';
import {
  EVENT_TYPES,
  isRoostError,
  POOL_LABEL,
  RoostError,
  sleep,
  type CommandHandleApi,
  type EventType,
  type ExpiryAction,
  type ListFilter,
  type NetworkStats,
  type PullPolicy,
  type RunOptions,
  type SandboxApi,
  type SandboxInfo,
  type SandboxStatus,
} from '@roost/api';
import { roostHome, setup } from '@roost/core';
import { connect, connectImages, connectVolumes, consoleLogPath, copyFrom, runDoctor, type Face, type WithFace, type WithImages } from './connect.js';
import { addBuildCommand } from './build.js';
import { addCpCommand } from './cp.js';
import { ensureDaemon } from './daemon.js';
import { addDoctorCommand } from './doctor.js';
import { namingFlag, reportError } from './errors.js';
import { addImageCommands, pullProgressPrinter } from './images.js';
import { addPushCommand } from './push.js';
import { addE2bCommands } from './e2b.js';
import { addMcpCommand } from './mcp.js';
import { addServeCommand } from './serve.js';
import { addSnapshotCommands } from './snapshots.js';
import { addPoolCommands } from './pools.js';
import { addDeploymentCommands } from './deployments.js';
import { addActorCommands } from './actors.js';
import { addVolumeCommands, parseVolumeFlag, type WithVolumes } from './volumes.js';
import { ago, describeEvent, formatTable } from './format.js';
import { guardOutput, Interrupted, Lifetime } from './lifetime.js';
import { int, parsePairs } from './args.js';
import {
  addNetworkFlags,
  addPortCommands,
  announceChosenPorts,
  embeddedPortsNote,
  formatPorts,
  networkOptions,
  networkRows,
  ownerNeededFor,
  type NetworkFlags,
} from './network.js';

export { extractArchive, parseLocation, type ExtractOptions } from './cp.js';
export { reportError } from './errors.js';

/** Exit status when `--timeout` killed the command (as timeout(1) reports it). */
const EXIT_TIMEOUT = 124;

const LIVE: SandboxStatus[] = ['creating', 'running', 'paused', 'stopping'];
const STATUSES: SandboxStatus[] = ['creating', 'running', 'paused', 'stopping', 'stopped', 'failed'];

interface ExecFlags {
  env: string[];
  workdir?: string;
  user?: string;
  tty?: boolean;
  interactive?: boolean;
  timeout?: number;
}

/** Runs the CLI; resolves with the process exit code. */
export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  // A reader of the output that is gone ends the CLI quietly (`roost ps | head -1`).
  guardOutput();
  const program = new Command('roost')
    .description('Run untrusted code in hardware-isolated Linux microVMs')
    .version('0.1.0')
    .option(
      '-H, --host <url>',
      "talk to the daemon at this address (unix:///path/to/roost.sock, http://HOST:PORT; default $ROOST_HOST, else the home's daemon if one runs, else embedded)",
    )
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  const hostOption = () => {
    const host = (program.opts() as { host?: string }).host;
    return host ? { host } : {};
  };
  /**
   * Makes sure a daemon owns the home, for what a command leaves behind
   * (`reason`), unless the user named the daemon to use (--host, ROOST_HOST):
   * see `ensureDaemon` (ROOST_AUTO_DAEMON=0 opts out).
   */
  const ensureOwner = async (reason: string, by: string): Promise<void> => {
    if (hostOption().host || process.env.ROOST_HOST) return;
    await ensureDaemon(roostHome(), reason, { by });
  };
  const withFace: WithFace = async (command, fn, options) => {
    const face = await connect({ ...hostOption(), command, ...options });
    try {
      return await fn(face);
    } finally {
      await face.close();
    }
  };
  const withVolumes: WithVolumes = async (fn) => {
    const face = await connectVolumes(hostOption());
    try {
      return await fn(face.volumes);
    } finally {
      await face.close();
    }
  };
  const withImages: WithImages = async (fn) => {
    const face = await connectImages(hostOption());
    try {
      return await fn(face);
    } finally {
      await face.close();
    }
  };

  program
    .command('setup')
    .description('install the Debian packages Roost needs and build the guest kernel, agent and root filesystem')
    .option('--no-install', 'do not install missing packages (report them instead)')
    .action(async (flags: { install: boolean }) => {
      await setup({ installPackages: flags.install, progress: (line) => process.stderr.write(`${line}\n`) });
    });

  const run = program
    .command('run')
    .description('create a sandbox and run a command in it (the exit code passes through); with an image, its Entrypoint and Cmd apply')
    .usage('[options] [IMAGE] [-- CMD [ARG...]]')
    .option('-d, --detach', 'leave the sandbox running and print its id')
    .option('--cpus <n>', 'virtual CPUs', int('--cpus'), 1)
    .option('-m, --memory <MiB>', 'guest memory in MiB', int('--memory'), 256)
    .option('--disk <MiB>', 'size of the writable disk in MiB (sparse)', int('--disk'))
    .option('-l, --label <K=V>', 'set a label (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option(
      '-v, --volume <SRC:DST[:ro]>',
      'mount a host directory or a named volume (created on first use) at DST in the guest; :ro for read-only (repeatable)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .addOption(new Option('--pull <policy>', 'pull the image: missing, always or never').choices(['missing', 'always', 'never']).default('missing'))
    .addOption(
      new Option('--snapshot <name>', 'restore this snapshot (name or id) instead of booting: its image, CPUs, memory and disk').conflicts([
        'template',
        'pool',
      ]),
    )
    .addOption(new Option('--template <name>', "start from this template's warm snapshot (built on first use)").conflicts('pool'))
    .option('--pool <name>', 'take a ready sandbox from this warm pool (`roost pool create`); restored from its source when the pool is empty')
    .option('--boot-timeout <ms>', 'how long the boot (or restore) may take', int('--boot-timeout'))
    .option('--lifetime <ms>', 'end the sandbox this long after it is created (with -d: later `roost` commands see it go)', int('--lifetime'))
    .addOption(new Option('--on-expiry <action>', 'what the end of --lifetime does: remove (default), stop or pause').choices(['remove', 'stop', 'pause']));
  addNetworkFlags(run);
  addExecFlags(run)
    .passThroughOptions()
    .argument('[args...]')
    .action(
      async (
        args: string[],
        flags: ExecFlags &
          NetworkFlags & {
            detach?: boolean;
            cpus: number;
            memory: number;
            disk?: number;
            label: string[];
            volume: string[];
            pull: PullPolicy;
            snapshot?: string;
            template?: string;
            pool?: string;
            bootTimeout?: number;
            lifetime?: number;
            onExpiry?: ExpiryAction;
          },
      ) => {
        const restore = flags.snapshot !== undefined || flags.template !== undefined || flags.pool !== undefined;
        let { image, cmd: given } = splitRunArgs(args, argv);
        if (restore && image !== undefined) {
          // The snapshot, template or pool has the image: the arguments are the command (`run --snapshot NAME CMD...`).
          const from = flags.snapshot !== undefined ? '--snapshot' : flags.template !== undefined ? '--template' : '--pool';
          if (args.includes('--'))
            throw new RoostError('INVALID_ARGUMENT', `${from} brings its own image: give no IMAGE (${image}): roost run ${from} NAME [--] CMD [ARG...]`);
          given = [image, ...given];
          image = undefined;
        }
        // A restored sandbox has the snapshot's (or template's) CPUs and memory: only values given here go to the runtime (which refuses them).
        const passed = (name: string) => !restore || run.getOptionValueSource(name) === 'cli';
        const env = parseEnv(flags.env);
        const labels = parsePairs(flags.label, '-l');
        const volumes = flags.volume.map((v) => parseVolumeFlag(v));
        const network = networkOptions(flags);
        // A detached sandbox's ports and network are served by its owner: one that outlives this CLI.
        const ownerNeeded = flags.detach ? ownerNeededFor(flags) : null;
        if (ownerNeeded !== null) await ensureOwner(ownerNeeded, 'roost run -d');
        // Whatever ends this CLI early (a signal, the terminal closing, a reader of its output gone) removes what it made.
        using life = new Lifetime();
        await withFace(
          'run',
          async (face) => {
            const sandbox = await namingFlag('--boot-timeout', () =>
              face.runtime.create({
                signal: life.signal,
                // Embedded, a SIGKILLed CLI leaves it to the next runtime to remove; through a daemon, to its client session's end.
                ...(flags.detach ? {} : { autoRemove: true }),
                ...(passed('cpus') ? { cpus: flags.cpus } : {}),
                ...(passed('memory') ? { memoryMiB: flags.memory } : {}),
                ...(flags.snapshot !== undefined ? { snapshot: flags.snapshot } : {}),
                ...(flags.template !== undefined ? { template: flags.template } : {}),
                ...(flags.pool !== undefined ? { pool: flags.pool } : {}),
                detached: !!flags.detach,
                ...(Object.keys(labels).length > 0 ? { labels } : {}),
                ...(volumes.length > 0 ? { volumes } : {}),
                ...network,
                ...(image ? { image, pull: flags.pull } : {}),
                ...(flags.disk !== undefined ? { diskSizeMiB: flags.disk } : {}),
                ...(flags.bootTimeout !== undefined ? { timeoutMs: flags.bootTimeout } : {}),
                ...(flags.lifetime !== undefined ? { lifetimeMs: flags.lifetime } : {}),
                ...(flags.onExpiry !== undefined ? { onExpiry: flags.onExpiry } : {}),
                ...(image ? { onPullProgress: pullProgressPrinter() } : {}),
              }),
            ).catch((e: unknown) => life.rethrow(e));
            // With an image, Docker's rule: the Entrypoint, then the given command or else the image's Cmd.
            // From a snapshot, template or pool, the given command runs as it is: the sandbox was set up before it was saved.
            const img = restore ? undefined : sandbox.info.image;
            const cmd = img ? [...img.entrypoint, ...(given.length > 0 ? given : img.cmd)] : given;
            if (!flags.detach && cmd.length === 0) {
              await sandbox.remove({ force: true });
              throw new RoostError(
                'INVALID_ARGUMENT',
                image
                  ? `image ${image} has no Entrypoint or Cmd: give a command: roost run ${image} -- CMD [ARG...]`
                  : 'give a command to run: roost run [options] [IMAGE] -- CMD [ARG...]',
              );
            }
            if (flags.detach) {
              if (cmd.length > 0) {
                // The command outlives this CLI: it runs in the background with its output on the console (`roost logs`).
                await sandbox.commands.run(['/bin/sh', '-c', '"$@" </dev/null >/dev/console 2>&1 &', 'roost-main', ...cmd], execOptions(flags, env));
              }
              // A detached sandbox outlives the runtime (or client) closed after this.
              process.stdout.write(`${sandbox.id}\n`);
              if (ownerNeeded !== null) embeddedPortsNote(face);
              return;
            }
            announceChosenPorts(flags.publish, sandbox.info.network?.ports ?? []);
            try {
              exitCode = await runAttached(sandbox, cmd, flags, env, life);
            } finally {
              await sandbox.remove({ force: true });
            }
            // Embedded, the pool refills while the command runs (what is not done when this CLI ends, the next owner of the home does).
          },
          { reconcile: flags.pool !== undefined },
        );
      },
    );

  addExecFlags(program.command('exec').description('run a command in a running sandbox').usage('[options] ID -- CMD [ARG...]'))
    .passThroughOptions()
    .argument('<id>')
    .argument('<cmd...>')
    .action(async (id: string, cmd: string[], flags: ExecFlags) => {
      // With passThroughOptions, a `--` after ID reaches us as an argument.
      if (cmd[0] === '--') cmd = cmd.slice(1);
      if (cmd.length === 0) throw new RoostError('INVALID_ARGUMENT', 'give a command to run: roost exec ID -- CMD [ARG...]');
      const env = parseEnv(flags.env);
      using life = new Lifetime();
      await withFace('exec', async (face) => {
        const sandbox = await face.runtime.get(id);
        exitCode = await runAttached(sandbox, cmd, flags, env, life);
      });
    });

  program
    .command('ps')
    .description('list sandboxes (running ones; -a for all, warm pool members included)')
    .option('-a, --all', 'include stopped and failed sandboxes, and the members of warm pools (`roost pool ls`)')
    .option(
      '-f, --filter <K=V>',
      'filter: status=STATUS, label=KEY or label=KEY=VALUE, image=REF (repeatable; labels must all match)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('-q, --quiet', 'print only ids')
    .option('--json', 'print JSON')
    .action(async (flags: { all?: boolean; filter: string[]; quiet?: boolean; json?: boolean }) => {
      const filter = parseFilters(flags.filter);
      if (!flags.all && filter.status === undefined) filter.status = LIVE;
      // Members of warm pools are not the user's sandboxes until handed over: shown with -a, or when asked for by label.
      const members = flags.all || filter.labels?.some((l) => l === POOL_LABEL || l.startsWith(`${POOL_LABEL}=`));
      const list = (await withFace('ps', (face) => face.runtime.list(filter))).filter((s) => members || s.labels[POOL_LABEL] === undefined);
      if (flags.json) process.stdout.write(JSON.stringify(list, null, 2) + '\n');
      else if (flags.quiet) process.stdout.write(list.map((s) => `${s.id}\n`).join(''));
      else process.stdout.write(table(list));
    });

  program
    .command('inspect')
    .description('show everything recorded about a sandbox')
    .option('--json', 'print JSON')
    .argument('<id>')
    .action(async (id: string, flags: { json?: boolean }) => {
      const [info, stats] = await withFace('inspect', async (face) => {
        const sandbox = await face.runtime.get(id);
        const record = await sandbox.refresh();
        // Counters only mean something while the VM runs.
        return [
          record,
          !flags.json && record.network && record.network.mode !== 'none' && LIVE.includes(record.status) ? await sandbox.networkStats() : null,
        ] as const;
      });
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : describeSandbox(info, stats));
    });

  program
    .command('logs')
    .description("print a sandbox's console log (kernel, agent, and the output of `run -d` commands)")
    .option('-f, --follow', 'keep printing as the log grows, until the sandbox stops')
    .option('-n, --tail <lines>', 'print only the last lines', int('--tail'))
    .argument('<id>')
    .action(async (id: string, flags: { follow?: boolean; tail?: number }) => {
      await withFace('logs', async (face) => {
        const sandbox = await face.runtime.get(id);
        await printLog(face, sandbox, { follow: !!flags.follow, ...(flags.tail !== undefined ? { tail: flags.tail } : {}) });
      });
    });

  const lifecycle = (
    name: 'stop' | 'start' | 'kill' | 'rm',
    description: string,
    act: (s: SandboxApi, flags: { timeout?: number; force?: boolean }) => Promise<void>,
  ) =>
    program
      .command(name)
      .description(description)
      .argument('<id...>')
      .action(async (ids: string[], flags: { timeout?: number; force?: boolean }) => {
        await withFace(name, async (face) => {
          for (const id of ids) {
            const sandbox = await face.runtime.get(id);
            await act(sandbox, flags);
            process.stdout.write(`${sandbox.id}\n`);
          }
        });
      });
  lifecycle('stop', 'stop sandboxes (the VM powers off; killed after the timeout)', (s, f) => s.stop({ timeoutMs: f.timeout ?? 10_000 })).option(
    '-t, --timeout <ms>',
    'how long to wait before killing',
    int('--timeout'),
    10_000,
  );
  lifecycle('start', 'boot stopped sandboxes again, on the disks they had', (s, f) =>
    namingFlag('--timeout', () => s.start(f.timeout !== undefined ? { timeoutMs: f.timeout } : {})),
  ).option('-t, --timeout <ms>', 'how long the boot may take', int('--timeout'));
  lifecycle('kill', 'kill sandboxes at once (their VMs end without shutting down)', (s) => s.kill());
  lifecycle('rm', 'remove sandboxes', (s, f) => s.remove({ force: !!f.force })).option('-f, --force', 'kill running sandboxes first');

  program
    .command('events')
    .description('print events (sandboxes created, started, exited, ...; images pulled, ...) as they happen, until Ctrl-C')
    .option('--since <id>', 'first replay the events after this event id (0: all that are kept)', int('--since'))
    .option('--type <types>', `only these types, comma-separated (${EVENT_TYPES.join(', ')})`)
    .option('--sandbox <id>', 'only events of this sandbox')
    .option('--json', 'print one JSON object per line')
    .action(async (flags: { since?: number; type?: string; sandbox?: string; json?: boolean }) => {
      const types = flags.type
        ?.split(',')
        .map((t) => t.trim())
        .filter(Boolean);
      for (const t of types ?? []) {
        if (!(EVENT_TYPES as readonly string[]).includes(t))
          throw new RoostError('INVALID_ARGUMENT', `--type: unknown event type "${t}" (known: ${EVENT_TYPES.join(', ')})`);
      }
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        await withFace('events', async (face) => {
          const options: { after?: number; signal: AbortSignal; types?: EventType[]; sandboxId?: string } = { signal: stop.signal };
          if (flags.since !== undefined) options.after = flags.since;
          if (types?.length) options.types = types as EventType[];
          if (flags.sandbox) options.sandboxId = flags.sandbox;
          for await (const event of face.runtime.events(options)) {
            process.stdout.write(flags.json ? JSON.stringify(event) + '\n' : describeEvent(event));
          }
        });
      } catch (e) {
        if (!stop.signal.aborted) throw e;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });

  addCpCommand(program, withFace);
  addImageCommands(program, withImages);
  addPushCommand(program, withImages);
  addBuildCommand(program, withFace);
  addVolumeCommands(program, withVolumes);
  addSnapshotCommands(program, withFace);
  addPoolCommands(program, withFace, ensureOwner);
  addDeploymentCommands(program, withFace, ensureOwner);
  addActorCommands(program, withFace, (code) => (exitCode = code));
  addPortCommands(program, withFace);
  addServeCommand(program, (code) => (exitCode = code));
  addMcpCommand(program, withFace);
  addE2bCommands(program);
  addDoctorCommand(
    program,
    (o) => runDoctor({ ...hostOption(), ...o }),
    (code) => (exitCode = code),
  );

  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (e) {
    if (e instanceof Interrupted) {
      // Quiet (the reader of the output, or the terminal, is gone; or the user asked): and prompt, even if a stream lingers.
      setTimeout(() => process.exit(e.exitCode), 2_000).unref();
      return e.exitCode;
    }
    return reportError(e);
  }
}

/**
 * `roost run` positional arguments: `IMAGE -- CMD...`, `IMAGE CMD...`,
 * `IMAGE`, or `-- CMD...` (no image: Roost's base root filesystem). Commander
 * drops a leading `--`, so the raw argv tells the last form apart.
 */
function splitRunArgs(args: string[], argv: string[]): { image?: string; cmd: string[] } {
  const dash = args.indexOf('--');
  if (dash >= 0) {
    if (dash > 1) throw new RoostError('INVALID_ARGUMENT', `one image before --, not ${dash}: ${args.slice(0, dash).join(' ')}`);
    return dash === 1 ? { image: args[0]!, cmd: args.slice(2) } : { cmd: args.slice(1) };
  }
  const rawDash = argv.indexOf('--');
  if (rawDash >= 0 && argv.length - rawDash - 1 === args.length) return { cmd: args };
  if (args.length === 0) return { cmd: [] };
  return { image: args[0]!, cmd: args.slice(1) };
}

function addExecFlags(cmd: Command): Command {
  return cmd
    .option('-e, --env <K=V>', 'set an environment variable (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('-w, --workdir <dir>', 'working directory inside the sandbox')
    .option('-u, --user <user>', 'user to run as: name, uid, uid:gid')
    .option('-i, --interactive', 'forward standard input')
    .option('-t, --tty', 'allocate a terminal (implies -i)')
    .addOption(new Option('--timeout <ms>', 'kill the command after this long').argParser(int('--timeout')));
}

function execOptions(flags: ExecFlags, env: Record<string, string>): RunOptions {
  const opts: RunOptions = { env };
  if (flags.workdir) opts.cwd = flags.workdir;
  if (flags.user) opts.user = flags.user;
  if (flags.timeout !== undefined) opts.timeoutMs = flags.timeout;
  return opts;
}

/** Runs a command with this process's stdio wired to it; returns its exit code (throws an Interrupted when `life` ends first). */
async function runAttached(sandbox: SandboxApi, cmd: string[], flags: ExecFlags, env: Record<string, string>, life: Lifetime): Promise<number> {
  const tty = !!flags.tty && process.stdin.isTTY === true;
  const interactive = !!flags.interactive || !!flags.tty;
  const opts = execOptions(flags, env);
  if (flags.tty) opts.pty = { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 };
  if (interactive) opts.stdin = true;
  const handle = await sandbox.commands.start(cmd, opts);

  const cleanups: (() => void)[] = [];
  if (interactive) cleanups.push(forwardStdin(handle, tty));
  if (flags.tty && process.stdout.isTTY) {
    // Node turns SIGWINCH into 'resize' on a terminal stdout.
    const onResize = () => {
      try {
        handle.resize({ rows: process.stdout.rows, cols: process.stdout.columns });
      } catch {
        // A size the guest cannot take (0x0 while a terminal is being resized).
      }
    };
    process.stdout.on('resize', onResize);
    cleanups.push(() => process.stdout.off('resize', onResize));
  }
  // Ctrl-C (outside raw mode) and SIGTERM go to the command; a second one, SIGHUP, or output nobody reads ends the CLI.
  cleanups.push(
    life.forward((sig) => {
      try {
        handle.kill(sig);
      } catch {
        // It has exited.
      }
    }),
  );
  let onEnd = () => {};
  const ended = new Promise<never>((_, reject) => {
    onEnd = () => reject(life.signal.reason as Error);
    if (life.signal.aborted) onEnd();
    else life.signal.addEventListener('abort', onEnd, { once: true });
  });
  ended.catch(() => {});
  cleanups.push(() => life.signal.removeEventListener('abort', onEnd));

  try {
    const done = (async () => {
      await Promise.all([pipeOut(handle.stdout, process.stdout), pipeOut(handle.stderr, process.stderr)]).catch(() => {});
      return (await handle.wait()).exitCode;
    })();
    // When the CLI ends first, the command's streams fail as its sandbox goes: nothing to report.
    done.catch(() => {});
    return await Promise.race([done, ended]);
  } catch (e) {
    if (life.interrupted) throw life.interrupted;
    if (!isRoostError(e, 'TIMEOUT')) throw e;
    // As timeout(1) does, so scripts can tell a timeout from the command's own failure.
    process.stderr.write(`roost: ${e.message}\n`);
    return EXIT_TIMEOUT;
  } finally {
    cleanups.forEach((c) => c());
  }
}

async function pipeOut(source: AsyncIterable<Uint8Array>, sink: NodeJS.WriteStream): Promise<void> {
  for await (const chunk of source) {
    if (!sink.write(chunk)) await new Promise((r) => sink.once('drain', r));
  }
}

function forwardStdin(handle: CommandHandleApi, raw: boolean): () => void {
  const stdin = process.stdin;
  if (raw) stdin.setRawMode(true);
  let stopped = false;
  void (async () => {
    try {
      for await (const chunk of stdin) {
        if (stopped) break;
        await handle.write(chunk as Buffer);
      }
      if (!stopped) handle.closeStdin();
    } catch {
      // the command exited
    }
  })();
  return () => {
    stopped = true;
    try {
      if (raw) stdin.setRawMode(false);
    } catch {
      // The terminal is gone (SIGHUP): nothing to restore.
    }
    stdin.pause();
    stdin.unref?.();
  };
}

/** Prints a console log (embedded: from the file, as it grows; remote: what the daemon sends), following it while the sandbox runs. */
async function printLog(face: Face, sandbox: SandboxApi, options: { follow: boolean; tail?: number }): Promise<void> {
  const out = process.stdout;
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  if (options.follow) process.once('SIGINT', onSignal);
  try {
    if (face.kind === 'embedded') {
      const path = consoleLogPath(sandbox);
      let offset = 0;
      if (options.tail !== undefined) {
        // Follow from where the log ended before the tail was read: a line written meanwhile may show twice, never not at all.
        offset = (await stat(path).catch(() => ({ size: 0 }))).size;
        out.write(await sandbox.logs({ tail: options.tail }));
      }
      for (;;) {
        offset = await copyFrom(path, offset, out);
        if (!options.follow || stop.signal.aborted || !(await stillLive(sandbox))) return;
        await sleep(200, stop.signal).catch(() => {});
      }
    }
    // Remote: the daemon answers with the log's last part; what is new is what follows the end of the previous answer.
    let previous = await sandbox.logs();
    out.write(options.tail !== undefined ? await sandbox.logs({ tail: options.tail }) : previous);
    while (options.follow && !stop.signal.aborted && (await stillLive(sandbox))) {
      await sleep(500, stop.signal).catch(() => {});
      const now = await sandbox.logs();
      out.write(newPart(previous, now));
      previous = now;
    }
  } finally {
    process.off('SIGINT', onSignal);
  }
}

/** The part of `now` after the text `previous` ended with (the daemon sends the log's last MiB, so the start may move). */
export function newPart(previous: string, now: string): string {
  if (now.startsWith(previous)) return now.slice(previous.length);
  const anchor = previous.slice(-256);
  const at = anchor ? now.lastIndexOf(anchor) : -1;
  return at >= 0 ? now.slice(at + anchor.length) : now;
}

async function stillLive(sandbox: SandboxApi): Promise<boolean> {
  const info = await sandbox.refresh().catch(() => null);
  return info !== null && LIVE.includes(info.status);
}

function parseEnv(pairs: string[]): Record<string, string> {
  return parsePairs(pairs, '-e');
}

/** `--filter status=running --filter label=team=a --filter image=alpine` as a ListFilter. */
export function parseFilters(filters: string[]): ListFilter {
  const f: ListFilter = {};
  const statuses: SandboxStatus[] = [];
  for (const item of filters) {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? '' : item.slice(eq + 1);
    if (!value) throw new RoostError('INVALID_ARGUMENT', `--filter ${item}: expected KEY=VALUE (status=, label=, image=)`);
    switch (key) {
      case 'status':
        for (const s of value.split(',')) {
          if (!(STATUSES as string[]).includes(s))
            throw new RoostError('INVALID_ARGUMENT', `--filter status=${s}: unknown status (known: ${STATUSES.join(', ')})`);
          statuses.push(s as SandboxStatus);
        }
        break;
      case 'label':
        (f.labels ??= []).push(value);
        break;
      case 'image':
        f.image = value;
        break;
      default:
        throw new RoostError('INVALID_ARGUMENT', `--filter ${item}: unknown filter "${key}" (known: status, label, image)`);
    }
  }
  if (statuses.length > 0) f.status = statuses;
  return f;
}

function table(rows: SandboxInfo[]): string {
  const head = ['ID', 'IMAGE', 'STATUS', 'CPUS', 'MEMORY', 'ACCEL', 'CREATED', 'DETACHED', 'PORTS', 'LABELS'];
  const body = rows.map((s) => [
    s.id,
    s.image?.reference ?? '-',
    // A pause Roost made itself (a full host disk) says why; one the user asked for does not need to; a pool member says whose it is.
    s.labels[POOL_LABEL] !== undefined && s.status === 'paused'
      ? `ready (pool ${s.labels[POOL_LABEL]})`
      : s.status === 'paused' && s.reason
        ? `paused (${s.reason})`
        : s.status,
    String(s.cpus),
    `${s.memoryMiB}MiB`,
    s.accel,
    ago(s.createdAt),
    s.detached ? 'yes' : 'no',
    formatPorts(s.network) || '-',
    Object.entries(s.labels ?? {})
      .map(([k, v]) => `${k}=${v}`)
      .join(','),
  ]);
  return formatTable(head, body);
}

function describeSandbox(s: SandboxInfo, stats: NetworkStats | null): string {
  const when = (iso: string | null | undefined) => (iso ? `${iso} (${ago(iso)})` : '-');
  const rows: [string, string][] = [
    ['ID', s.id],
    ['Status', s.status + (s.reason ? ` (${s.reason})` : '')],
    ['Image', s.image ? `${s.image.reference} (${s.image.id})` : '- (Roost base filesystem)'],
    ['CPUs', String(s.cpus)],
    ['Memory', `${s.memoryMiB}MiB`],
    ['Disk', `${s.diskSizeMiB}MiB`],
    ['Accel', s.accel],
    ['Detached', s.detached ? 'yes' : 'no'],
    ...(s.pool ? [['Pool', `${s.pool.name} (${s.pool.warm ? 'handed over warm' : 'restored: the pool was empty'})`] as [string, string]] : []),
    ['VM pid', s.pid === null ? '-' : String(s.pid)],
    ['Created', when(s.createdAt)],
    ['Started', when(s.startedAt)],
    ['Stopped', when(s.stoppedAt)],
    ['Commands', String(s.execs ?? 0)],
    ['Working dir', s.workingDir || '-'],
    ['User', s.user || '-'],
    ['Agent', s.agentVersion ?? '-'],
    [
      'Labels',
      Object.entries(s.labels ?? {})
        .map(([k, v]) => `${k}=${v}`)
        .join(', ') || '-',
    ],
    ['Snapshot', s.snapshot ?? '-'],
    ['Volumes', (s.volumes ?? []).map((v) => `${v.source}:${v.target}${v.readOnly ? ':ro' : ''}`).join(', ') || '-'],
    ...networkRows(s.network, stats),
    [
      'Env',
      Object.entries(s.env ?? {})
        .map(([k, v]) => `${k}=${v}`)
        .join(' ') || '-',
    ],
  ];
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}\n`).join('');
}
