import type { CreateVolumeRequest, VolumeInfo, VolumesApi } from '@roost/api';
import type { Transport } from './http.js';

/**
 * `client.volumes`: the named volumes of the daemon's home (directories
 * mounted into sandboxes by Roost's 9P file server, kept after them).
 *
 * Concurrency: calls may overlap; the daemon orders them (a volume being
 * removed is either still there for a create that names it, or gone).
 */
export class RemoteVolumes implements VolumesApi {
  /** @internal */
  constructor(private readonly transport: Transport) {}

  /** Creates a named volume; ALREADY_EXISTS when the name is taken. */
  create(request: CreateVolumeRequest): Promise<VolumeInfo> {
    return this.transport.json<VolumeInfo>('POST', '/v1/volumes', { json: request, what: `creating volume ${request.name}` });
  }

  /** A volume by name, with the sandboxes that mount it; NOT_FOUND when there is none. */
  get(name: string): Promise<VolumeInfo> {
    return this.transport.json<VolumeInfo>('GET', `/v1/volumes/${encodeURIComponent(name)}`);
  }

  /** Every volume, by name. */
  async list(): Promise<VolumeInfo[]> {
    return (await this.transport.json<{ volumes: VolumeInfo[] }>('GET', '/v1/volumes')).volumes;
  }

  /** Removes a volume and its data; INVALID_STATE while sandboxes that are not removed mount it. */
  async remove(name: string): Promise<void> {
    await this.transport.json<undefined>('DELETE', `/v1/volumes/${encodeURIComponent(name)}`, { what: `removing volume ${name}` });
  }
}
