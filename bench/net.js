// Networking benchmarks (issue 6), run by bench/run.js. Each figure is printed
// beside its floor, measured in the same run, and stored in results.figures.
//
// One user-mode sandbox publishes three guest ports (127.0.0.1::PORT):
// 1. TCP throughput host -> guest: the host writes NET_BYTES into the
//    forwarded port, busybox `nc -l` in the guest reads them into /dev/null;
//    timed from connect until the guest closes (after it has read the lot).
// 2. TCP throughput guest -> host: the host GETs a NET_BYTES file (on the
//    guest's tmpfs) from busybox httpd in the guest. (busybox nc is no sender
//    to measure with: it reads its stdin in 1-2 KiB pieces, one guest syscall
//    each, and manages about 3 MB/s under TCG whatever carries its packets.)
//    Context, not a floor: the same GET inside the guest over its loopback.
// 3. Connection latency: a fresh connection and a small HTTP GET to busybox
//    httpd in the guest through the forwarded port, p50 of LATENCY_RUNS.
// The floor of each is the same transfer or request on the host's loopback
// (Node to Node), in this run.
import { createServer, connect } from 'node:net';
import { createServer as createHttpServer, request } from 'node:http';
import { Runtime } from '@roost/core';
import { pct, ms, sleep } from './stats.js';

const NET_BYTES = Number(process.env.BENCH_NET_MIB ?? 64) * 2 ** 20;
const THROUGHPUT_RUNS = Number(process.env.BENCH_NET_RUNS ?? 3);
const LATENCY_RUNS = Number(process.env.BENCH_NET_LATENCY_RUNS ?? 50);
const CHUNK = Buffer.alloc(256 * 1024, 0x5a);

export async function benchNet({ home, row, results }) {
  const runtime = await Runtime.shared(home);
  const sb = await runtime.create({ ports: ['127.0.0.1::5001', '127.0.0.1::80'], memoryMiB: 256 + (2 * NET_BYTES) / 2 ** 20, timeoutMs: 60_000 });
  try {
    await sb.commands.run(
      `mkdir -p /tmp/www && echo ok > /tmp/www/index.html && dd if=/dev/zero of=/tmp/www/big bs=1M count=${NET_BYTES / 2 ** 20} 2>/dev/null && busybox httpd -p 80 -h /tmp/www`,
    );

    // --- floors: the host's loopback ----------------------------------------------
    const floorIn = [];
    const floorOut = [];
    for (let i = 0; i < THROUGHPUT_RUNS; i++) {
      floorIn.push(await loopbackTransfer('to-server'));
      floorOut.push(await loopbackTransfer('from-server'));
    }
    const http = createHttpServer((_req, res) => res.end('ok\n'));
    await new Promise((r) => http.listen(0, '127.0.0.1', r));
    const floorLatency = [];
    for (let i = 0; i < LATENCY_RUNS; i++) floorLatency.push(await httpRoundTrip('127.0.0.1', http.address().port));
    http.close();

    // --- through the forwarded ports -------------------------------------------
    const [inHost, inPort] = sb.getHost(5001).split(':');
    const [webHost, webPort] = sb.getHost(80).split(':');
    const inRuns = [];
    const outRuns = [];
    for (let i = 0; i < THROUGHPUT_RUNS; i++) {
      // host -> guest: the guest's nc reads everything into /dev/null and exits when the host closes.
      const sink = await sb.commands.start(['sh', '-c', 'exec nc -l -p 5001 > /dev/null']);
      await sleep(200);
      inRuns.push(await sendTo(inHost, Number(inPort)));
      await sink.wait();
      // guest -> host: busybox httpd sends the file.
      outRuns.push(await httpGetBig(webHost, Number(webPort)));
    }
    const inGuest = [];
    for (let i = 0; i < THROUGHPUT_RUNS; i++) {
      const t0 = performance.now();
      const r = await sb.commands.run('wget -q -O /dev/null http://127.0.0.1/big');
      if (r.exitCode !== 0) throw new Error(`in-guest wget: ${r.stderr}`);
      inGuest.push(performance.now() - t0);
    }
    const latency = [];
    for (let i = 0; i < LATENCY_RUNS; i++) latency.push(await httpRoundTrip(webHost, Number(webPort)));
    const stats = await sb.networkStats();

    const mbps = (t) => NET_BYTES / 1e6 / (t / 1000);
    const figure = (runs, floor) => ({
      unit: 'MB/s',
      bytes: NET_BYTES,
      p50: mbps(pct(runs, 50)),
      samplesMs: runs,
      floor: { what: 'the same transfer over the host loopback, Node to Node', p50: mbps(pct(floor, 50)), samplesMs: floor },
    });
    results.figures.netHostToGuest = figure(inRuns, floorIn);
    results.figures.netGuestToHost = {
      ...figure(outRuns, floorOut),
      inGuestLoopback: {
        what: 'the same GET by busybox wget inside the guest, over its loopback (a run command: includes ~10 ms of exec)',
        p50: mbps(pct(inGuest, 50)),
        samplesMs: inGuest,
      },
    };
    results.figures.netConnectLatency = {
      unit: 'ms',
      p50: pct(latency, 50),
      p90: pct(latency, 90),
      samples: latency,
      floor: { what: 'a fresh connection and HTTP GET to a Node server on the host loopback', p50: pct(floorLatency, 50), p90: pct(floorLatency, 90) },
    };
    results.figures.netStats = stats;
    const mb = NET_BYTES / 2 ** 20;
    row(`TCP host -> guest, forwarded port (${mb} MiB)`, `${mbps(pct(inRuns, 50)).toFixed(0)} MB/s`, `loopback ${mbps(pct(floorIn, 50)).toFixed(0)} MB/s`, '');
    row(
      `TCP guest -> host, forwarded port (${mb} MiB)`,
      `${mbps(pct(outRuns, 50)).toFixed(0)} MB/s`,
      `loopback ${mbps(pct(floorOut, 50)).toFixed(0)} MB/s`,
      `in-guest loopback ${mbps(pct(inGuest, 50)).toFixed(0)} MB/s`,
    );
    row('connect + HTTP GET, forwarded port', `p50 ${ms(pct(latency, 50))} p90 ${ms(pct(latency, 90))}`, `loopback p50 ${ms(pct(floorLatency, 50))}`, '');
  } finally {
    await sb.remove({ force: true });
  }
}

