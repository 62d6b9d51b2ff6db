import { describe, expect, it } from 'vitest';
import { DeploymentSpecSchema, RoostError, type DeploymentInfo, type DeploymentsApi, type DeploymentSpecInput, type McpLimits } from '@roost/api';
import { callTool, listTools } from './server.js';
import { McpSession, type McpRuntime } from './session.js';

const LIMITS: McpLimits = { outputBytes: 8, readBytes: 64, maxSandboxes: 2 };

/** Deployments kept in a map, with the calls made (the reconcile loop is core's, tested there and in test/cli-deployments.test.ts). */
function fakeDeployments() {
  const all = new Map<string, DeploymentInfo>();
  const calls: string[] = [];
  const info = (input: DeploymentSpecInput, generation: number): DeploymentInfo => {
    const spec = DeploymentSpecSchema.parse(input);
    const now = new Date(0).toISOString();
    return {
      name: spec.name,
      spec,
      revision: 'r1',
      generation,
      observedGeneration: 0,
      replicas: 0,
      healthyReplicas: 0,
      updatedReplicas: 0,
      ports: [],
      members: [],
      canRollback: generation > 1,
      createdAt: now,
      updatedAt: now,
      lastError: null,
      events: [],
    };
  };
  const get = (name: string) => {
    const d = all.get(name);
    if (!d) throw new RoostError('NOT_FOUND', `no deployment ${name}`);
    return d;
  };
  const deployments: DeploymentsApi = {
    apply: async (spec) => {
      calls.push(`apply ${JSON.stringify(spec)}`);
      const d = info(spec, (all.get(spec.name)?.generation ?? 0) + 1);
      all.set(d.name, d);
      return d;
    },
    list: async () => [...all.values()],
    get: async (name) => get(name),
    scale: async (name, replicas) => {
      calls.push(`scale ${name} ${replicas}`);
      const d = { ...get(name), generation: get(name).generation + 1 };
      d.spec = { ...d.spec, replicas };
      all.set(name, d);
      return d;
    },
    rollback: async (name) => {
      if (!get(name).canRollback) throw new RoostError('INVALID_STATE', `deployment ${name} has no previous spec to roll back to`);
      return get(name);
    },
    remove: async (name) => {
      get(name);
      calls.push(`remove ${name}`);
      all.delete(name);
    },
  };
  return { runtime: { deployments } as unknown as McpRuntime, calls };
}

describe('MCP deployment tools', () => {
  const setup = () => {
    const { runtime, calls } = fakeDeployments();
    const session = new McpSession(runtime, LIMITS);
    const call = (name: string, args: unknown) => callTool(name, args, { session, signal: new AbortController().signal, progress: null });
    const text = async (name: string, args: unknown) => ((await call(name, args)).content[0] as { text: string }).text;
    return { call, text, calls };
  };

  it('are listed, read-only ones marked so', () => {
    const tools = new Map(listTools().map((t) => [t.name, t]));
    for (const name of ['deployment_apply', 'deployment_list', 'deployment_get', 'deployment_scale', 'deployment_rollback', 'deployment_remove']) {
      expect(tools.has(name), name).toBe(true);
    }
    expect(tools.get('deployment_list')!.annotations).toMatchObject({ readOnlyHint: true });
    expect(tools.get('deployment_remove')!.annotations).toMatchObject({ readOnlyHint: false, destructiveHint: true });
    expect(Object.keys(tools.get('deployment_apply')!.inputSchema.properties!)).toEqual(['spec', 'yaml']);
  });

  it('apply takes the spec as an object or as YAML, with defaults applied, and refuses both or neither', async () => {
    const { call, text, calls } = setup();
    const web = await call('deployment_apply', { spec: { name: 'web', command: 'httpd -f -p 8000', ports: ['127.0.0.1::8000'] } });
    expect(web.isError).toBeUndefined();
    expect(web.structuredContent).toMatchObject({
      name: 'web',
      generation: 1,
      spec: { replicas: 1, restart: 'always', update: { maxSurge: 1, maxUnavailable: 0 } },
    });
    const yaml = await call('deployment_apply', { yaml: 'name: api\nreplicas: 2\ncommand: [sleep, infinity]\n' });
    expect(yaml.structuredContent).toMatchObject({ name: 'api', spec: { replicas: 2, command: ['sleep', 'infinity'] } });
    expect(calls).toHaveLength(2);
    expect(await text('deployment_apply', {})).toMatch(/^INVALID_ARGUMENT: .*give the spec as `spec`/);
    expect(await text('deployment_apply', { spec: { name: 'x', command: 'true' }, yaml: 'name: x' })).toMatch(/^INVALID_ARGUMENT: .*not both/);
    expect(calls).toHaveLength(2);
  });

  it('names the field of a bad spec, and its line in YAML', async () => {
    const { text, calls } = setup();
    expect(await text('deployment_apply', { spec: { name: 'web', command: 'true', replicas: 65 } })).toMatch(/^INVALID_ARGUMENT: .*spec\.replicas: /);
    expect(await text('deployment_apply', { yaml: 'name: web\ncommand: "true"\nreplicas: 65\n' })).toMatch(/^INVALID_ARGUMENT: .*\nyaml:3: replicas: /);
    expect(await text('deployment_apply', { yaml: 'name: web\n  bad: [\n' })).toMatch(/^INVALID_ARGUMENT: invalid deployment spec:\nyaml:\d+: /);
    expect(calls).toEqual([]);
  });

  it('gets, lists, scales, rolls back and removes through runtime.deployments, errors as results with their code', async () => {
    const { call, text, calls } = setup();
    await call('deployment_apply', { spec: { name: 'web', command: 'true', replicas: 0 } });
    expect((await call('deployment_list', {})).structuredContent).toMatchObject({ deployments: [{ name: 'web' }] });
    expect((await call('deployment_get', { name: 'web' })).structuredContent).toMatchObject({ name: 'web', generation: 1 });
    expect(await text('deployment_get', { name: 'nope' })).toBe('NOT_FOUND: no deployment nope');
    expect(await text('deployment_rollback', { name: 'web' })).toMatch(/^INVALID_STATE: deployment web has no previous spec/);
    expect((await call('deployment_scale', { name: 'web', replicas: 3 })).structuredContent).toMatchObject({ generation: 2, spec: { replicas: 3 } });
    expect(await text('deployment_scale', { name: 'web', replicas: 65 })).toMatch(/^INVALID_ARGUMENT: .*replicas: /);
    expect((await call('deployment_remove', { name: 'web' })).structuredContent).toEqual({ name: 'web', removed: true });
    expect(calls.slice(1)).toEqual(['scale web 3', 'remove web']);
  });
});
