import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { isRoostError, RoostError, Sandbox, setup, type CommandHandle, type PullPolicy, type RunOptions, type SandboxInfo } from '@roost/core';
import { addImageCommands, pullProgressPrinter } from './images.js';
import { ago, formatTable } from './format.js';

/** Exit status for errors of Roost itself (as docker does), distinct from the command's own statuses. */
const EXIT_ROOST_ERROR = 125;
/** Exit status when `--timeout` killed the command (as timeout(1) reports it). */
const EXIT_TIMEOUT = 124;

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
  const program = new Command('roost')
    .description('Run untrusted code in hardware-isolated Linux microVMs')
    .version('0.1.0')
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

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
    .addOption(new Option('--pull <policy>', 'pull the image: missing, always or never').choices(['missing', 'always', 'never']).default('missing'))
    .option('--boot-timeout <ms>', 'how long the boot may take', int('--boot-timeout'));
  addExecFlags(run)
    .passThroughOptions()
    .argument('[args...]')
    .action(async (args: string[], flags: ExecFlags & { detach?: boolean; cpus: number; memory: number; disk?: number; pull: PullPolicy; bootTimeout?: number }) => {
      const { image, cmd: given } = splitRunArgs(args, argv);
      const env = parseEnv(flags.env);
      const sandbox = await Sandbox.create({
        cpus: flags.cpus,
        memoryMiB: flags.memory,
        detached: !!flags.detach,
        ...(image ? { image, pull: flags.pull, onPullProgress: pullProgressPrinter() } : {}),
        ...(flags.disk !== undefined ? { diskSizeMiB: flags.disk } : {}),
        ...(flags.bootTimeout !== undefined ? { timeoutMs: flags.bootTimeout } : {}),
      });
      // With an image, Docker's rule: the Entrypoint, then the given command or else the image's Cmd.
      const img = sandbox.info.image;
      const cmd = img ? [...img.entrypoint, ...(given.length > 0 ? given : img.cmd)] : given;
      if (!flags.detach && cmd.length === 0) {
        await sandbox.remove({ force: true });
        throw new RoostError('INVALID_ARGUMENT', image ? `image ${image} has no Entrypoint or Cmd: give a command: roost run ${image} -- CMD [ARG...]` : 'give a command to run: roost run [options] [IMAGE] -- CMD [ARG...]');
      }
      if (flags.detach) {
        if (cmd.length > 0) {
          // The command outlives this CLI: it runs in the background with its output on the console (`roost logs`).
          await sandbox.commands.run(['/bin/sh', '-c', '"$@" </dev/null >/dev/console 2>&1 &', 'roost-main', ...cmd], execOptions({ ...flags, env: flags.env }, env));
        }
        sandbox.disconnect();
        process.stdout.write(`${sandbox.id}\n`);
        return;
      }
      try {
        exitCode = await runAttached(sandbox, cmd, flags, env);
      } finally {
        await sandbox.remove({ force: true });
      }
    });

  addExecFlags(program.command('exec').description('run a command in a running sandbox').usage('[options] ID -- CMD [ARG...]'))
    .passThroughOptions()
    .argument('<id>')
    .argument('<cmd...>')
    .action(async (id: string, cmd: string[], flags: ExecFlags) => {
      // With passThroughOptions, a `--` after ID reaches us as an argument.
      if (cmd[0] === '--') cmd = cmd.slice(1);
      if (cmd.length === 0) throw new RoostError('INVALID_ARGUMENT', 'give a command to run: roost exec ID -- CMD [ARG...]');
      const sandbox = await Sandbox.get(id);
      try {
        exitCode = await runAttached(sandbox, cmd, flags, parseEnv(flags.env));
      } finally {
        sandbox.disconnect();
      }
    });

  program
    .command('ps')
    .description('list sandboxes')
    .option('-a, --all', 'include stopped and failed sandboxes')
    .option('--json', 'print JSON')
    .action(async (flags: { all?: boolean; json?: boolean }) => {
      const all = await Sandbox.list();
      const shown = flags.all ? all : all.filter((s) => s.status === 'running' || s.status === 'creating' || s.status === 'stopping');
      if (flags.json) process.stdout.write(JSON.stringify(shown, null, 2) + '\n');
      else process.stdout.write(table(shown));
    });

  program
    .command('logs')
    .description("print a sandbox's console log (kernel, agent, and the output of `run -d` commands)")
    .option('-f, --follow', 'keep printing as the log grows, until the sandbox stops')
    .argument('<id>')
    .action(async (id: string, flags: { follow?: boolean }) => {
      const sandbox = await Sandbox.get(id);
      await printLog(sandbox, !!flags.follow);
    });

  program
    .command('stop')
    .description('stop sandboxes (the VM powers off; killed after the timeout)')
    .option('-t, --timeout <ms>', 'how long to wait before killing', int('--timeout'), 10_000)
    .argument('<id...>')
    .action(async (ids: string[], flags: { timeout: number }) => {
      for (const id of ids) {
        const sandbox = await Sandbox.get(id);
        await sandbox.stop({ timeoutMs: flags.timeout });
        process.stdout.write(`${sandbox.id}\n`);
      }
    });

  program
    .command('rm')
    .description('remove sandboxes')
    .option('-f, --force', 'kill running sandboxes first')
    .argument('<id...>')
    .action(async (ids: string[], flags: { force?: boolean }) => {
      for (const id of ids) {
        const sandbox = await Sandbox.get(id);
        await sandbox.remove({ force: !!flags.force });
        process.stdout.write(`${sandbox.id}\n`);
      }
    });

  addImageCommands(program);

  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : e.code === 'commander.help' || e.code === 'commander.helpDisplayed' || e.code === 'commander.version' ? 0 : 2;
    if (isRoostError(e)) {
      process.stderr.write(`roost: ${e.message}\n`);
      return EXIT_ROOST_ERROR;
    }
    throw e;
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

