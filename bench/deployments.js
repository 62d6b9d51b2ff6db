// Deployments (issue 19), run by bench/run.js. Each figure beside its peer in
// the same run:
// 1. SIGKILL of a replica's QEMU -> its healthy replacement serving, p50 of
//    KILL_RUNS (the deployment has 1 replica and an HTTP health check every
//    HEALTH_INTERVAL_MS; a starting replica is probed every 250 ms). Beside
//    it, a cold start to the first command in the same run: the replacement
//    is that plus noticing the death and the first good probe.
// 2. Service-port throughput (GET of NET_MIB from busybox httpd in the
//    replica) and connection latency (fresh connection + GET /, p50 of
//    LATENCY_RUNS), beside a port published directly on the same replica's
//    sandbox to the same server: what the balancer costs.
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime } from '@roost/core';
import { ms, pct, sleep } from './stats.js';

const KILL_RUNS = Number(process.env.BENCH_DEPLOY_KILL_RUNS ?? 5);
const HEALTH_INTERVAL_MS = 500;
const NET_MIB = Number(process.env.BENCH_DEPLOY_NET_MIB ?? 32);
const THROUGHPUT_RUNS = Number(process.env.BENCH_DEPLOY_NET_RUNS ?? 3);
const LATENCY_RUNS = Number(process.env.BENCH_DEPLOY_LATENCY_RUNS ?? 50);

export async function benchDeployments({ realHome, row, results }) {
  const home = mkdtempSync(join(tmpdir(), 'roost-bench-deploy-'));
  symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
  const runtime = await Runtime.open({ home, owner: 'bench deployments' });
  try {
    await runtime.deployments.apply({
      name: 'bench',
      replicas: 1,
      sandbox: { memoryMiB: 256 + NET_MIB },
      command: 'mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www',
      ports: ['127.0.0.1::80'],
      health: { http: { port: 80, path: '/' }, intervalMs: HEALTH_INTERVAL_MS, timeoutMs: 1_000, retries: 2 },
    });
    const healthy = async (not) => {
      for (;;) {
        const info = await runtime.deployments.get('bench');
        const m = info.members.find((r) => r.state === 'healthy' && r.id !== not);
        if (m && !info.members.some((r) => r.id === not)) return { info, id: m.id };
        await sleep(5);
      }
    };
    let { info, id } = await healthy(null);
    const servicePort = info.ports[0].hostPort;

    // --- 1. a replica killed -> its healthy replacement -------------------------------
    const replace = [];
    const cold = [];
    for (let i = 0; i < KILL_RUNS; i++) {
      const victim = await runtime.get(id);
      const t0 = performance.now();
      process.kill(victim.vmPid, 'SIGKILL');
      ({ id } = await healthy(id));
      // Serving through the service port, not only probed.
      while ((await httpStatus(servicePort)) !== 200) await sleep(5);
      replace.push(performance.now() - t0);
      const c0 = performance.now();
      const sb = await runtime.create({ timeoutMs: 60_000 });
      await sb.commands.run('true', { args: [] });
      cold.push(performance.now() - c0);
      await sb.remove({ force: true });
    }

    // --- 2. the service port beside a port published on the replica itself --------
    const replica = await runtime.get(id);
    const made = await replica.commands.run(`dd if=/dev/zero of=/tmp/www/big bs=1M count=${NET_MIB} 2>/dev/null`);
    if (made.exitCode !== 0) throw new Error(`dd in the replica: ${made.stderr}`);
    const direct = await replica.ports.add('127.0.0.1::80');
    const viaService = { bytes: [], latency: [] };
    const viaDirect = { bytes: [], latency: [] };
    for (let i = 0; i < THROUGHPUT_RUNS; i++) {
      viaService.bytes.push(await getBig(servicePort));
      viaDirect.bytes.push(await getBig(direct.hostPort));
    }
    for (let i = 0; i < LATENCY_RUNS; i++) {
      viaService.latency.push(await roundTrip(servicePort));
      viaDirect.latency.push(await roundTrip(direct.hostPort));
    }
    const mbps = (msTaken) => (NET_MIB * 2 ** 20) / 1e6 / (msTaken / 1000);
    const fig = {
      unit: 'ms',
      replacement: { p50: pct(replace, 50), samples: replace, healthIntervalMs: HEALTH_INTERVAL_MS, startingProbeMs: 250 },
      coldStartToFirstRun: { p50: pct(cold, 50), samples: cold },
      servicePort: {
        throughputMBps: mbps(pct(viaService.bytes, 50)),
        latencyP50: pct(viaService.latency, 50),
        latencyP90: pct(viaService.latency, 90),
      },
      directPort: {
        throughputMBps: mbps(pct(viaDirect.bytes, 50)),
        latencyP50: pct(viaDirect.latency, 50),
        latencyP90: pct(viaDirect.latency, 90),
      },
      netMiB: NET_MIB,
    };
    results.figures.deployments = fig;
    row(
      `replica SIGKILL -> healthy replacement x${KILL_RUNS}`,
      `p50 ${ms(fig.replacement.p50)}`,
      `cold start -> run ${ms(fig.coldStartToFirstRun.p50)}`,
      `health every ${HEALTH_INTERVAL_MS} ms`,
    );
    row(
      `GET ${NET_MIB} MiB, service port`,
      `${fig.servicePort.throughputMBps.toFixed(0)} MB/s`,
      `direct port ${fig.directPort.throughputMBps.toFixed(0)} MB/s`,
      `${(fig.servicePort.throughputMBps / fig.directPort.throughputMBps).toFixed(2)}x`,
    );
    row(
      'connect + GET /, service port',
      `p50 ${ms(fig.servicePort.latencyP50)} p90 ${ms(fig.servicePort.latencyP90)}`,
      `direct port p50 ${ms(fig.directPort.latencyP50)}`,
      `${fig.servicePort.latencyP50 >= fig.directPort.latencyP50 ? '+' : '-'}${ms(Math.abs(fig.servicePort.latencyP50 - fig.directPort.latencyP50))}`,
    );
    await runtime.deployments.remove('bench');
  } finally {
    await runtime.deployments.remove('bench').catch(() => {});
    await runtime.close().catch(() => {});
    rmSync(home, { recursive: true, force: true });
  }
}

/** The status of GET / on a fresh connection (0 when it fails). */
function httpStatus(port) {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false, timeout: 2_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}

/** GET /big: ms until the whole body is in (checks its size). */
function getBig(port) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host: '127.0.0.1', port, path: '/big', agent: false }, (res) => {
      let got = 0;
      res.on('data', (d) => (got += d.length));
      res.on('end', () => (got === NET_MIB * 2 ** 20 ? resolve(performance.now() - t0) : reject(new Error(`received ${got} of ${NET_MIB} MiB`))));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A fresh connection and GET /: ms until the whole response is in. */
function roundTrip(port) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false, headers: { connection: 'close' } }, (res) => {
      res.on('data', () => {});
      res.on('end', () => resolve(performance.now() - t0));
    });
    req.on('error', reject);
    req.end();
  });
}
