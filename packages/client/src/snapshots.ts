import type { CreateTemplateRequest, SnapshotInfo, SnapshotsApi, TemplateInfo, TemplatesApi } from '@roost/api';
import type { Transport } from './http.js';

/**
 * `client.snapshots`: the snapshots of the daemon's home (taken with
 * `sandbox.snapshot()`, as the base of a fork, or as a template's warm start).
 *
 * Concurrency: calls may overlap; the daemon orders them.
 */
export class RemoteSnapshots implements SnapshotsApi {
  /** @internal */
  constructor(private readonly transport: Transport) {}

  /** Every snapshot, each with the sandboxes and snapshots that depend on it. */
  async list(): Promise<SnapshotInfo[]> {
    return (await this.transport.json<{ snapshots: SnapshotInfo[] }>('GET', '/v1/snapshots')).snapshots;
  }

  /** A snapshot by name or id; NOT_FOUND when there is none. */
  get(nameOrId: string): Promise<SnapshotInfo> {
    return this.transport.json<SnapshotInfo>('GET', `/v1/snapshots/${encodeURIComponent(nameOrId)}`);
  }

  /** Removes a snapshot and its files; INVALID_STATE (naming them) while sandboxes or snapshots depend on it. */
  async remove(nameOrId: string): Promise<void> {
    await this.transport.json<undefined>('DELETE', `/v1/snapshots/${encodeURIComponent(nameOrId)}`, { what: `removing snapshot ${nameOrId}` });
  }
}

/**
 * `client.templates`: templates of the daemon's home (an image, resources
 * and a setup command, kept ready as a snapshot so that a create from one
 * restores instead of booting).
 *
 * Concurrency: calls may overlap; the daemon orders them (builds of one
 * template are shared).
 */
export class RemoteTemplates implements TemplatesApi {
  /** @internal */
  constructor(private readonly transport: Transport) {}

  /**
   * Defines a template; ALREADY_EXISTS when the name is taken. With `warm`,
   * its snapshot is built now (bounded by `timeoutMs` and `signal`, not by
   * the client's timeout).
   */
  create(request: CreateTemplateRequest & { signal?: AbortSignal }): Promise<TemplateInfo> {
    const { signal, ...body } = request;
    return this.transport.json<TemplateInfo>('POST', '/v1/templates', {
      json: body,
      signal,
      timeoutMs: body.warm ? null : undefined,
      what: `creating template ${body.name}`,
    });
  }

  /** A template by name; NOT_FOUND when there is none. */
  get(name: string): Promise<TemplateInfo> {
    return this.transport.json<TemplateInfo>('GET', `/v1/templates/${encodeURIComponent(name)}`);
  }

  /** Every template. */
  async list(): Promise<TemplateInfo[]> {
    return (await this.transport.json<{ templates: TemplateInfo[] }>('GET', '/v1/templates')).templates;
  }

  /** Builds the template's snapshot now: a new one, replacing the one it had (removed once no sandbox restored from it remains). */
  warm(name: string, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<TemplateInfo> {
    const body = options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {};
    return this.transport.json<TemplateInfo>('POST', `/v1/templates/${encodeURIComponent(name)}/warm`, {
      json: body,
      signal: options.signal,
      timeoutMs: null,
      what: `warming template ${name}`,
    });
  }

  /** Removes the template, and its snapshot once no sandbox depends on it. */
  async remove(name: string): Promise<void> {
    await this.transport.json<undefined>('DELETE', `/v1/templates/${encodeURIComponent(name)}`, { what: `removing template ${name}` });
  }
}
