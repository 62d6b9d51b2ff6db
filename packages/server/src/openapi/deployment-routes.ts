import { DeploymentInfoSchema, DeploymentListSchema, DeploymentSpecSchema, ScaleDeploymentRequestSchema } from '@roost/api';
import type { Param, Route } from './route.js';

/*
 * The routes of deployments (../deployments.ts; docs/deployments.md): a
 * spec applied, then kept true by the daemon's reconcile loop.
 */

const deploymentNameParam: Param = {
  name: 'name',
  in: 'path',
  required: true,
  description: "The deployment's name.",
  schema: { type: 'string' },
};

/** Deployment routes, in the order the document lists them. */
export const DEPLOYMENT_ROUTES: readonly Route[] = [
  {
    method: 'post',
    path: '/v1/deployments',
    operationId: 'applyDeployment',
    tag: 'deployments',
    summary: 'Create or change a deployment',
    description:
      'Writes the spec as the desired state (a new generation; the same spec again changes nothing) and answers at once with the state so far; the daemon creates, replaces and removes replicas in the background until `observedGeneration` equals `generation` (failures are in `lastError`). ' +
      'A change of `sandbox`, `command`, `workingDir`, `user` or `labels` is a new revision, rolled out within `update.maxSurge` and `update.maxUnavailable`; other changes take effect without replacing replicas. ' +
      'Service ports are bound before the spec is written: one held by another program is 503 UNAVAILABLE and changes nothing. A bad spec is 400, naming the field. `Location` names the deployment.',
    body: { schema: DeploymentSpecSchema, required: true },
    ok: {
      200: { description: 'An existing deployment changed (or already had this spec).', bodies: [{ json: DeploymentInfoSchema }] },
      201: { description: 'Created; its replicas are being made.', bodies: [{ json: DeploymentInfoSchema }] },
    },
    errors: [400, 403],
  },
  {
    method: 'get',
    path: '/v1/deployments',
    operationId: 'listDeployments',
    tag: 'deployments',
    summary: 'List deployments with their status',
    ok: { 200: { description: 'The deployments, by name.', bodies: [{ json: DeploymentListSchema }] } },
    errors: [400],
  },
  {
    method: 'get',
    path: '/v1/deployments/{name}',
    operationId: 'getDeployment',
    tag: 'deployments',
    summary: 'Inspect a deployment: its spec, replicas, service ports and last events',
    params: [deploymentNameParam],
    ok: { 200: { description: 'The deployment.', bodies: [{ json: DeploymentInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/deployments/{name}/scale',
    operationId: 'scaleDeployment',
    tag: 'deployments',
    summary: 'Set the replica count of a deployment',
    description:
      'A new generation; replicas are added or removed in the background (the least useful first: exited, unhealthy, then the newest). The spec a rollback goes back to stays as it was.',
    params: [deploymentNameParam],
    body: { schema: ScaleDeploymentRequestSchema, required: true },
    ok: { 200: { description: 'Scaled; replicas being added or removed.', bodies: [{ json: DeploymentInfoSchema }] } },
    errors: [400, 404],
  },
  {
    method: 'post',
    path: '/v1/deployments/{name}/rollback',
    operationId: 'rollbackDeployment',
    tag: 'deployments',
    summary: 'Go back to the spec before the last change',
    description:
      'A new generation with the previous spec and the current replica count, rolled out like any update; a second rollback undoes the first. 409 INVALID_STATE when the deployment has not been changed since it was created.',
    params: [deploymentNameParam],
    ok: { 200: { description: 'Rolled back; the rollout runs in the background.', bodies: [{ json: DeploymentInfoSchema }] } },
    errors: [400, 404, 409],
  },
  {
    method: 'delete',
    path: '/v1/deployments/{name}',
    operationId: 'deleteDeployment',
    tag: 'deployments',
    summary: 'Remove a deployment and its replicas',
    description:
      'Nothing reconciles it from then on: its service ports close (cutting their connections), and its replicas are removed (their VMs end) before the answer.',
    params: [deploymentNameParam],
    ok: { 204: { description: 'Removed.', bodies: [{ none: true }] } },
    errors: [400, 404],
  },
];
