import { z } from 'zod';
import { DeploymentInfoSchema, DeploymentSpecSchema, ScaleDeploymentRequestSchema } from './deployments.js';

/*
 * The MCP face's deployment tools (docs/deployments.md): their inputs and
 * outputs, built from the deployment schemas, beside the sandbox tools' in
 * mcp.ts. The server turns them into the tools' JSON Schemas.
 */

const name = z.string().min(1).describe('The deployment’s name, as deployment_apply or deployment_list returned it.');

/** The deployment tools' inputs, by tool name. */
export const McpDeploymentToolInputs = {
  deployment_apply: z
    .object({
      spec: DeploymentSpecSchema.optional().describe(
        'The deployment: name, replicas (default 1), sandbox (image, cpus, memoryMiB, env, ...), command (the long-running workload: argv or a shell line), ports (service ports, e.g. "127.0.0.1::8000"), balance (round-robin or least-connections), health (http, tcp or exec), restart, update, labels.',
      ),
      yaml: z.string().min(1).optional().describe('The same spec as YAML (or JSON) text, as in a `roost deploy -f` file; errors name its line.'),
    })
    .strict()
    .refine((i) => (i.spec === undefined) !== (i.yaml === undefined), { message: 'give the spec as `spec` (an object) or as `yaml` (text), not both' }),
  deployment_list: z.object({}).strict(),
  deployment_get: z.object({ name }).strict(),
  deployment_scale: z
    .object({ name, replicas: ScaleDeploymentRequestSchema.shape.replicas.describe('The new replica count (0 keeps the deployment with no replica).') })
    .strict(),
  deployment_rollback: z.object({ name }).strict(),
  deployment_remove: z.object({ name }).strict(),
} as const;

/** The deployment tools' outputs (their `structuredContent`), by tool name. */
export const McpDeploymentToolOutputs = {
  deployment_apply: DeploymentInfoSchema,
  deployment_list: z.object({ deployments: z.array(DeploymentInfoSchema) }),
  deployment_get: DeploymentInfoSchema,
  deployment_scale: DeploymentInfoSchema,
  deployment_rollback: DeploymentInfoSchema,
  deployment_remove: z.object({ name: z.string(), removed: z.literal(true) }),
} satisfies Record<keyof typeof McpDeploymentToolInputs, z.ZodType>;