/** Writes NET_BYTES to host:port; ms from connect until the peer has closed. */
function sendTo(host, port) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    // Half-open: busybox nc closes its sending side at once (its stdin is empty) and reads on.
    const s = connect({ port, host, allowHalfOpen: true });
    let left = NET_BYTES;
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length);
        left -= n;
        if (!s.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) return s.once('drain', pump);
      }
      s.end();
    };
    s.on('connect', pump);
    s.on('data', () => {});
    s.on('error', reject);
    s.on('close', () => (left === 0 ? resolve(performance.now() - t0) : reject(new Error(`closed with ${left} bytes unsent`))));
  });
}

/** Reads from host:port until it closes; ms from connect, and checks NET_BYTES came. */
function receiveFrom(host, port) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const s = connect(port, host);
    let got = 0;
    s.on('data', (d) => (got += d.length));
    s.on('error', reject);
    s.on('close', () => (got === NET_BYTES ? resolve(performance.now() - t0) : reject(new Error(`received ${got} of ${NET_BYTES} bytes`))));
  });
}

/** GET /big; ms until the whole body is in (checks NET_BYTES came). */
function httpGetBig(host, port) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host, port, path: '/big', agent: false }, (res) => {
      let got = 0;
      res.on('data', (d) => (got += d.length));
      res.on('end', () => (got === NET_BYTES ? resolve(performance.now() - t0) : reject(new Error(`received ${got} of ${NET_BYTES} bytes`))));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The loopback floor: a Node server and client moving NET_BYTES one way. */
async function loopbackTransfer(direction) {
  const server = createServer((c) => {
    if (direction === 'to-server') {
      c.on('data', () => {});
      c.on('end', () => c.end());
    } else {
      let left = NET_BYTES;
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, CHUNK.length);
          left -= n;
          if (!c.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) return c.once('drain', pump);
        }
        c.end();
      };
      pump();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    return direction === 'to-server' ? await sendTo('127.0.0.1', server.address().port) : await receiveFrom('127.0.0.1', server.address().port);
  } finally {
    server.close();
  }
}

/** A fresh connection (no keep-alive) and GET /: ms until the whole response is in. */
function httpRoundTrip(host, port) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host, port, path: '/', agent: false, headers: { connection: 'close' } }, (res) => {
      res.on('data', () => {});
      res.on('end', () => resolve(performance.now() - t0));
    });
    req.on('error', reject);
    req.end();
  });
}
