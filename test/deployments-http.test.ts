import { createServer, connect, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DeploymentInfo } from '@roost/api';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient, validated } from './api-client.js';
import { eventually, expectCode, qemusOf, TestHome } from './helpers.js';

/*
 * The deployments' REST routes through `roost serve`, every response checked
 * against docs/openapi.json by ApiClient, and the same calls through the
 * SDK (client.deployments): the statuses and errors of each route, the
 * service ports the daemon binds, and the round trip of a spec. No VM:
 * every deployment here has 0 replicas, or replicas whose create fails at
 * once (an unknown template). Replicas that run are test/cli-deployments.test.ts's.
 */

type Json = Record<string, unknown>;
type ErrorBody = { error: { code: string; message: string; details?: Json } };

const home = new TestHome();
let daemon: ServeHandle;
let api: ApiClient;
let client: RoostClient;

/** A spec with no replica: nothing boots. */
const idle = (name: string, extra: Json = {}) => ({ name, replicas: 0, command: 'httpd -f -p 8000', ...extra });

/** Resolves true when a TCP connection to 127.0.0.1:port is refused, false when it opens. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

beforeAll(async () => {
  daemon = await serve({ home: home.root });
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
  client = new RoostClient({ host: `unix://${daemon.socketPath}`, token: daemon.token });
});

afterAll(async () => {
  api?.close();
  await client?.close();
  await daemon?.close();
  await eventually(() => qemusOf(home.root).length === 0, 10_000, 'no QEMU process left').catch(() => {});
  await home.cleanup();
});

describe('/v1/deployments', () => {
  it('creates (201, Location), answers an unchanged apply with 200 and the same generation, lists and gets; binds the service port', async () => {
    const before = validated.responses;
    const created = await api.post<DeploymentInfo>('/v1/deployments', idle('web', { ports: ['127.0.0.1::8000'] }));
    expect(created.status, created.text).toBe(201);
    expect(created.headers.location).toBe('/v1/deployments/web');
    expect(created.body).toMatchObject({
      name: 'web',
      generation: 1,
      replicas: 0,
      members: [],
      canRollback: false,
      lastError: null,
      spec: { name: 'web', replicas: 0, restart: 'always', update: { maxSurge: 1, maxUnavailable: 0 }, ports: ['127.0.0.1::8000'] },
    });
    const [port] = created.body.ports;
    expect(port).toMatchObject({ hostIp: '127.0.0.1', guestPort: 8000 });
    expect(port!.hostPort).toBeGreaterThan(0);
    // The daemon listens on it: with no replica, a connection opens and is closed (nothing to balance over).
    expect(await refused(port!.hostPort)).toBe(false);

    const again = await api.post<DeploymentInfo>('/v1/deployments', idle('web', { ports: ['127.0.0.1::8000'] }));
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ generation: 1, ports: [port] });

    const list = await api.get<{ deployments: DeploymentInfo[] }>('/v1/deployments');
    expect(list.status).toBe(200);
    expect(list.body.deployments.map((d) => d.name)).toEqual(['web']);
    const got = await api.get<DeploymentInfo>('/v1/deployments/web');
    expect(got.body).toMatchObject({ name: 'web', generation: 1, ports: [port] });
    expect(got.body.events.map((e) => e.type)).toEqual(['deployment.created']);
    expect(validated.responses - before).toBe(4);
  });

  it('answers 404 for an unknown deployment on every route', async () => {
    for (const [method, path, body] of [
      ['GET', '/v1/deployments/nope', undefined],
      ['POST', '/v1/deployments/nope/scale', { replicas: 1 }],
      ['POST', '/v1/deployments/nope/rollback', undefined],
      ['DELETE', '/v1/deployments/nope', undefined],
    ] as const) {
      const r = await api.request<ErrorBody>(method, path, body === undefined ? {} : { body });
      expect(r.status, `${method} ${path}`).toBe(404);
      expect(r.body.error).toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/no deployment nope/) });
    }
  });

  it('answers 400 for a bad spec or scale, naming the field, and changes nothing', async () => {
    const cases: [string, unknown, RegExp][] = [
      ['/v1/deployments', idle('web', { replicas: 65 }), /replicas: /],
      ['/v1/deployments', idle('web', { replica: 2 }), /replica/],
      ['/v1/deployments', { name: 'web' }, /command: /],
      ['/v1/deployments', idle('Web'), /name: /],
      ['/v1/deployments', idle('web', { health: { http: { port: 8000 }, tcp: { port: 8000 } } }), /health: give exactly one of http, tcp and exec/],
      ['/v1/deployments', idle('web', { ports: ['127.0.0.1:8080:53/udp'] }), /ports\.0: service ports are TCP/],
      ['/v1/deployments', idle('web', { sandbox: { network: 'none' }, ports: ['8000'] }), /ports: service ports need a network/],
      ['/v1/deployments/web/scale', { replicas: -1 }, /replicas: /],
      ['/v1/deployments/web/scale', {}, /replicas: /],
    ];
    for (const [path, body, message] of cases) {
      const r = await api.post<ErrorBody>(path, body);
      expect(r.status, `${path} ${JSON.stringify(body)}`).toBe(400);
      expect(r.body.error.code).toBe('INVALID_ARGUMENT');
      expect(r.body.error.message, JSON.stringify(body)).toMatch(message);
    }
    expect((await api.get<DeploymentInfo>('/v1/deployments/web')).body.generation).toBe(1);
  });

  it('refuses a rollback without a previous spec (409 INVALID_STATE), then rolls back a change and undoes the rollback', async () => {
    const refusedRollback = await api.post<ErrorBody>('/v1/deployments/web/rollback');
    expect(refusedRollback.status).toBe(409);
    expect(refusedRollback.body.error).toMatchObject({ code: 'INVALID_STATE', message: expect.stringMatching(/no previous spec/) });

    const first = (await api.get<DeploymentInfo>('/v1/deployments/web')).body.revision;
    const changed = await api.post<DeploymentInfo>('/v1/deployments', idle('web', { ports: ['127.0.0.1::8000'], command: 'httpd -f -p 8001' }));
    expect(changed.status).toBe(200);
    expect(changed.body).toMatchObject({ generation: 2, canRollback: true, spec: { command: 'httpd -f -p 8001' } });
    expect(changed.body.revision).not.toBe(first);
    const back = await api.post<DeploymentInfo>('/v1/deployments/web/rollback');
    expect(back.status).toBe(200);
    expect(back.body).toMatchObject({ generation: 3, revision: first, canRollback: true, spec: { command: 'httpd -f -p 8000' } });
    const undone = await api.post<DeploymentInfo>('/v1/deployments/web/rollback');
    expect(undone.status).toBe(200);
    expect(undone.body).toMatchObject({ generation: 4, spec: { command: 'httpd -f -p 8001' } });
    expect(undone.body.events.map((e) => e.type)).toEqual(['deployment.created', 'deployment.updated', 'deployment.rolledback', 'deployment.rolledback']);
  });

  it('answers 503 UNAVAILABLE for a service port another program holds, and writes nothing', async () => {
    const holder: Server = createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    try {
      const taken = (holder.address() as AddressInfo).port;
      const r = await api.post<ErrorBody>('/v1/deployments', idle('clash', { ports: [`127.0.0.1:${taken}:8000`] }));
      expect(r.status).toBe(503);
      expect(r.body.error).toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(new RegExp(`127\\.0\\.0\\.1:${taken} is in use`)) });
      expect((await api.get('/v1/deployments/clash')).status).toBe(404);
    } finally {
      await new Promise((r) => holder.close(r));
    }
  });

  it('shows a failing create in lastError (an unknown template: no VM), then scales back to 0', async () => {
    const created = await api.post<DeploymentInfo>('/v1/deployments', idle('broken', { replicas: 1, sandbox: { template: 'no-such-template' } }));
    expect(created.status).toBe(201);
    let info!: DeploymentInfo;
    await eventually(
      async () => {
        info = (await api.get<DeploymentInfo>('/v1/deployments/broken')).body;
        return info.lastError !== null;
      },
      30_000,
      'the failed create in lastError',
    );
    expect(info.lastError).toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/no-such-template/), failures: expect.any(Number) });
    expect(info).toMatchObject({ replicas: 0, observedGeneration: 0 });
    const scaled = await api.post<DeploymentInfo>('/v1/deployments/broken/scale', { replicas: 0 });
    expect(scaled.status).toBe(200);
    expect(scaled.body).toMatchObject({ generation: 2, spec: { replicas: 0 }, canRollback: false });
    await eventually(async () => (await api.get<DeploymentInfo>('/v1/deployments/broken')).body.observedGeneration === 2, 30_000, 'scaled to 0');
    expect((await api.delete('/v1/deployments/broken')).status).toBe(204);
  });

  it('removes a deployment (204): its service port closes, and it is gone', async () => {
    const port = (await api.get<DeploymentInfo>('/v1/deployments/web')).body.ports[0]!.hostPort;
    const removed = await api.delete('/v1/deployments/web');
    expect(removed.status).toBe(204);
    expect(removed.text).toBe('');
    expect(await refused(port)).toBe(true);
    expect((await api.get('/v1/deployments/web')).status).toBe(404);
    expect((await api.get<{ deployments: unknown[] }>('/v1/deployments')).body.deployments).toEqual([]);
  });
});

describe('client.deployments', () => {
  it('round-trips apply, list, get, scale, rollback and remove with the routes, errors with their codes', async () => {
    const applied = await client.deployments.apply({ name: 'sdk', replicas: 0, command: ['sleep', 'infinity'], labels: { team: 'a' } });
    expect(applied).toMatchObject({ name: 'sdk', generation: 1, spec: { command: ['sleep', 'infinity'], labels: { team: 'a' }, ports: [] } });
    expect((await client.deployments.list()).map((d) => d.name)).toEqual(['sdk']);
    expect(await client.deployments.get('sdk')).toMatchObject({ name: 'sdk', revision: applied.revision });
    await expectCode(client.deployments.rollback('sdk'), 'INVALID_STATE', /no previous spec/);
    await expectCode(client.deployments.get('nope'), 'NOT_FOUND', /no deployment nope/);
    await expectCode(client.deployments.scale('sdk', 65), 'INVALID_ARGUMENT', /replicas/);
    await expectCode(client.deployments.apply({ name: 'sdk', command: 'true', replicas: -1 }), 'INVALID_ARGUMENT', /replicas/);

    const relabelled = await client.deployments.apply({ name: 'sdk', replicas: 0, command: ['sleep', 'infinity'], labels: { team: 'b' } });
    expect(relabelled).toMatchObject({ generation: 2, canRollback: true });
    expect(relabelled.revision).not.toBe(applied.revision);
    const scaled = await client.deployments.scale('sdk', 0);
    expect(scaled.generation).toBe(2);
    const rolledBack = await client.deployments.rollback('sdk');
    expect(rolledBack).toMatchObject({ generation: 3, revision: applied.revision, spec: { labels: { team: 'a' } } });
    await client.deployments.remove('sdk');
    await expectCode(client.deployments.get('sdk'), 'NOT_FOUND');
    await expectCode(client.deployments.remove('sdk'), 'NOT_FOUND');
  });
});
