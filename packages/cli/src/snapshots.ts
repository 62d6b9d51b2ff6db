import type { Command } from 'commander';
import { isRoostError, MAX_FORK_COUNT, RoostError, templateImageTag, type CreateTemplateRequest, type SnapshotInfo, type TemplateInfo } from '@roost/api';
import { addBuildSourceFlags, buildOptions, buildWithProgress, type BuildSourceFlags } from './build.js';
import { resolveProgressMode } from './build-progress.js';
import type { WithFace } from './connect.js';
import { ago, bytes, formatTable } from './format.js';
import { int, parsePairs } from './args.js';
import { namingFlag } from './errors.js';

/**
 * `roost pause|resume|snapshot|fork`, `roost snapshots ls|inspect|rm` and
 * `roost template create|ls|inspect|warm|rm`. They go to the daemon when
 * there is one, else to a runtime opened here (which holds the home's lock
 * while the command runs). Copies made by `fork` are detached: they outlive
 * this command, as `run -d` sandboxes do.
 */
export function addSnapshotCommands(program: Command, withFace: WithFace): void {
  program
    .command('pause')
    .description('pause sandboxes: their vCPUs stop, their memory stays (commands wait until resumed)')
    .argument('<id...>')
    .action(async (ids: string[]) => {
      await withFace('pause', async (face) => {
        for (const id of ids) {
          const sandbox = await face.runtime.get(id);
          await sandbox.pause();
          process.stdout.write(`${sandbox.id}\n`);
        }
      });
    });

  program
    .command('resume')
    .description('resume paused sandboxes where they were')
    .argument('<id...>')
    .action(async (ids: string[]) => {
      await withFace('resume', async (face) => {
        for (const id of ids) {
          const sandbox = await face.runtime.get(id);
          await sandbox.resume();
          process.stdout.write(`${sandbox.id}\n`);
        }
      });
    });

  program
    .command('snapshot')
    .description("save a sandbox's memory, processes and disk as a snapshot (it runs on); restore with `roost run --snapshot NAME`")
    .argument('<id>')
    .argument('[name]', "the snapshot's name (default: <id>-<time>)")
    .option('-t, --timeout <ms>', 'how long saving may take', int('--timeout'))
    .option('--json', 'print JSON')
    .action(async (id: string, name: string | undefined, flags: { timeout?: number; json?: boolean }) => {
      const info = await withFace('snapshot', async (face) => {
        const sandbox = await face.runtime.get(id);
        return sandbox.snapshot({ ...(name !== undefined ? { name } : {}), ...(flags.timeout !== undefined ? { timeoutMs: flags.timeout } : {}) });
      });
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : `${info.name}  ${info.id}  ${bytes(info.sizeBytes)}\n`);
    });

  program
    .command('fork')
    .description('make running copies of a sandbox (each with its own id, memory and disk) and print their ids')
    .argument('<id>')
    .option('-n, --count <n>', `how many copies (1-${MAX_FORK_COUNT})`, int('--count'), 1)
    .option('-l, --label <K=V>', "labels of the copies instead of the source's (repeatable)", (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--copy-volumes', "give each copy its own copies of the source's volumes (default: the copies share them)")
    .option('-t, --timeout <ms>', 'how long the fork may take', int('--timeout'))
    .action(async (id: string, flags: { count: number; label: string[]; copyVolumes?: boolean; timeout?: number }) => {
      const labels = parsePairs(flags.label, '-l');
      await withFace('fork', async (face) => {
        const sandbox = await face.runtime.get(id);
        const copies = await namingFlag('--timeout', () =>
          sandbox.fork({
            count: flags.count,
            // The copies outlive this command (an embedded runtime closes when it ends).
            detached: true,
            ...(Object.keys(labels).length > 0 ? { labels } : {}),
            ...(flags.copyVolumes ? { volumes: 'copy' as const } : {}),
            ...(flags.timeout !== undefined ? { timeoutMs: flags.timeout } : {}),
          }),
        );
        process.stdout.write(copies.map((c) => `${c.id}\n`).join(''));
      });
    });

  const snapshots = program.command('snapshots').description('list and remove snapshots (take them with `roost snapshot ID [NAME]`)');
  snapshots
    .command('ls', { isDefault: true })
    .description('list snapshots')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only names')
    .action(async (flags: { json?: boolean; quiet?: boolean }) => {
      const all = await withFace('snapshots', (face) => face.runtime.snapshots.list());
      if (flags.json) process.stdout.write(JSON.stringify(all, null, 2) + '\n');
      else if (flags.quiet) process.stdout.write(all.map((s) => `${s.name}\n`).join(''));
      else process.stdout.write(snapshotTable(all));
    });
  snapshots
    .command('inspect')
    .description('print everything recorded about a snapshot, as JSON')
    .argument('<name>', 'a name or id')
    .action(async (name: string) => {
      const info = await withFace('snapshots', (face) => face.runtime.snapshots.get(name));
      process.stdout.write(JSON.stringify(info, null, 2) + '\n');
    });
  snapshots
    .command('rm')
    .description('remove snapshots and their files (refused while sandboxes restored from one, or snapshots layered on it, exist)')
    .argument('<name...>', 'names or ids')
    .action(async (names: string[]) => {
      await withFace('snapshots', async (face) => {
        for (const name of names) {
          await face.runtime.snapshots.remove(name);
          process.stdout.write(`${name}\n`);
        }
      });
    });

  const template = program
    .command('template')
    .alias('templates')
    .description('manage templates: an image, resources and a setup command kept ready as a snapshot (`roost run --template NAME`)');
  const create = template
    .command('create')
    .description('define a template (built on its first use, or now with --warm)')
    .argument('<name>')
    .option('--image <image>', "the image (default: Roost's base root filesystem)")
    .option('--build <context>', 'build the image from a Dockerfile in this directory first (tagged roost-template/NAME:latest), with the build flags below');
  addBuildSourceFlags(create)
    .option('--cpus <n>', 'virtual CPUs', int('--cpus'))
    .option('-m, --memory <MiB>', 'guest memory in MiB', int('--memory'))
    .option('--disk <MiB>', 'size of the writable disk in MiB (sparse)', int('--disk'))
    .option('-e, --env <K=V>', 'set an environment variable (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--setup <cmd>', 'a shell command run once before the snapshot is taken (it must exit 0)')
    .option('--warm', 'build its snapshot now')
    .option('-t, --timeout <ms>', 'how long building may take (with --warm)', int('--timeout'))
    .option('--json', 'print JSON')
    .action(
      async (
        name: string,
        flags: Partial<BuildSourceFlags> & {
          buildArg: string[];
          image?: string;
          build?: string;
          cpus?: number;
          memory?: number;
          disk?: number;
          env: string[];
          setup?: string;
          warm?: boolean;
          timeout?: number;
          json?: boolean;
        },
      ) => {
        const env = parsePairs(flags.env, '-e');
        const request: CreateTemplateRequest = { name };
        if (flags.image !== undefined) request.image = flags.image;
        if (flags.cpus !== undefined) request.cpus = flags.cpus;
        if (flags.memory !== undefined) request.memoryMiB = flags.memory;
        if (flags.disk !== undefined) request.diskSizeMiB = flags.disk;
        if (Object.keys(env).length > 0) request.env = env;
        if (flags.setup !== undefined) request.setup = flags.setup;
        if (flags.warm) request.warm = true;
        if (flags.timeout !== undefined) request.timeoutMs = flags.timeout;
        const context = flags.build;
        if (context !== undefined && flags.image !== undefined)
          throw new RoostError('INVALID_ARGUMENT', '--image and --build: give one (--build makes the image)');
        const info = await withFace('template', async (face) => {
          if (context !== undefined) {
            // The template's image is built first (a name taken fails before the build), then the template is defined on it.
            const taken = await face.runtime.templates.get(name).catch((e: unknown) => {
              if (isRoostError(e, 'NOT_FOUND')) return null;
              throw e;
            });
            if (taken)
              throw new RoostError(
                'ALREADY_EXISTS',
                `a template named ${name} exists already: choose another name or remove it (\`roost template rm ${name}\`)`,
              );
            const mode = resolveProgressMode(flags.progress ?? 'auto', process.stderr.isTTY === true);
            const options = buildOptions(flags, { context, cwd: process.cwd(), env: process.env, remote: face.kind === 'remote' });
            await buildWithProgress(face.images, context, { ...options, tags: [templateImageTag(name)] }, mode);
            request.image = templateImageTag(name);
          }
          return namingFlag('--timeout', () => face.runtime.templates.create(request));
        });
        process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : `${info.name}${info.snapshot ? `  ${info.snapshot}` : ''}\n`);
      },
    );
  template
    .command('ls', { isDefault: true })
    .description('list templates')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only names')
    .action(async (flags: { json?: boolean; quiet?: boolean }) => {
      const all = await withFace('template', (face) => face.runtime.templates.list());
      if (flags.json) process.stdout.write(JSON.stringify(all, null, 2) + '\n');
      else if (flags.quiet) process.stdout.write(all.map((t) => `${t.name}\n`).join(''));
      else process.stdout.write(templateTable(all));
    });
  template
    .command('inspect')
    .description('print a template, as JSON')
    .argument('<name>')
    .action(async (name: string) => {
      const info = await withFace('template', (face) => face.runtime.templates.get(name));
      process.stdout.write(JSON.stringify(info, null, 2) + '\n');
    });
  template
    .command('warm')
    .description("build a template's snapshot now (a new one, replacing the one it had); prints the snapshot's id")
    .argument('<name>')
    .option('-t, --timeout <ms>', 'how long building may take', int('--timeout'))
    .action(async (name: string, flags: { timeout?: number }) => {
      const info = await withFace('template', (face) =>
        namingFlag('--timeout', () => face.runtime.templates.warm(name, flags.timeout !== undefined ? { timeoutMs: flags.timeout } : {})),
      );
      process.stdout.write(`${info.name}  ${info.snapshot ?? '-'}\n`);
    });
  template
    .command('rm')
    .description('remove templates (and their snapshots once no sandbox depends on them)')
    .argument('<name...>')
    .action(async (names: string[]) => {
      await withFace('template', async (face) => {
        for (const name of names) {
          await face.runtime.templates.remove(name);
          process.stdout.write(`${name}\n`);
        }
      });
    });
}

