import { spawn, type ChildProcess } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEPLOYMENT_LABEL, type DeploymentInfo, type DeploymentSpecInput, type RoostEvent } from '@roost/api';
import { RoostClient } from '@roost/client';
import { alive, eventually, httpGet, qemusOf, ROOST_BIN, TestHome } from './helpers.js';

/*
 * Deployments with a real daemon (`roost serve` in a child process, so that
 * it can be SIGKILLed) and real VMs running busybox httpd: service ports
 * balanced over healthy replicas, replacement of a replica whose QEMU is
 * killed or whose HTTP check fails (with a client requesting throughout),
 * scaling, a rolling update and its rollback with the service answering
 * throughout, and a daemon killed mid-reconcile that comes back to exactly
 * the desired replicas.
 */

const home = new TestHome();
let daemon: ChildProcess | null = null;
let client: RoostClient;

/** Starts `roost serve` on the test's home; resolves once it answers. */
async function startDaemon(): Promise<void> {
  const log = openSync(join(home.root, 'daemon-test.log'), 'a');
  daemon = spawn(process.execPath, [ROOST_BIN, 'serve'], { env: { ...home.env, ROOST_AUTO_DAEMON: '0' }, stdio: ['ignore', log, log] });
  client = new RoostClient({ home: home.root });
  await eventually(
    async () =>
      client.health().then(
        () => true,
        () => false,
      ),
    30_000,
    'the daemon answering',
  );
}

async function stopDaemon(signal: NodeJS.Signals): Promise<void> {
  const d = daemon;
  daemon = null;
  if (!d?.pid || !alive(d.pid)) return;
  const exited = new Promise((r) => d.once('exit', r));
  d.kill(signal);
  await exited;
}

/** The workload: busybox httpd serving a page that names the replica (`tag:<random>`), and /healthz. */
function httpd(tag: string): string {
  return `mkdir -p /tmp/www && echo "${tag}:$(cat /proc/sys/kernel/random/uuid)" > /tmp/www/index.html && echo ok > /tmp/www/healthz && exec httpd -f -p 8000 -h /tmp/www`;
}

const spec = (over: Partial<DeploymentSpecInput> = {}): DeploymentSpecInput => ({
  name: 'web',
  replicas: 2,
  sandbox: { memoryMiB: 128 },
  command: httpd('v1'),
  ports: ['127.0.0.1::8000'],
  health: { http: { port: 8000, path: '/healthz' }, intervalMs: 500, timeoutMs: 1_000, retries: 2 },
  ...over,
});

/** Waits until `n` replicas are healthy, all of the current revision, the generation observed; fails at once on a recorded error. */
async function settled(n: number, timeoutMs = 90_000): Promise<DeploymentInfo> {
  let info!: DeploymentInfo;
  await eventually(
    async () => {
      info = await client.deployments.get('web');
      return (
        info.healthyReplicas === n &&
        info.members.length === n &&
        info.members.every((m) => m.current && m.state === 'healthy') &&
        info.observedGeneration === info.generation
      );
    },
    timeoutMs,
    `${n} healthy replicas`,
  ).catch((e: Error) => {
    throw new Error(`${e.message}: ${JSON.stringify({ ...info, spec: undefined }, null, 1).slice(0, 4000)}`);
  });
  return info;
}

/** The port clients use. */
function servicePort(info: DeploymentInfo): number {
  return info.ports[0]!.hostPort;
}

/**
 * A client requesting through the service port until stopped, each request
 * on a new connection and retried (up to 3 tries, 200 ms apart) as a client
 * that retries would. Counts requests that failed every try.
 */
