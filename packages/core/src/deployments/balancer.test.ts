import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ServiceBalancer, type BalancerBackend } from './balancer.js';

/** A TCP server on 127.0.0.1 that answers each connection with its name, then echoes. */
async function replica(name: string): Promise<{ backend: BalancerBackend; server: net.Server; port: number }> {
  const server = net.createServer((s) => {
    s.write(`${name}\n`);
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return { server, port, backend: { id: name, connect: () => net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }) } };
}

/** Connects to the balancer and reads the first line (the replica's name); null if the connection is closed first. */
function hello(port: number, keep?: net.Socket[]): Promise<string | null> {
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port });
    let data = '';
    c.on('data', (d) => {
      data += d.toString();
      if (data.includes('\n')) {
        resolve(data.split('\n')[0]!);
        if (keep) keep.push(c);
        else c.end();
      }
    });
    c.on('error', () => resolve(null));
    c.on('close', () => resolve(null));
  });
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function setup(names: string[], strategy?: 'round-robin' | 'least-connections') {
  const replicas = await Promise.all(names.map(replica));
  for (const r of replicas) cleanups.push(() => void r.server.close());
  const lb = new ServiceBalancer({ host: '127.0.0.1', port: 0, ...(strategy ? { strategy } : {}) });
  cleanups.push(() => lb.close());
  const { port } = await lb.listen();
  lb.setBackends(replicas.map((r) => r.backend));
  return { lb, port, replicas };
}

describe('ServiceBalancer', () => {
  it('spreads connections round robin and relays both ways, half-close included', async () => {
    const { port } = await setup(['a', 'b', 'c']);
    const seen = [];
    for (let i = 0; i < 6; i++) seen.push(await hello(port));
    expect(seen).toEqual(['a', 'b', 'c', 'a', 'b', 'c']);
    // A client that sends its request and half-closes still gets everything back.
    const echoed = await new Promise<string>((resolve) => {
      const c = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      let data = '';
      c.on('data', (d) => (data += d.toString()));
      c.on('end', () => resolve(data));
      c.end('x'.repeat(100_000));
    });
    expect(echoed.slice(2)).toBe('x'.repeat(100_000));
  });

  it('skips a replica that refuses (it just died): the client sees no failure', async () => {
    const { port, replicas } = await setup(['a', 'b']);
    await new Promise<void>((r) => replicas[0]!.server.close(() => r()));
    const seen = [];
    for (let i = 0; i < 4; i++) seen.push(await hello(port));
    expect(seen).toEqual(['b', 'b', 'b', 'b']);
  });

  it('with no replica up, closes connections at once and counts them', async () => {
    const { lb, port } = await setup([]);
    expect(await hello(port)).toBeNull();
    expect(lb.stats().refused).toBe(1);
  });

  it('least-connections prefers the replica with the fewest open connections', async () => {
    const { port } = await setup(['a', 'b'], 'least-connections');
    const held: net.Socket[] = [];
    cleanups.push(() => held.forEach((s) => s.destroy()));
    expect(await hello(port, held)).toBe('a');
    expect(await hello(port, held)).toBe('b');
    held[0]!.destroy();
    await new Promise((r) => setTimeout(r, 50));
    expect(await hello(port, held)).toBe('a');
  });

  it('drains a replica: no new connections, open ones go on, cut at the deadline', async () => {
    const { lb, port, replicas } = await setup(['a', 'b']);
    const held: net.Socket[] = [];
    cleanups.push(() => held.forEach((s) => s.destroy()));
    expect(await hello(port, held)).toBe('a');
    const drained = lb.drain('a', 300);
    expect(await hello(port)).toBe('b');
    expect(await hello(port)).toBe('b');
    // The held connection to a still works while draining.
    const echo = new Promise<string>((r) => held[0]!.once('data', (d) => r(d.toString())));
    held[0]!.write('ping');
    expect(await echo).toBe('ping');
    const closed = new Promise((r) => held[0]!.once('close', r));
    await drained;
    await closed;
    expect(lb.stats().open.a).toBeUndefined();
    // Given again, it takes connections again.
    lb.setBackends(replicas.map((r) => r.backend));
    const again = [await hello(port), await hello(port)];
    expect(again.sort()).toEqual(['a', 'b']);
  });

  it('a taken port is UNAVAILABLE', async () => {
    const { port } = await setup(['a']);
    const other = new ServiceBalancer({ host: '127.0.0.1', port });
    await expect(other.listen()).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });
});
