// Actors (issue 22), run by bench/run.js: Roost's second isolation tier beside its first.
//
// - create an actor and handle its first message (a call to the counter example), p50 of 200;
// - committed messages per second to one actor and spread over 4 (the counter: a state write per
//   message, each its own transaction, durable when its send or call is answered);
// - fuel metering: a compute-bound module (test/fixtures/actors/compute.wat) metered, beside the same
//   module run unmetered by V8 in the same process;
// - memory per idle actor (the runtime's heap after a full GC, and database bytes, over 1,000 actors);
// - for scale: a microVM sandbox's create -> first run('true') and exec round trip from this run.
/* global WebAssembly */
// Targets: first message under 5 ms, 10,000 committed messages per second on one core, metering under 2x.
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import Database from 'better-sqlite3';
import { prepareModule, capMemory, FUEL_EXPORT, START_EXPORT } from '@roost/actors';
import { Runtime } from '@roost/core';
import wabtInit from 'wabt';
import { pct, ms, sleep } from './stats.js';

const FIRST_RUNS = Number(process.env.BENCH_ACTOR_FIRST_RUNS ?? 200);
const MESSAGES = Number(process.env.BENCH_ACTOR_MESSAGES ?? 20_000);
const IDLE_ACTORS = 1000;
const COMPUTE_RUNS = 7;

const example = (name) => new Uint8Array(readFileSync(fileURLToPath(new URL(`../examples/actors/${name}/${name}.wasm`, import.meta.url))));

async function wat(name) {
  const wabt = await wabtInit();
  const path = fileURLToPath(new URL(`../test/fixtures/actors/${name}.wat`, import.meta.url));
  const parsed = wabt.parseWat(path, readFileSync(path, 'utf8'));
  try {
    return new Uint8Array(parsed.toBinary({}).buffer);
  } finally {
    parsed.destroy();
  }
}

/** Sends `count` messages over `actors` (round robin) with up to `window` sends unanswered, then waits until all are handled. */
async function pushMessages(runtime, actors, count, window = 1000) {
  const t0 = performance.now();
  let next = 0;
  const sender = async () => {
    while (next < count) {
      const i = next++;
      await runtime.actors.send(actors[i % actors.length], 'x');
    }
  };
  await Promise.all(Array.from({ length: window }, sender));
  const per = count / actors.length;
  for (;;) {
    const infos = await Promise.all(actors.map((a) => runtime.actors.get(a)));
    if (infos.every((i) => i.mailbox === 0 && i.handled >= per)) break;
    await sleep(2);
  }
  return performance.now() - t0;
}