function steadyClient(port: number): { stop(): Promise<{ ok: number; failed: number; bodies: string[] }> } {
  let running = true;
  let ok = 0;
  let failed = 0;
  const bodies: string[] = [];
  const loop = (async () => {
    while (running) {
      let body: string | null = null;
      for (let attempt = 0; attempt < 3 && body === null; attempt++) {
        body = await httpGet(port, 5_000);
        if (body === null) await new Promise((r) => setTimeout(r, 200));
      }
      if (body === null) failed++;
      else {
        ok++;
        bodies.push(body.trim());
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { ok, failed, bodies };
    },
  };
}

async function eventsOf(types: string[]): Promise<RoostEvent[]> {
  const out: RoostEvent[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 300);
  try {
    for await (const e of client.events({ after: 0, signal: ac.signal })) if (types.includes(e.type)) out.push(e);
  } catch {
    // aborted
  }
  return out;
}

beforeAll(async () => {
  await startDaemon();
});

afterAll(async () => {
  await client?.deployments.remove('web').catch(() => {});
  await stopDaemon('SIGTERM');
  await home.cleanup();
  expect(qemusOf(home.root), `QEMUs left in ${home.root}`).toEqual([]);
});

describe('deployments', () => {
  let port: number;

  it('serves 2 healthy replicas of busybox httpd behind one service port, spreading requests over both', async () => {
    const applied = await client.deployments.apply(spec());
    expect(applied).toMatchObject({ name: 'web', generation: 1 });
    const info = await settled(2);
    port = servicePort(info);
    expect(port).toBeGreaterThan(0);
    const bodies = new Set<string>();
    for (let i = 0; i < 6; i++) bodies.add((await httpGet(port))!.trim());
    // Round robin: both replicas answered.
    expect(bodies.size).toBe(2);
    for (const b of bodies) expect(b).toMatch(/^v1:/);
    const sandboxes = await client.list({ labels: [`${DEPLOYMENT_LABEL}=web`] });
    expect(sandboxes.map((s) => s.id).sort()).toEqual(info.members.map((m) => m.id).sort());
  });

  it('replaces a replica whose QEMU is SIGKILLed, with no failed request to a client that retries', async () => {
    const before = await client.deployments.get('web');
    const victim = before.members[0]!.id;
    const pid = (await client.get(victim)).info.pid!;
    const load = steadyClient(port);
    await new Promise((r) => setTimeout(r, 500));
    process.kill(pid, 'SIGKILL');
    await eventually(async () => !(await client.deployments.get('web')).members.some((m) => m.id === victim), 60_000, 'the killed replica gone');
    const after = await settled(2);
    await new Promise((r) => setTimeout(r, 500));
    const seen = await load.stop();
    expect(seen.failed).toBe(0);
    expect(seen.ok).toBeGreaterThan(5);
    expect(after.members.some((m) => m.id === victim)).toBe(false);
    const replaced = (await eventsOf(['replica.replaced'])).filter((e) => e.data.replaced === victim);
    expect(replaced).toHaveLength(1);
  });

  it('replaces a replica whose HTTP health check starts failing', async () => {
    const before = await client.deployments.get('web');
    const sick = before.members[1]!.id;
    await (await client.get(sick)).commands.run('rm /tmp/www/healthz');
    await eventually(async () => !(await client.deployments.get('web')).members.some((m) => m.id === sick), 60_000, 'the unhealthy replica gone');
    await settled(2);
    const types = (await eventsOf(['replica.unhealthy', 'replica.replaced']))
      .filter((e) => (e.type === 'replica.unhealthy' && e.sandboxId === sick) || e.data.replaced === sick)
      .map((e) => e.type);
    expect(types).toEqual(['replica.unhealthy', 'replica.replaced']);
  });

  it('scales 2 -> 3 -> 1', async () => {
    await client.deployments.scale('web', 3);
    const three = await settled(3);
    const bodies = new Set<string>();
    for (let i = 0; i < 9; i++) bodies.add((await httpGet(port))!.trim());
    expect(bodies.size).toBe(3);
    await client.deployments.scale('web', 1);
    const one = await settled(1);
    expect(three.members.map((m) => m.id)).toContain(one.members[0]!.id);
    expect(await client.list({ labels: [`${DEPLOYMENT_LABEL}=web`] })).toHaveLength(1);
  });

  it('rolls out a changed command with the service answering throughout, then rolls back', async () => {
    await client.deployments.scale('web', 2);
    await settled(2);
    const load = steadyClient(port);
    const updated = await client.deployments.apply(spec({ command: httpd('v2') }));
    expect(updated.canRollback).toBe(true);
    const v2 = await settled(2);
    expect(v2.generation).toBe(updated.generation);
    // Every replica now serves v2.
    for (let i = 0; i < 4; i++) expect((await httpGet(port))!.trim()).toMatch(/^v2:/);
    const back = await client.deployments.rollback('web');
    expect(back.spec.command).toBe(httpd('v1'));
    await settled(2);
    for (let i = 0; i < 4; i++) expect((await httpGet(port))!.trim()).toMatch(/^v1:/);
    const seen = await load.stop();
    expect(seen.failed).toBe(0);
    expect(seen.bodies.some((b) => b.startsWith('v2:'))).toBe(true);
  });

  it('a daemon SIGKILLed mid-reconcile, started again, ends with exactly the desired replicas and no orphans', async () => {
    await client.deployments.scale('web', 3);
    // Killed while the third replica is being made.
    await eventually(
      async () => (await client.list({ labels: [`${DEPLOYMENT_LABEL}=web`] })).some((s) => s.status === 'creating'),
      60_000,
      'the third replica being created',
    );
    await stopDaemon('SIGKILL');
    await startDaemon();
    const info = await settled(3, 120_000);
    // The service port is bound again (the chosen host port is kept across owners).
    expect(servicePort(info)).toBe(port);
    expect((await httpGet(port))?.trim()).toMatch(/^v1:/);
    const labelled = await client.list({ labels: [`${DEPLOYMENT_LABEL}=web`] });
    expect(labelled.map((s) => s.id).sort()).toEqual(info.members.map((m) => m.id).sort());
    expect(labelled.every((s) => s.status === 'running')).toBe(true);
    // Nothing else runs in the home.
    expect((await client.list()).filter((s) => s.status === 'running')).toHaveLength(3);
    expect(qemusOf(home.root)).toHaveLength(3);

    await client.deployments.remove('web');
    expect(await client.list({ labels: [`${DEPLOYMENT_LABEL}=web`] })).toEqual([]);
    await eventually(() => qemusOf(home.root).length === 0, 30_000, 'the replicas gone');
  });
});