/** Runs a command with this process's stdio wired to it; returns its exit code. */
async function runAttached(sandbox: Sandbox, cmd: string[], flags: ExecFlags, env: Record<string, string>): Promise<number> {
  const tty = !!flags.tty && process.stdin.isTTY === true;
  const interactive = !!flags.interactive || !!flags.tty;
  const opts = execOptions(flags, env);
  if (flags.tty) opts.pty = { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 };
  if (interactive) opts.stdin = true;
  const handle = await sandbox.commands.start(cmd, opts);

  const cleanups: (() => void)[] = [];
  if (interactive) cleanups.push(forwardStdin(handle, tty));
  if (flags.tty && process.stdout.isTTY) {
    const onResize = () => handle.resize({ rows: process.stdout.rows, cols: process.stdout.columns });
    process.stdout.on('resize', onResize);
    cleanups.push(() => process.stdout.off('resize', onResize));
  }
  // Ctrl-C (outside raw mode) and SIGTERM go to the command; a second one ends the CLI.
  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (++interrupts > 1) process.exit(128 + (sig === 'SIGINT' ? 2 : 15));
    handle.kill(sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  cleanups.push(() => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  });

  try {
    await Promise.all([pipeOut(handle.stdout, process.stdout), pipeOut(handle.stderr, process.stderr)]).catch(() => {});
    const result = await handle.wait();
    return result.exitCode;
  } catch (e) {
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

function forwardStdin(handle: CommandHandle, raw: boolean): () => void {
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
    if (raw) stdin.setRawMode(false);
    stdin.pause();
    stdin.unref?.();
  };
}

async function printLog(sandbox: Sandbox, follow: boolean): Promise<void> {
  let offset = 0;
  for (;;) {
    const size = (await stat(sandbox.consoleLogPath).catch(() => ({ size: 0 }))).size;
    if (size > offset) {
      await new Promise<void>((resolve, reject) => {
        createReadStream(sandbox.consoleLogPath, { start: offset, end: size - 1 })
          .on('data', (c) => process.stdout.write(c))
          .on('end', resolve)
          .on('error', reject);
      });
      offset = size;
    }
    if (!follow) return;
    const live = (await Sandbox.get(sandbox.id)).status;
    if (live !== 'running' && live !== 'creating' && live !== 'stopping') return;
    await new Promise((r) => setTimeout(r, 200));
  }
}

function parseEnv(pairs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new RoostError('INVALID_ARGUMENT', `-e ${p}: expected NAME=VALUE`);
    env[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return env;
}

export function int(flag: string): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`${flag} takes a whole number, not "${v}"`);
    return n;
  };
}

function table(rows: SandboxInfo[]): string {
  const head = ['ID', 'IMAGE', 'STATUS', 'CPUS', 'MEMORY', 'ACCEL', 'CREATED', 'DETACHED'];
  const body = rows.map((s) => [s.id, s.image?.reference ?? '-', s.status, String(s.cpus), `${s.memoryMiB}MiB`, s.accel, ago(s.createdAt), s.detached ? 'yes' : 'no']);
  return formatTable(head, body);
}
