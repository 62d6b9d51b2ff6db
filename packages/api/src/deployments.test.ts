import { describe, expect, it } from 'vitest';
import { parseDeploymentSpec } from './deployments.js';
import { isRoostError, type RoostError } from './errors.js';

const WEB = `# the issue's example
name: web
replicas: 2
sandbox: { image: busybox, cpus: 1, memoryMiB: 256, env: { A: b } }
command: ["httpd", "-f", "-p", "8000"]
ports: ["127.0.0.1:8080:8000"]
health:
  http: { port: 8000, path: /healthz }
  intervalMs: 1000
restart: on-failure
update: { maxSurge: 1, maxUnavailable: 0 }
`;

function failure(text: string, source?: string): RoostError {
  try {
    parseDeploymentSpec(text, source);
  } catch (e) {
    if (isRoostError(e)) return e;
    throw e;
  }
  throw new Error('expected the spec to be refused');
}

describe('deployment specs', () => {
  it('parses YAML and JSON, with defaults applied', () => {
    const spec = parseDeploymentSpec(WEB, 'web.yaml');
    expect(spec).toMatchObject({
      name: 'web',
      replicas: 2,
      sandbox: { image: 'busybox', cpus: 1, memoryMiB: 256, env: { A: 'b' } },
      command: ['httpd', '-f', '-p', '8000'],
      ports: ['127.0.0.1:8080:8000'],
      health: { http: { port: 8000, path: '/healthz' }, intervalMs: 1000, timeoutMs: 2000, retries: 3, startPeriodMs: 0 },
      restart: 'on-failure',
      update: { maxSurge: 1, maxUnavailable: 0 },
    });
    const json = parseDeploymentSpec(JSON.stringify({ name: 'job', command: 'sleep 100' }));
    expect(json).toMatchObject({
      name: 'job',
      replicas: 1,
      sandbox: {},
      command: 'sleep 100',
      ports: [],
      restart: 'always',
      update: { maxSurge: 1, maxUnavailable: 0 },
    });
    expect(json.health).toBeUndefined();
  });

  it('names the file, the line and the field of each problem', () => {
    const e = failure(WEB.replace('replicas: 2', 'replicas: 200').replace('intervalMs: 1000', 'intervalMs: 1000\n  bogus: 1'), 'web.yaml');
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toMatch(/^invalid deployment spec:\nweb\.yaml:3: replicas: .*64/m);
    expect(e.message).toMatch(/web\.yaml:10: health\.bogus: Unrecognized key/m);
    expect(e.details?.fields).toEqual(expect.arrayContaining([expect.objectContaining({ path: 'replicas', line: 3 })]));
    // A missing field is reported at the mapping it is missing from.
    expect(failure('name: web\nreplicas: 1\n', 'w.yaml').message).toMatch(/w\.yaml:1: command: /);
    // Items of lists by index.
    expect(failure('name: web\ncommand: x\nports:\n  - "8080:80"\n  - "53/udp"\n', 'w.yaml').message).toMatch(/w\.yaml:5: ports\.1: service ports are TCP/);
    expect(failure('name: web\ncommand: x\nports: ["8080:80", "127.0.0.1:8080:81"]\n').message).toMatch(/ports\.1: host port 127\.0\.0\.1:8080 is given twice/);
  });

  it('refuses what cannot work: two health probes, no update budget, template with image, bad names, syntax errors', () => {
    expect(failure('name: w\ncommand: x\nhealth: { tcp: { port: 1 }, exec: ["true"] }\n').message).toMatch(/health: give exactly one of http, tcp and exec/);
    expect(failure('name: w\ncommand: x\nupdate: { maxSurge: 0, maxUnavailable: 0 }\n').message).toMatch(
      /update: maxSurge and maxUnavailable cannot both be 0/,
    );
    expect(failure('name: w\ncommand: x\nsandbox: { image: a, template: b }\n').message).toMatch(/sandbox\.template: give template or image/);
    expect(failure('name: Web_1\ncommand: x\n').message).toMatch(/name: must be 1-63 lower-case/);
    expect(failure('name: w\ncommand: x\nsandbox: { detached: true }\n').message).toMatch(/sandbox\.detached/);
    expect(failure('name: w\ncommand: [x\n', 'bad.yaml').message).toMatch(/^invalid deployment spec:\nbad\.yaml:\d+: /m);
    expect(failure('name: w\nname: v\ncommand: x\n').message).toMatch(/unique|duplicate/i);
    expect(failure('- just\n- a list\n', 'l.yaml').message).toMatch(/l\.yaml:1: must be a mapping/);
  });
});
