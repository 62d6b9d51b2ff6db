// The E2B face's cost (issue 18), run by bench/run.js: E2B's own SDK (the
// `e2b` package, unchanged) against `roost serve`, beside @roost/client
// against the same daemon, in the same run, taking turns so that drift in
// machine load hits both alike.
//   1. Sandbox.create('base') + commands.run('true') + kill(), p50 of 10,
//      beside rest.create() + commands.run('true') + remove().
//   2. commands.run('true') to one sandbox, p50 of 100, both ways.
// The SDK runs `/bin/bash -l -c true` (sh in Roost's base image, which has
// no bash) over Connect; the client runs `sh -c true` over Roost's REST.
// A third turn of 2. sends the SDK's exact Start request with node:http, so
// that the face's own cost is told apart from the SDK's (connect-web over
// undici's fetch). Target: the SDK within 1.2x of Roost's own client.
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from 'e2b';
import { Runtime } from '@roost/core';
import { RoostClient } from '@roost/client';
import { E2bKeys, serve } from '@roost/server';
import { pct } from './stats.js';

const LIFECYCLE_RUNS = Number(process.env.BENCH_E2B_LIFECYCLE_RUNS ?? 10);
const EXEC_RUNS = Number(process.env.BENCH_E2B_EXEC_RUNS ?? 100);

export async function benchE2b({ realHome, row, results }) {
  const home = mkdtempSync(join(tmpdir(), 'roost-bench-e2b-'));
  symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
  const runtime = await Runtime.open({ home, owner: 'bench e2b' });
  const daemon = await serve({ runtime, socket: join(home, 'e2b-bench.sock'), tcp: { host: '127.0.0.1', port: 0 } });
  const rest = new RoostClient({ host: daemon.url, token: daemon.token });
  // The SDK's connection settings, as `roost e2b env` prints them.
  const sdk = { apiKey: new E2bKeys(home).create('bench').key, apiUrl: daemon.url, sandboxUrl: daemon.url };
  const live = new Set();
  try {
    const lifecycle = {
      e2b: async () => {
        const sbx = await Sandbox.create('base', sdk);
        live.add(sbx);
        await sbx.commands.run('true');
        await sbx.kill();
        live.delete(sbx);
      },
      roost: async () => {
        const sb = await rest.create({ detached: true });
        live.add(sb);
        await sb.commands.run('true');
        await sb.remove({ force: true });
        live.delete(sb);
      },
    };
    const lifecycleSamples = await alternate(lifecycle, LIFECYCLE_RUNS, 1);

    const sbx = await Sandbox.create('base', sdk);
    live.add(sbx);
    const same = await rest.get(sbx.sandboxId);
    const exec = {
      e2b: () => sbx.commands.run('true'),
      roost: () => same.commands.run('true'),
      connect: connectStart(daemon.url, sbx.sandboxId, sbx.envdAccessToken),
    };
    const execSamples = await alternate(exec, EXEC_RUNS, 10);

    const figure = (samples) => {
      const e2b = pct(samples.e2b, 50);
      const roost = pct(samples.roost, 50);
      return { e2b: { p50: e2b, p99: pct(samples.e2b, 99) }, roost: { p50: roost, p99: pct(samples.roost, 99) }, ratio: e2b / roost };
    };
    const lc = figure(lifecycleSamples);
    const ex = figure(execSamples);
    results.figures.e2b = {
      unit: 'ms',
      lifecycle: { runs: LIFECYCLE_RUNS, ...lc },
      exec: { runs: EXEC_RUNS, ...ex, rawConnect: { p50: pct(execSamples.connect, 50), p99: pct(execSamples.connect, 99) } },
      target: 'the e2b SDK within 1.2x of @roost/client (p50)',
    };
    row(
      `E2B SDK create+run(true)+kill x${LIFECYCLE_RUNS}`,
      `e2b p50 ${lc.e2b.p50.toFixed(1)} ms`,
      `@roost/client ${lc.roost.p50.toFixed(1)} ms`,
      `${lc.ratio.toFixed(3)}x (target <= 1.2x)`,
    );
    row(
      `E2B SDK commands.run(true) x${EXEC_RUNS}, same VM`,
      `e2b p50 ${ex.e2b.p50.toFixed(2)} ms p99 ${ex.e2b.p99.toFixed(0)} ms`,
      `@roost/client ${ex.roost.p50.toFixed(2)} ms`,
      `${ex.ratio.toFixed(3)}x (target <= 1.2x)`,
    );
    row(
      `  the same Start without the SDK (node:http)`,
      `p50 ${pct(execSamples.connect, 50).toFixed(2)} ms`,
      `@roost/client ${ex.roost.p50.toFixed(2)} ms`,
      `${(pct(execSamples.connect, 50) / ex.roost.p50).toFixed(3)}x: the face's share`,
    );
  } finally {
    for (const s of live) await (s instanceof Sandbox ? s.kill() : s.remove({ force: true })).catch(() => {});
    await rest.close().catch(() => {});
    await daemon.close().catch(() => {});
    await runtime.close().catch(() => {});
    rmSync(home, { recursive: true, force: true });
  }
}

/** The SDK's `commands.run('true')` request, sent with node:http on a kept-alive connection; resolves at the end of the stream. */
function connectStart(url, sandboxId, accessToken) {
  const agent = new Agent({ keepAlive: true });
  const { hostname, port } = new URL(url);
  const json = Buffer.from(JSON.stringify({ process: { cmd: '/bin/bash', args: ['-l', '-c', 'true'] }, stdin: false }));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(json.length, 1);
  const body = Buffer.concat([head, json]);
  const headers = {
    'content-type': 'application/connect+json',
    'connect-protocol-version': '1',
    'e2b-sandbox-id': sandboxId,
    'x-access-token': accessToken,
    'content-length': body.length,
  };
  return () =>
    new Promise((resolve, reject) => {
      const req = request({ agent, host: hostname, port, method: 'POST', path: '/process.Process/Start', headers }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode !== 200 || !text.includes('"exit status 0"')) reject(new Error(`Start: ${res.statusCode} ${text}`));
          else resolve();
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(body);
    });
}

/** Runs each face `runs` times, taking turns, after `warmup` untimed turns; the samples in ms by face. */
async function alternate(faces, runs, warmup) {
  const samples = Object.fromEntries(Object.keys(faces).map((f) => [f, []]));
  for (let i = 0; i < warmup; i++) for (const f of Object.keys(faces)) await faces[f]();
  for (let i = 0; i < runs; i++) {
    for (const f of Object.keys(faces)) {
      const t0 = performance.now();
      await faces[f]();
      samples[f].push(performance.now() - t0);
    }
  }
  return samples;
}
