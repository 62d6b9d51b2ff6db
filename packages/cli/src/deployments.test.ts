import { describe, expect, it } from 'vitest';
import { DeploymentSpecSchema, type DeploymentInfo, type DeploymentSpecInput, type ReplicaInfo } from '@roost/api';
import { deploymentTable, describeDeployment, formatServicePort, ownerlessNote, rolledOut, summary } from './deployments.js';

const minutesAgo = (m: number) => new Date(Date.now() - m * 60_000).toISOString();

function deployment(spec: DeploymentSpecInput, status: Partial<DeploymentInfo> = {}): DeploymentInfo {
  return {
    name: spec.name,
    spec: DeploymentSpecSchema.parse(spec),
    revision: '0123abcd',
    generation: 1,
    observedGeneration: 1,
    replicas: 0,
    healthyReplicas: 0,
    updatedReplicas: 0,
    ports: [],
    members: [],
    canRollback: false,
    createdAt: minutesAgo(5),
    updatedAt: minutesAgo(5),
    lastError: null,
    events: [],
    ...status,
  };
}

const replica = (id: string, r: Partial<ReplicaInfo> = {}): ReplicaInfo => ({
  id,
  revision: '0123abcd',
  current: true,
  state: 'healthy',
  restarts: 0,
  startedAt: minutesAgo(4),
  lastProbe: null,
  lastExit: null,
  ...r,
});

const web = deployment(
  {
    name: 'web',
    replicas: 2,
    command: ['httpd', '-f', '-p', '8000', '-h', '/srv/my www'],
    ports: ['127.0.0.1:8080:8000', '127.0.0.1::9000'],
    health: { http: { port: 8000 } },
    sandbox: { image: 'alpine:3.20', memoryMiB: 512 },
  },
  {
    generation: 3,
    observedGeneration: 2,
    replicas: 2,
    healthyReplicas: 1,
    updatedReplicas: 1,
    ports: [
      { hostIp: '127.0.0.1', hostPort: 8080, guestPort: 8000, spec: '127.0.0.1:8080:8000' },
      { hostIp: '127.0.0.1', hostPort: 0, guestPort: 9000, spec: '127.0.0.1::9000' },
    ],
    members: [
      replica('aaaaaaaaaaaa', { lastProbe: { ok: true, detail: 'HTTP 200', at: minutesAgo(0), failures: 0 } }),
      replica('bbbbbbbbbbbb', {
        revision: '99990000',
        current: false,
        state: 'restarting',
        restarts: 2,
        lastProbe: { ok: false, detail: 'connection refused', at: minutesAgo(1), failures: 3 },
        lastExit: { exitCode: 1, signal: null, at: minutesAgo(1), output: 'line 1\nhttpd: bind: Address in use\n' },
      }),
    ],
    canRollback: true,
    lastError: { code: 'BOOT_FAILED', message: 'the guest did not start', at: minutesAgo(2), failures: 2, retryAt: null },
    events: [
      {
        id: 7,
        type: 'replica.healthy',
        time: '2025-01-01T00:00:00.000Z',
        sandboxId: 'aaaaaaaaaaaa',
        data: { deployment: 'web', detail: 'HTTP 200' },
      },
    ] as DeploymentInfo['events'],
  },
);

