// Control-plane benchmarks (issue 4), run by bench/run.js. Each figure is
// printed beside its floor measured in the same run and stored in results.figures.
//
// 1. API overhead: create -> first run('true') through `roost serve` (a
//    separate process) over its unix socket with @roost/client, beside the
//    embedded runtime; and the run('true') round trip to one sandbox through
//    the daemon's API (serving this process's runtime) beside a direct call.
// 2. List/get latency with 100 sandbox records and 50 concurrent clients,
//    beside GET /v1/health (the HTTP stack alone) under the same load.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Runtime } from '@roost/core';
import { stateDb } from '@roost/core/internal';
import { RoostClient } from '@roost/client';
import { serve } from '@roost/server';
import { pct } from './stats.js';

const CREATE_RUNS = Number(process.env.BENCH_API_CREATE_RUNS ?? 5);
const EXEC_RUNS = Number(process.env.BENCH_EXEC_RUNS ?? 200);
const RECORDS = 100;
const CLIENTS = 50;
const REQUESTS_PER_CLIENT = Number(process.env.BENCH_API_REQUESTS ?? 40);
const roostBin = fileURLToPath(new URL('../packages/cli/bin/roost.js', import.meta.url));

export async function benchApi({ realHome, row, results }) {
  const work = mkdtempSync(join(tmpdir(), 'roost-bench-api-'));
  const newHome = (name) => {
    const h = join(work, name);
    mkdirSync(h);
    symlinkSync(join(realHome, 'cache'), join(h, 'cache'));
    return h;
  };
  const daemons = [];
  try {
    // --- 1. create -> first exec, and exec round trip: embedded vs daemon -----------
    const embedded = await Runtime.open({ home: newHome('embedded'), owner: 'bench' });
    const apiHome = newHome('api');
    daemons.push(await startDaemon(apiHome));
    const client = new RoostClient({ home: apiHome });
    const faces = { embedded, daemon: client };
    const create = { embedded: [], daemon: [] };
    // Alternate the faces so drift in machine load hits both alike.
    for (let i = 0; i < CREATE_RUNS; i++) {
      for (const face of ['embedded', 'daemon']) {
        const t0 = performance.now();
        const sb = await faces[face].create({ timeoutMs: 60_000 });
        await sb.commands.run('true', { args: [] });
        create[face].push(performance.now() - t0);
        await sb.remove({ force: true });
      }
    }
    // The round trip through both faces to the SAME sandbox: the daemon serves this process's
    // runtime (serve({ runtime })), so guest-side differences between two VMs (a few ms under
    // TCG) do not pass for API cost. The client talks to it over the unix socket.
    const shared = await serve({ runtime: embedded, socket: join(work, 'shared.sock') });
    const sharedClient = new RoostClient({ host: `unix://${shared.socketPath}`, token: shared.token });
    const sb = await embedded.create({ timeoutMs: 60_000 });
    const via = { embedded: sb, daemon: await sharedClient.get(sb.id) };
    const exec = { embedded: [], daemon: [] };
    for (const face of ['embedded', 'daemon']) for (let i = 0; i < 20; i++) await via[face].commands.run('true', { args: [] }); // warm up
    for (let i = 0; i < EXEC_RUNS; i++) {
      for (const face of ['embedded', 'daemon']) {
        const t0 = performance.now();
        await via[face].commands.run('true', { args: [] });
        exec[face].push(performance.now() - t0);
      }
    }
    await sb.remove({ force: true });
    await sharedClient.close();
    await shared.close();
    await embedded.close();

    const c = { embedded: pct(create.embedded, 50), daemon: pct(create.daemon, 50) };
    const e = { embedded: pct(exec.embedded, 50), daemon: pct(exec.daemon, 50) };
    results.figures.apiCreateToFirstExec = {
      unit: 'ms',
      p50: c.daemon,
      samples: create.daemon,
      floor: { what: 'embedded runtime', p50: c.embedded, samples: create.embedded },
      addedMs: c.daemon - c.embedded,
    };
    row('API: create -> first run(true)', `daemon p50 ${ms(c.daemon)}`, `embedded p50 ${ms(c.embedded)}`, `+${ms(c.daemon - c.embedded)}`);
    results.figures.apiExecRoundTrip = {
      unit: 'ms',
      p50: e.daemon,
      p99: pct(exec.daemon, 99),
      floor: { what: 'the same sandbox called in-process', p50: e.embedded, p99: pct(exec.embedded, 99) },
      addedMs: e.daemon - e.embedded,
      target: 'added < 1 ms per exec',
    };
    row(
      `API: run(true) round trip x${EXEC_RUNS}, same VM`,
      `daemon p50 ${ms(e.daemon)} p99 ${ms(pct(exec.daemon, 99))}`,
      `embedded p50 ${ms(e.embedded)} p99 ${ms(pct(exec.embedded, 99))}`,
      `+${ms(e.daemon - e.embedded)} (target < 1 ms)`,
    );

    // --- 2. list/get with 100 records under 50 concurrent clients -------------------------
    // One real sandbox's record, stopped, cloned into 100 rows: real records to list and get, without 100 boots.
    const listHome = newHome('list');
    {
      const rt = await Runtime.open({ home: listHome, owner: 'bench' });
      const sb = await rt.create({ timeoutMs: 60_000, labels: { bench: 'list' } });
      await sb.stop();
      const info = sb.info;
      const db = stateDb(listHome);
      const put = db.prepare('INSERT INTO sandboxes (id, status, created_at, updated_at, pid, image_id, info_json) VALUES (?, ?, ?, ?, NULL, NULL, ?)');
      db.transaction(() => {
        for (let i = 1; i < RECORDS; i++) {
          const id = randomBytes(6).toString('hex');
          const createdAt = new Date(Date.now() - i * 1000).toISOString();
          put.run(id, info.status, createdAt, createdAt, JSON.stringify({ ...info, id, createdAt }));
        }
      })();
      await rt.close();
    }
    daemons.push(await startDaemon(listHome));
    const listClient = new RoostClient({ home: listHome });
    const ids = (await listClient.list()).map((s) => s.id);
    if (ids.length !== RECORDS) throw new Error(`expected ${RECORDS} records, the daemon lists ${ids.length}`);
    const load = async (op) => {
      const lat = [];
      await Promise.all(
        Array.from({ length: CLIENTS }, async (_, k) => {
          for (let i = 0; i < REQUESTS_PER_CLIENT; i++) {
            const t0 = performance.now();
            await op(k, i);
            lat.push(performance.now() - t0);
          }
        }),
      );
      return lat;
    };
    const health = await load(() => listClient.health());
    const list = await load(() => listClient.list());
    const get = await load((k, i) => listClient.get(ids[(k * REQUESTS_PER_CLIENT + i) % ids.length]));
    results.figures.apiListGet = {
      unit: 'ms',
      records: RECORDS,
      clients: CLIENTS,
      requests: CLIENTS * REQUESTS_PER_CLIENT,
      list: { p50: pct(list, 50), p99: pct(list, 99) },
      get: { p50: pct(get, 50), p99: pct(get, 99) },
      floor: { what: 'GET /v1/health under the same load', p50: pct(health, 50), p99: pct(health, 99) },
    };
    row(
      `API: list ${RECORDS} records, ${CLIENTS} clients`,
      `p50 ${ms(pct(list, 50))} p99 ${ms(pct(list, 99))}`,
      `health p50 ${ms(pct(health, 50))} p99 ${ms(pct(health, 99))}`,
      '',
    );
    row(`API: get, ${CLIENTS} clients`, `p50 ${ms(pct(get, 50))} p99 ${ms(pct(get, 99))}`, `health p50 ${ms(pct(health, 50))} p99 ${ms(pct(health, 99))}`, '');
    await listClient.close();
    await client.close();
  } finally {
    for (const d of daemons) {
      d.kill('SIGTERM');
      await new Promise((r) => (d.exitCode !== null ? r() : d.once('exit', r)));
    }
    rmSync(work, { recursive: true, force: true });
  }
}

/** Starts `roost serve` on a home in its own process; resolves once it answers. */
async function startDaemon(home) {
  const d = spawn(process.execPath, [roostBin, 'serve'], { env: { ...process.env, ROOST_HOME: home }, stdio: ['ignore', 'ignore', 'inherit'] });
  const client = new RoostClient({ home });
  const end = Date.now() + 30_000;
  for (;;) {
    if (d.exitCode !== null) throw new Error(`roost serve exited ${d.exitCode}`);
    if (
      existsSync(join(home, 'api-token')) &&
      (await client.health().then(
        () => true,
        () => false,
      ))
    )
      break;
    if (Date.now() > end) throw new Error('roost serve did not answer within 30 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  await client.close();
  return d;
}

function ms(v) {
  return `${v.toFixed(v < 10 ? 2 : 0)} ms`;
}