export async function benchActors({ realHome, row, results, coldStartP50, execP50 }) {
  const home = mkdtempSync(join(tmpdir(), 'roost-bench-actors-'));
  symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
  const runtime = await Runtime.open({ home, owner: 'bench actors' });
  try {
    const counter = await runtime.actors.deploy(example('counter'));

    // --- create + first message
    const warm = await runtime.actors.create({ module: counter.digest });
    await runtime.actors.call(warm.id, 'x');
    const first = [];
    for (let i = 0; i < FIRST_RUNS; i++) {
      const t0 = performance.now();
      const a = await runtime.actors.create({ module: counter.digest });
      await runtime.actors.call(a.id, 'x');
      first.push(performance.now() - t0);
    }
    results.figures.actorFirstMessage = {
      unit: 'ms',
      p50: pct(first, 50),
      p99: pct(first, 99),
      samples: first.length,
      peer: { what: 'microVM sandbox: create -> first run(true), and exec round trip, this run', coldStartP50, execP50 },
      target: 'p50 < 5 ms',
    };
    row(
      'actor: create + first message',
      `p50 ${ms(pct(first, 50))} p99 ${ms(pct(first, 99))}`,
      `microVM cold ${ms(coldStartP50)}, exec ${ms(execP50)}`,
      `target < 5 ms`,
    );

    // --- committed messages per second: one actor, then four
    const limits = { mailbox: 1_000_000 };
    const one = await runtime.actors.create({ module: counter.digest, limits });
    const oneMs = await pushMessages(runtime, [one.id], MESSAGES);
    const four = [];
    for (let i = 0; i < 4; i++) four.push((await runtime.actors.create({ module: counter.digest, limits })).id);
    const fourMs = await pushMessages(runtime, four, MESSAGES);
    const state = await runtime.actors.state(one.id);
    if (state.entries[0]?.value !== String(MESSAGES)) throw new Error(`the counter says ${state.entries[0]?.value}, not ${MESSAGES}`);
    const oneRate = (MESSAGES / oneMs) * 1000;
    const fourRate = (MESSAGES / fourMs) * 1000;
    results.figures.actorMessages = {
      unit: 'messages/s',
      oneActor: oneRate,
      fourActors: fourRate,
      messages: MESSAGES,
      what: 'counter example: a state write and a new version per message, committed (WAL, synchronous=NORMAL)',
      target: 'one actor >= 10,000/s',
    };
    row('actor: committed messages/s, 1 actor', `${Math.round(oneRate)}/s`, `${MESSAGES} messages`, 'target >= 10,000/s');
    row('actor: committed messages/s, 4 actors', `${Math.round(fourRate)}/s`, `${MESSAGES} messages`, '');

    // --- fuel metering overhead: the same compute-bound module, metered (as actors run it) and not
    const compute = await wat('compute');
    const plain = new WebAssembly.Instance(new WebAssembly.Module(compute), {});
    const prepared = prepareModule(compute);
    const metered = new WebAssembly.Instance(new WebAssembly.Module(capMemory(prepared.bytes, 16)), {});
    const plainMs = [];
    const meteredMs = [];
    let fuelUsed = 0n;
    for (let i = 0; i < COMPUTE_RUNS; i++) {
      let t0 = performance.now();
      plain.exports.work();
      plainMs.push(performance.now() - t0);
      metered.exports[FUEL_EXPORT].value = 10n ** 12n;
      if (metered.exports[START_EXPORT]) metered.exports[START_EXPORT]();
      t0 = performance.now();
      metered.exports.work();
      meteredMs.push(performance.now() - t0);
      fuelUsed = 10n ** 12n - metered.exports[FUEL_EXPORT].value;
    }
    const computeActor = await runtime.actors.create({ module: (await runtime.actors.deploy(compute)).digest, limits: { fuel: 1e12, timeoutMs: 60_000 } });
    const viaActor = [];
    for (let i = 0; i < COMPUTE_RUNS; i++) {
      const t0 = performance.now();
      await runtime.actors.call(computeActor.id, 'x');
      viaActor.push(performance.now() - t0);
    }
    // The costly case: a call and a few instructions per metered block.
    const fibPlain = [];
    const fibMetered = [];
    for (let i = 0; i < COMPUTE_RUNS; i++) {
      let t0 = performance.now();
      plain.exports.fib(30);
      fibPlain.push(performance.now() - t0);
      metered.exports[FUEL_EXPORT].value = 10n ** 12n;
      t0 = performance.now();
      metered.exports.fib(30);
      fibMetered.push(performance.now() - t0);
    }
    const fibRatio = pct(fibMetered, 50) / pct(fibPlain, 50);
    const ratio = pct(meteredMs, 50) / pct(plainMs, 50);
    results.figures.actorMetering = {
      unit: 'ms',
      metered: pct(meteredMs, 50),
      unmetered: pct(plainMs, 50),
      throughActorCall: pct(viaActor, 50),
      ratio,
      fuelPerRun: Number(fuelUsed),
      what: '20,000,000 xorshift steps (test/fixtures/actors/compute.wat)',
      fib: { what: 'recursive fib(30): a call per few instructions', metered: pct(fibMetered, 50), unmetered: pct(fibPlain, 50), ratio: fibRatio },
      target: 'ratio < 2',
    };
    row('actor: fuel metering, xorshift loop', `p50 ${ms(pct(meteredMs, 50))} (${ratio.toFixed(2)}x)`, `unmetered V8 ${ms(pct(plainMs, 50))}`, 'target < 2x');
    row(
      'actor: fuel metering, recursive fib(30)',
      `p50 ${ms(pct(fibMetered, 50))} (${fibRatio.toFixed(2)}x)`,
      `unmetered V8 ${ms(pct(fibPlain, 50))}`,
      'target < 2x',
    );

    // --- memory per idle actor: the runtime's heap after a full GC, and the database's pages, per actor
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc');
    const dbBytes = () => {
      const db = new Database(join(home, 'actors.db'), { readonly: true });
      try {
        return (db.pragma('page_count', { simple: true }) - db.pragma('freelist_count', { simple: true })) * db.pragma('page_size', { simple: true });
      } finally {
        db.close();
      }
    };
    gc();
    const heap0 = process.memoryUsage().heapUsed;
    const disk0 = dbBytes();
    for (let i = 0; i < IDLE_ACTORS; i++) await runtime.actors.create({ module: counter.digest });
    gc();
    const heapPer = (process.memoryUsage().heapUsed - heap0) / IDLE_ACTORS;
    const diskPer = (dbBytes() - disk0) / IDLE_ACTORS;
    results.figures.actorIdleMemory = { unit: 'bytes', heapPerActor: Math.round(heapPer), diskPerActor: Math.round(diskPer), actors: IDLE_ACTORS };
    row('actor: memory per idle actor', `${Math.round(heapPer)} B heap, ${Math.round(diskPer)} B disk`, 'a microVM: its idle memory above', '');
  } finally {
    await runtime.close();
    rmSync(home, { recursive: true, force: true });
  }
}
