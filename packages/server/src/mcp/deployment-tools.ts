import { McpDeploymentToolInputs, McpDeploymentToolOutputs, parseDeploymentSpec, RoostError, type DeploymentInfo, type DeploymentSpec } from '@roost/api';
import { z } from 'zod';
import { additive, readOnly, settles, type ToolDef } from './tools.js';

/*
 * The deployment tools (docs/deployments.md): their inputs and outputs are
 * @roost/api's (McpDeploymentToolInputs, McpDeploymentToolOutputs), and each
 * one calls `runtime.deployments`.
 */

/** The name of a deployment tool. */
export type DeploymentToolName = keyof typeof McpDeploymentToolInputs;
type Input<N extends DeploymentToolName> = z.infer<(typeof McpDeploymentToolInputs)[N]>;
type Output<N extends DeploymentToolName> = z.infer<(typeof McpDeploymentToolOutputs)[N]>;

/** The spec of a deployment_apply: the object as parsed, or the YAML text parsed (errors name `yaml:LINE: field`). */
function specOf(input: Input<'deployment_apply'>): DeploymentSpec {
  if (input.spec) return input.spec;
  if (input.yaml !== undefined) return parseDeploymentSpec(input.yaml, 'yaml');
  throw new RoostError('INVALID_ARGUMENT', 'give the spec as `spec` (an object) or as `yaml` (text)');
}

/** The deployment tools, by name. */
export const DEPLOYMENT_TOOLS: { [N in DeploymentToolName]: ToolDef<Input<N>, Output<N>> } = {
  deployment_apply: {
    title: 'Deploy a long-running service',
    description:
      'Creates or changes a deployment: `replicas` sandboxes each running `command`, kept running by Roost (restarted when the command exits, replaced when unhealthy or when their VM dies), ' +
      'health-checked, and reachable through service ports on the host that balance over the healthy replicas. Answers at once: replicas are made in the background; ' +
      'call deployment_get until `healthyReplicas` equals `spec.replicas` and `observedGeneration` equals `generation` (problems are in `lastError` and the replicas’ `lastExit`). ' +
      'Changing sandbox, command, workingDir, user or labels replaces the replicas a few at a time (a rolling update). Give the spec as an object (`spec`) or as YAML text (`yaml`). ' +
      'Deployments outlive this MCP session: remove them with deployment_remove.',
    annotations: { ...settles(false), openWorldHint: true },
    async run(input, call) {
      return call.session.runtime.deployments.apply(specOf(input));
    },
  },
  deployment_list: {
    title: 'List deployments',
    description:
      'Lists the deployments with their spec, replica counts (existing, healthy, up to date), service ports (host address to connect to), and last error.',
    annotations: readOnly,
    async run(_input, call) {
      return { deployments: await call.session.runtime.deployments.list() };
    },
  },
  deployment_get: {
    title: 'Describe a deployment',
    description:
      'Returns one deployment: its spec, generation and observedGeneration (equal once a change has rolled out), service ports, each replica (sandbox id, state, restarts, last health probe, last exit with the end of its output), and its last events.',
    annotations: readOnly,
    async run(input, call): Promise<DeploymentInfo> {
      return call.session.runtime.deployments.get(input.name);
    },
  },
  deployment_scale: {
    title: 'Scale a deployment',
    description: 'Sets how many replicas a deployment keeps; extra ones are drained and removed, missing ones made, in the background.',
    annotations: settles(true),
    async run(input, call) {
      return call.session.runtime.deployments.scale(input.name, input.replicas);
    },
  },
  deployment_rollback: {
    title: 'Roll a deployment back',
    description:
      'Goes back to the spec before the last change (keeping the current replica count), rolled out like any update; a second rollback undoes the first. INVALID_STATE when the deployment was never changed.',
    annotations: { ...additive, destructiveHint: true },
    async run(input, call) {
      return call.session.runtime.deployments.rollback(input.name);
    },
  },
  deployment_remove: {
    title: 'Remove a deployment',
    description: 'Removes a deployment for good: its service ports close and its replica sandboxes are removed.',
    annotations: settles(true),
    async run(input, call) {
      await call.session.runtime.deployments.remove(input.name);
      return { name: input.name, removed: true as const };
    },
  },
};