describe('roost deployments output', () => {
  it('writes a service port as host -> guest, and one not bound yet as such', () => {
    expect(formatServicePort(web.ports[0]!)).toBe('127.0.0.1:8080 -> 8000');
    expect(formatServicePort(web.ports[1]!)).toBe('127.0.0.1:(any free port) -> 9000');
  });

  it('lists name, healthy/desired, up to date, observed/generation, ports and age', () => {
    const idle = deployment({ name: 'idle', replicas: 0, command: 'true' });
    expect(deploymentTable([web, idle]).split('\n')).toEqual([
      'NAME  REPLICAS  UP-TO-DATE  GENERATION  PORTS                                                 AGE',
      'web   1/2       1           2/3         127.0.0.1:8080->8000,127.0.0.1:(any free port)->9000  5m',
      'idle  0/0       0           1/1         -                                                     5m',
      '',
    ]);
  });

  it('sums a change up: name, generation, healthy replicas, a line per port', () => {
    expect(summary(web)).toBe('web: generation 3, 1/2 replicas healthy (rolling out)\n  127.0.0.1:8080 -> 8000\n  127.0.0.1:(any free port) -> 9000\n');
  });

  it('describes a deployment: spec in short, replicas with state, probe and exit, last output, events', () => {
    const text = describeDeployment(web);
    expect(text).toMatch(/^Name: +web\n/);
    expect(text).toMatch(/\nGeneration: +3 \(observed 2: rolling out\)\n/);
    expect(text).toMatch(/\nReplicas: +2 wanted: 2 existing, 1 healthy, 1 up to date\n/);
    expect(text).toMatch(/\nCommand: +httpd -f -p 8000 -h '\/srv\/my www'\n/);
    expect(text).toMatch(/\nSandbox: +image alpine:3\.20, 512 MiB\n/);
    expect(text).toMatch(/\nPorts: +127\.0\.0\.1:8080 -> 8000, 127\.0\.0\.1:\(any free port\) -> 9000 \(round-robin\)\n/);
    expect(text).toMatch(/\nHealth: +http :8000\/ every 5000 ms \(timeout 2000 ms, unhealthy after 3 failures\)\n/);
    expect(text).toMatch(/\nUpdate: +maxSurge 1, maxUnavailable 0\n/);
    expect(text).toMatch(/\nRollback: +possible/);
    expect(text).toMatch(/\nLast error: +BOOT_FAILED: the guest did not start \(2x, 2m ago\)\n/);
    expect(text).toMatch(/\n {2}ID +REVISION +STATE +RESTARTS +STARTED +LAST PROBE +LAST EXIT\n/);
    expect(text).toMatch(/\n {2}aaaaaaaaaaaa +0123abcd +healthy +0 +4m ago +ok: HTTP 200 +-\n/);
    expect(text).toMatch(/\n {2}bbbbbbbbbbbb +99990000 \(old\) +restarting +2 +4m ago +failed \(3x\): connection refused +exit 1 1m ago\n/);
    expect(text).toContain('\nLast output of bbbbbbbbbbbb (exit 1):\n  line 1\n  httpd: bind: Address in use\n');
    expect(text).toMatch(/\nEvents:\n {2}2025-01-01T00:00:00\.000Z +7 +replica\.healthy +aaaaaaaaaaaa +deployment=web detail=HTTP 200\n$/);
  });

  it('describes one without replicas, health check or events', () => {
    const text = describeDeployment(deployment({ name: 'idle', replicas: 0, command: 'sleep infinity' }));
    expect(text).toMatch(/\nHealth: +- \(healthy once its workload starts\)\n/);
    expect(text).toMatch(/\nSandbox: +the defaults/);
    expect(text).toMatch(/\nReplicas:\n {2}\(none\)\n/);
    expect(text).toMatch(/\nEvents:\n {2}\(none\)\n$/);
  });

  it('counts a deployment rolled out only when every wanted replica is current and healthy', () => {
    expect(rolledOut(web)).toBe(false);
    const done = deployment(
      { name: 'web', replicas: 1, command: 'true' },
      { replicas: 1, healthyReplicas: 1, updatedReplicas: 1, members: [replica('aaaaaaaaaaaa')] },
    );
    expect(rolledOut(done)).toBe(true);
    expect(rolledOut({ ...done, observedGeneration: 0 })).toBe(false);
    expect(rolledOut({ ...done, members: [...done.members, replica('cccccccccccc', { state: 'removing' })] })).toBe(false);
    expect(rolledOut(deployment({ name: 'idle', replicas: 0, command: 'true' }))).toBe(true);
  });

  it('says that nothing runs a deployment written without a daemon', () => {
    expect(ownerlessNote('web')).toBe(
      'roost: note: no daemon runs, so nothing runs deployment web until a daemon (`roost serve`) or an embedded runtime opens the home\n',
    );
  });
});
