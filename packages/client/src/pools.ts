import { CreatePoolRequestSchema, parseInput, ResizePoolRequestSchema, type CreatePoolRequest, type PoolInfo, type PoolsApi } from '@roost/api';
import type { Transport } from './http.js';

/**
 * `client.pools`: the warm pools of the daemon's home (sandboxes restored
 * ahead of time and kept paused; `create({ pool })` hands one over). The
 * daemon keeps them filled while it runs.
 *
 * Concurrency: calls may overlap; the daemon serializes each pool's refills
 * and hands a member to exactly one create.
 */
export class RemotePools implements PoolsApi {
  /** @internal */
  constructor(private readonly transport: Transport) {}

  /** Defines a pool and starts filling it; resolves at once with its fill so far. NOT_FOUND for an unknown template or snapshot, ALREADY_EXISTS for a taken name. */
  async create(request: CreatePoolRequest): Promise<PoolInfo> {
    const body = parseInput(CreatePoolRequestSchema, request, 'pool');
    return this.transport.json<PoolInfo>('POST', '/v1/pools', { json: body, what: `creating pool ${body.name}` });
  }

  /** Every pool, by name, with its fill level. */
  async list(): Promise<PoolInfo[]> {
    return (await this.transport.json<{ pools: PoolInfo[] }>('GET', '/v1/pools')).pools;
  }

  /** A pool by name; NOT_FOUND when there is none. */
  get(name: string): Promise<PoolInfo> {
    return this.transport.json<PoolInfo>('GET', `/v1/pools/${encodeURIComponent(name)}`);
  }

  /** Sets how many sandboxes the pool keeps ready (INVALID_ARGUMENT above its maxSize). */
  async resize(name: string, size: number): Promise<PoolInfo> {
    const body = parseInput(ResizePoolRequestSchema, { size }, 'pool size');
    return this.transport.json<PoolInfo>('POST', `/v1/pools/${encodeURIComponent(name)}/size`, { json: body, what: `resizing pool ${name}` });
  }

  /** Removes the pool and its members; resolves once they are gone. */
  async remove(name: string): Promise<void> {
    await this.transport.json<undefined>('DELETE', `/v1/pools/${encodeURIComponent(name)}`, { timeoutMs: null, what: `removing pool ${name}` });
  }
}