function snapshotTable(all: SnapshotInfo[]): string {
  return formatTable(
    ['NAME', 'ID', 'KIND', 'SOURCE', 'SIZE', 'CREATED', 'DEPENDENTS'],
    all.map((s) => [s.name, s.id, s.kind, s.sourceSandbox, bytes(s.sizeBytes), ago(s.createdAt), dependents(s)]),
  );
}

/** "2 sandboxes, 1 snapshot", or "-". */
function dependents(s: SnapshotInfo): string {
  const { sandboxes, snapshots } = s.dependents;
  const parts: string[] = [];
  if (sandboxes.length > 0) parts.push(`${sandboxes.length} ${sandboxes.length === 1 ? 'sandbox' : 'sandboxes'}`);
  if (snapshots.length > 0) parts.push(`${snapshots.length} ${snapshots.length === 1 ? 'snapshot' : 'snapshots'}`);
  return parts.join(', ') || '-';
}

function templateTable(all: TemplateInfo[]): string {
  return formatTable(
    ['NAME', 'IMAGE', 'CPUS', 'MEMORY', 'SETUP', 'SNAPSHOT', 'CREATED'],
    all.map((t) => [
      t.name,
      t.image ?? '-',
      String(t.cpus),
      `${t.memoryMiB}MiB`,
      t.setup === undefined ? '-' : truncate(typeof t.setup === 'string' ? t.setup : t.setup.join(' '), 40),
      t.snapshot ?? '-',
      ago(t.createdAt),
    ]),
  );
}

function truncate(s: string, max: number): string {
  const line = s.replace(/\s+/g, ' ');
  return line.length <= max ? line : `${line.slice(0, max - 3)}...`;
}
