import { Option, type Command } from 'commander';
import { MAX_POOL_SIZE, RoostError, sleep, type CreatePoolRequest, type PoolInfo, type PoolsApi } from '@roost/api';
import type { Face, WithFace } from './connect.js';
import { ago, formatTable } from './format.js';
import { int } from './args.js';

/** How often a waiting command looks at the pool. */
const POLL_MS = 100;
/** How long `pool create` and `pool resize` wait for the fill by default. */
const DEFAULT_WAIT_MS = 120_000;

/**
 * `roost pool create|ls|inspect|resize|rm`. Through the daemon when one runs
 * (it keeps the pools filled while it runs), else in a runtime opened here,
 * which refills only while the command runs: `create` and `resize` wait for
 * the fill (unless --no-wait), and the members they leave are detached, so
 * they stay ready after the command; the next runtime to own the home tops
 * the pools up. `roost run --pool NAME` takes a sandbox from one.
 */
/**
 * @param ensureOwner makes sure a daemon owns the home (started in the
 * background when none runs; ROOST_AUTO_DAEMON=0 opts out), so that a pool
 * a command leaves behind stays filled after it exits.
 */
export function addPoolCommands(program: Command, withFace: WithFace, ensureOwner: (reason: string, by: string) => Promise<void>): void {
  const pool = program
    .command('pool')
    .alias('pools')
    .description('manage warm pools: sandboxes kept restored and paused, handed over by `roost run --pool NAME`');
  const refill = { reconcile: true };

  pool
    .command('create')
    .description('define a pool and fill it (members restore the template or snapshot, then wait paused)')
    .argument('<name>')
    .addOption(new Option('--template <name>', "restore members from this template's warm snapshot").conflicts('snapshot'))
    .option('--snapshot <name>', 'restore members from this snapshot (name or id)')
    .requiredOption('-n, --size <n>', `how many sandboxes to keep ready (0-${MAX_POOL_SIZE})`, int('--size'))
    .option('--max-size <n>', `the most members at once, and the ceiling of --size (default ${MAX_POOL_SIZE})`, int('--max-size'))
    .option('--no-wait', 'return at once instead of waiting until the pool is filled')
    .option('-t, --timeout <ms>', 'how long to wait for the fill', int('--timeout'), DEFAULT_WAIT_MS)
    .option('--json', 'print JSON')
    .action(
      async (name: string, flags: { template?: string; snapshot?: string; size: number; maxSize?: number; wait: boolean; timeout: number; json?: boolean }) => {
        if (flags.template === undefined && flags.snapshot === undefined) {
          throw new RoostError('INVALID_ARGUMENT', 'give what the members restore: --template NAME or --snapshot NAME');
        }
        const request: CreatePoolRequest = { name, size: flags.size };
        if (flags.template !== undefined) request.template = flags.template;
        if (flags.snapshot !== undefined) request.snapshot = flags.snapshot;
        if (flags.maxSize !== undefined) request.maxSize = flags.maxSize;
        if (flags.size > 0) await ensureOwner(`warm pool ${name}`, 'roost pool create');
        const info = await withFace(
          'pool create',
          async (face) => {
            const created = await face.runtime.pools.create(request);
            return flags.wait ? waitForFill(face, created.name, flags.timeout) : created;
          },
          refill,
        );
        process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : `${info.name}  ${fill(info)}\n`);
      },
    );

  pool
    .command('ls', { isDefault: true })
    .description('list pools with their fill level')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only names')
    .action(async (flags: { json?: boolean; quiet?: boolean }) => {
      const all = await withFace('pool', (face) => face.runtime.pools.list());
      if (flags.json) process.stdout.write(JSON.stringify(all, null, 2) + '\n');
      else if (flags.quiet) process.stdout.write(all.map((p) => `${p.name}\n`).join(''));
      else process.stdout.write(poolTable(all));
    });

  pool
    .command('inspect')
    .description('print a pool, as JSON')
    .argument('<name>')
    .action(async (name: string) => {
      const info = await withFace('pool', (face) => face.runtime.pools.get(name));
      process.stdout.write(JSON.stringify(info, null, 2) + '\n');
    });

  pool
    .command('resize')
    .description('set how many sandboxes a pool keeps ready (extra members are removed, missing ones restored)')
    .argument('<name>')
    .argument('<size>', 'the new size', int('SIZE'))
    .option('--no-wait', 'return at once instead of waiting until the pool has its new size')
    .option('-t, --timeout <ms>', 'how long to wait', int('--timeout'), DEFAULT_WAIT_MS)
    .action(async (name: string, size: number, flags: { wait: boolean; timeout: number }) => {
      if (size > 0) await ensureOwner(`warm pool ${name}`, 'roost pool resize');
      const info = await withFace(
        'pool resize',
        async (face) => {
          const resized = await face.runtime.pools.resize(name, size);
          return flags.wait ? waitForFill(face, name, flags.timeout) : resized;
        },
        refill,
      );
      process.stdout.write(`${info.name}  ${fill(info)}\n`);
    });

  pool
    .command('rm')
    .description('remove pools and their members')
    .argument('<name...>')
    .action(async (names: string[]) => {
      await withFace('pool rm', async (face) => {
        for (const name of names) {
          await face.runtime.pools.remove(name);
          process.stdout.write(`${name}\n`);
        }
      });
    });
}

/**
 * Waits until the pool has `size` members ready and none starting. A
 * refill that fails ends the wait (INVALID_STATE with its error: the daemon
 * retries in the background; an embedded runtime leaves it to the next owner
 * of the home), and so does `timeoutMs` (TIMEOUT).
 */
async function waitForFill(face: Face, name: string, timeoutMs: number): Promise<PoolInfo> {
  const pools: PoolsApi = face.runtime.pools;
  const since = Date.now();
  for (;;) {
    const info = await pools.get(name);
    if (info.ready === info.size && info.starting === 0) return info;
    const error = info.lastError;
    if (error && Date.parse(error.at) >= since - 1_000) {
      const later =
        face.kind === 'remote'
          ? 'the daemon retries in the background'
          : 'the next runtime to own the home (`roost serve`, or a command such as `roost pool resize`) retries';
      throw new RoostError('INVALID_STATE', `pool ${name} is ${fill(info)}: a refill failed (${error.code}): ${error.message}; ${later}`, {
        details: { pool: name, code: error.code },
      });
    }
    if (Date.now() - since > timeoutMs) {
      throw new RoostError('TIMEOUT', `pool ${name} is ${fill(info)} after ${timeoutMs} ms (raise --timeout, or give --no-wait)`, { details: { pool: name } });
    }
    await sleep(POLL_MS);
  }
}

/** "3/3 ready", "1/3 ready, 2 starting". */
function fill(p: PoolInfo): string {
  return `${p.ready}/${p.size} ready${p.starting > 0 ? `, ${p.starting} starting` : ''}`;
}

function poolTable(all: PoolInfo[]): string {
  return formatTable(
    ['NAME', 'SOURCE', 'READY', 'SIZE', 'MAX', 'STARTING', 'HANDED OVER', 'FALLBACKS', 'CREATED', 'LAST ERROR'],
    all.map((p) => [
      p.name,
      p.template !== undefined ? `template ${p.template}` : `snapshot ${p.snapshot ?? '-'}`,
      String(p.ready),
      String(p.size),
      String(p.maxSize),
      String(p.starting),
      String(p.handedOver),
      String(p.fallbacks),
      ago(p.createdAt),
      p.lastError ? `${p.lastError.code} ${ago(p.lastError.at)} (${p.lastError.failures}x)` : '-',
    ]),
  );
}
