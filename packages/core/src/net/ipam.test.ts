import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { closeStateDbs, stateDb } from '../state/db.js';
import { Ipam, macForAddress, type IpamPool, type Lease } from './ipam.js';

let home: string;

beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), 'roost-ipam-'));
});

afterEach(() => {
  closeStateDbs();
  rmSync(home, { recursive: true, force: true });
});

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

describe('Ipam', () => {
  it('checks the pool', () => {
    const db = stateDb(home);
    const cases: Array<[IpamPool, RegExp]> = [
      [{ network: 'roost0', subnet: '10.88.0.0' }, /too small/],
      [{ network: 'roost0', subnet: '10.88.0.0/31' }, /too small/],
      [{ network: 'roost0', subnet: '10.88.0.1/16' }, /did you mean 10\.88\.0\.0\/16/],
      [{ network: 'roost0', subnet: 'fd00::/64' }, /IPv4/],
      [{ network: 'roost0', subnet: '10.88.0.0/16', gateway: '10.89.0.1' }, /not a host address of its subnet 10\.88\.0\.0\/16/],
      [{ network: 'roost0', subnet: '10.88.0.0/16', gateway: '10.88.255.255' }, /not a host address/],
      [{ network: 'roost0', subnet: '10.88.0.0/16', gateway: '10.88.0.0' }, /not a host address/],
      [{ network: 'roost0', subnet: '10.88.0.0/16', gateway: 'gw' }, /not an IPv4 address/],
      [{ network: 'a bridge', subnet: '10.88.0.0/16' }, /not a usable bridge name/],
      [{ network: 'roost0', subnet: '0.0.0.0/0' }, /too large/],
    ];
    for (const [pool, message] of cases) {
      const e = thrown(() => new Ipam(db, pool));
      expect(isRoostError(e, 'INVALID_ARGUMENT'), String(e)).toBe(true);
      expect((e as Error).message).toMatch(message);
    }
    const ipam = new Ipam(db, { network: 'roost0', subnet: '10.88.0.0/30' });
    expect([ipam.subnet, ipam.gateway, ipam.prefix, ipam.capacity]).toEqual(['10.88.0.0/30', '10.88.0.1', 30, 1]);
  });

  it('leases the lowest free host address, skipping the network, gateway and broadcast addresses', () => {
    const db = stateDb(home);
    const ipam = new Ipam(db, { network: 'roost0', subnet: '10.88.0.0/29', gateway: '10.88.0.3' });
    const leases = ['a', 'b', 'c', 'd', 'e'].map((id) => ipam.lease(id));
    expect(leases.map((l) => l.address)).toEqual(['10.88.0.1', '10.88.0.2', '10.88.0.4', '10.88.0.5', '10.88.0.6']);
    const first = leases[0]!;
    expect(first).toMatchObject({ network: 'roost0', sandboxId: 'a', prefix: 29, gateway: '10.88.0.3', mac: '02:52:0a:58:00:01' });
    expect(Date.parse(first.createdAt)).not.toBeNaN();
    // Every MAC is locally administered and unicast, and distinct.
    for (const l of leases) expect(parseInt(l.mac.slice(0, 2), 16) & 0b11).toBe(0b10);
    expect(new Set(leases.map((l) => l.mac)).size).toBe(leases.length);
    // A sandbox keeps its lease.
    expect(ipam.lease('c')).toEqual(leases[2]);
    expect(ipam.get('c')).toEqual(leases[2]);
    expect(ipam.get('nobody')).toBeUndefined();
    expect(ipam.list().map((l) => l.sandboxId)).toEqual(['a', 'b', 'c', 'd', 'e']);
  });

  it('says what to do when the pool is full', () => {
    const ipam = new Ipam(stateDb(home), { network: 'roost0', subnet: '10.88.0.0/29' });
    expect(ipam.capacity).toBe(5);
    for (let i = 0; i < 5; i++) ipam.lease(`s${i}`);
    const e = thrown(() => ipam.lease('one-too-many'));
    expect(isRoostError(e, 'RESOURCE_EXHAUSTED')).toBe(true);
    expect((e as Error).message).toMatch(/10\.88\.0\.0\/29.*5 for sandboxes.*remove sandboxes.*larger subnet/);
    expect(ipam.get('one-too-many')).toBeUndefined();
  });

  it('reuses released addresses, lowest first', () => {
    const ipam = new Ipam(stateDb(home), { network: 'roost0', subnet: '10.88.0.0/29' });
    for (let i = 0; i < 5; i++) ipam.lease(`s${i}`);
    expect(ipam.release('s3')).toBe(true);
    expect(ipam.release('s3')).toBe(false);
    expect(ipam.release('s1')).toBe(true);
    expect(ipam.lease('new1').address).toBe('10.88.0.3');
    expect(ipam.lease('new2').address).toBe('10.88.0.5');
    expect(() => ipam.lease('new3')).toThrow(/is leased/);
  });

  it('keeps pools apart, and re-leases an address left outside a changed subnet', () => {
    const db = stateDb(home);
    const a = new Ipam(db, { network: 'roost0', subnet: '10.88.0.0/24' });
    const b = new Ipam(db, { network: 'roost1', subnet: '10.88.0.0/24' });
    expect(a.lease('x').address).toBe('10.88.0.2');
    expect(b.lease('x').address).toBe('10.88.0.2');
    expect(b.list()).toHaveLength(1);
    const moved = new Ipam(db, { network: 'roost0', subnet: '10.99.0.0/24' });
    expect(moved.lease('x')).toMatchObject({ address: '10.99.0.2', gateway: '10.99.0.1', prefix: 24 });
    expect(moved.list()).toHaveLength(1);
  });

  it('reclaims the leases of sandboxes that are gone', () => {
    const ipam = new Ipam(stateDb(home), { network: 'roost0', subnet: '10.88.0.0/24' });
    for (const id of ['live1', 'gone1', 'live2', 'gone2']) ipam.lease(id);
    const live = new Set(['live1', 'live2']);
    const released = ipam.reclaim((id) => live.has(id));
    expect(released.map((l: Lease) => [l.sandboxId, l.address])).toEqual([
      ['gone1', '10.88.0.3'],
      ['gone2', '10.88.0.5'],
    ]);
    expect(ipam.list().map((l) => l.sandboxId)).toEqual(['live1', 'live2']);
    expect(ipam.reclaim(() => true)).toEqual([]);
  });

  it('cannot store a duplicate address or MAC even if the allocator were wrong', () => {
    const db = stateDb(home);
    new Ipam(db, { network: 'roost0', subnet: '10.88.0.0/24' }).lease('a');
    const insert = db.prepare('INSERT INTO leases (network, sandbox_id, address, mac, created_at) VALUES (?, ?, ?, ?, ?)');
    expect(() => insert.run('roost0', 'b', 0x0a580002, 'x', 'now')).toThrow(/UNIQUE/);
    expect(() => insert.run('roost0', 'b', 0x0a580003, macForAddress(0x0a580002), 'now')).toThrow(/UNIQUE/);
    expect(() => insert.run('roost0', 'a', 0x0a580003, 'y', 'now')).toThrow(/UNIQUE|PRIMARY/);
  });

  it('gives distinct addresses to runtimes leasing at once from their own connections', async () => {
    // Each worker thread loads the module itself (its own module instance, so its own database
    // connection), from the TypeScript source through the repository's source hooks: no build needed.
    const registerTs = new URL('../../../../scripts/ts-register.mjs', import.meta.url).href;
    const ipamTs = fileURLToPath(new URL('./ipam.ts', import.meta.url));
    const dbTs = fileURLToPath(new URL('../state/db.ts', import.meta.url));
    const workers = 8;
    const perWorker = 25;
    const start = new Int32Array(new SharedArrayBuffer(4));
    const script = `
      const { parentPort, workerData } = require('node:worker_threads');
      (async () => {
        await import(workerData.registerTs);
        const { stateDb } = await import(workerData.dbTs);
        const { Ipam } = await import(workerData.ipamTs);
        const ipam = new Ipam(stateDb(workerData.home), { network: 'roost0', subnet: '10.88.0.0/24' });
        parentPort.postMessage({ ready: true });
        Atomics.wait(workerData.start, 0, 0); // every worker starts leasing at the same moment
        const leases = [];
        const errors = [];
        for (let i = 0; i < workerData.perWorker; i++) {
          try {
            leases.push(ipam.lease('w' + workerData.n + '-' + i));
          } catch (e) {
            errors.push(String(e && e.code) + ': ' + e.message);
          }
        }
        parentPort.postMessage({ leases, errors });
      })().catch((e) => parentPort.postMessage({ leases: [], errors: [String(e)] }));
    `;
    stateDb(home); // migrate once here, so the workers race on leases only
    const results: Array<Promise<{ leases: Lease[]; errors: string[] }>> = [];
    const ready: Array<Promise<void>> = [];
    for (let n = 0; n < workers; n++) {
      const worker = new Worker(script, { eval: true, workerData: { n, home, registerTs, dbTs, ipamTs, perWorker, start } });
      let onReady!: () => void;
      ready.push(new Promise((resolve) => (onReady = resolve)));
      results.push(
        new Promise((resolve, reject) => {
          worker.on('message', (m: { ready?: boolean; leases: Lease[]; errors: string[] }) => {
            if (m.ready) onReady();
            else resolve(m);
          });
          worker.on('error', reject);
          worker.on('exit', (code) => reject(new Error(`worker ${n} exited with ${code}`)));
        }),
      );
    }
    await Promise.all(ready);
    Atomics.store(start, 0, 1);
    Atomics.notify(start, 0);
    const all = await Promise.all(results);
    expect(all.flatMap((r) => r.errors)).toEqual([]);
    const leases = all.flatMap((r) => r.leases);
    expect(leases).toHaveLength(workers * perWorker);
    expect(new Set(leases.map((l) => l.address)).size).toBe(workers * perWorker);
    expect(new Set(leases.map((l) => l.mac)).size).toBe(workers * perWorker);
    // No gaps: together they took the lowest 200 addresses after the gateway.
    const last = Math.max(...leases.map((l) => Number(l.address.split('.')[3])));
    expect(last).toBe(workers * perWorker + 1);
    expect(new Ipam(stateDb(home), { network: 'roost0', subnet: '10.88.0.0/24' }).list()).toHaveLength(workers * perWorker);
  });
});
