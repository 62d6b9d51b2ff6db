import { DeploymentSpecSchema, parseInput, ScaleDeploymentRequestSchema, type DeploymentInfo, type DeploymentsApi, type DeploymentSpecInput } from '@roost/api';
import type { Transport } from './http.js';

/**
 * `client.deployments`: the deployments of the daemon's home (a workload,
 * a replica count, a health check and service ports). The daemon keeps
 * their replicas running and their service ports open while it runs.
 *
 * Concurrency: calls may overlap; the daemon serializes each deployment's
 * reconciles.
 */
export class RemoteDeployments implements DeploymentsApi {
  /** @internal */
  constructor(private readonly transport: Transport) {}

  /** Creates or changes a deployment (checked here first: a bad spec rejects, INVALID_ARGUMENT, without a request); resolves at once with its state so far. UNAVAILABLE when a service port cannot be bound. */
  async apply(spec: DeploymentSpecInput): Promise<DeploymentInfo> {
    const body = parseInput(DeploymentSpecSchema, spec, 'deployment spec');
    return this.transport.json<DeploymentInfo>('POST', '/v1/deployments', { json: body, what: `applying deployment ${body.name}` });
  }

  /** Every deployment, by name. */
  async list(): Promise<DeploymentInfo[]> {
    return (await this.transport.json<{ deployments: DeploymentInfo[] }>('GET', '/v1/deployments')).deployments;
  }

  /** A deployment by name; NOT_FOUND when there is none. */
  get(name: string): Promise<DeploymentInfo> {
    return this.transport.json<DeploymentInfo>('GET', `/v1/deployments/${encodeURIComponent(name)}`);
  }

  /** Sets the replica count. */
  async scale(name: string, replicas: number): Promise<DeploymentInfo> {
    const body = parseInput(ScaleDeploymentRequestSchema, { replicas }, 'scale');
    return this.transport.json<DeploymentInfo>('POST', `/v1/deployments/${encodeURIComponent(name)}/scale`, { json: body, what: `scaling deployment ${name}` });
  }

  /** Goes back to the previous spec; INVALID_STATE when there is none. */
  rollback(name: string): Promise<DeploymentInfo> {
    return this.transport.json<DeploymentInfo>('POST', `/v1/deployments/${encodeURIComponent(name)}/rollback`, { what: `rolling back deployment ${name}` });
  }

  /** Removes the deployment and its replicas; resolves once they are gone. */
  async remove(name: string): Promise<void> {
    await this.transport.json<undefined>('DELETE', `/v1/deployments/${encodeURIComponent(name)}`, { timeoutMs: null, what: `removing deployment ${name}` });
  }
}
