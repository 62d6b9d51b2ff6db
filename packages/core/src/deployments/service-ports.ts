import { normalizePortSpec, type DeploymentSpec, type ServicePortBinding } from '@roost/api';
import { PassThrough, type Duplex } from 'node:stream';
import { ServiceBalancer, type BalanceStrategy } from './balancer.js';

/** A spec's service port as written (`127.0.0.1:8080:8000`, or a mapping). */
type SpecPort = DeploymentSpec['ports'][number];

/** A replica as a service port reaches it. */
export interface ServiceReplica {
  readonly id: string;
  /** A TCP connection to a guest port; may throw (no network): that counts as refused. */
  connect(guestPort: number): Duplex;
}

/** The key of a spec port: its normalized `hostIp:hostPort:guestPort` (hostPort empty when Roost chooses it). */
export function portKey(p: SpecPort): string {
  const m = normalizePortSpec(p);
  return `${m.hostIp}:${m.hostPort || ''}:${m.guestPort}`;
}

/** The bindings a spec's ports would have (for a deployment whose ports this runtime does not hold). */
export function plannedBindings(ports: readonly SpecPort[], chosen: Record<string, number>): ServicePortBinding[] {
  return ports.map((p) => {
    const m = normalizePortSpec(p);
    return { hostIp: m.hostIp, hostPort: m.hostPort || (chosen[portKey(p)] ?? 0), guestPort: m.guestPort, spec: portKey(p) };
  });
}

/**
 * The service ports of one deployment: a ServiceBalancer per spec port,
 * taking new connections to the replicas given to `setReplicas`. Changes
 * of the set of ports are serialized (an apply and a reconcile may both
 * make them).
 */
export class ServicePorts {
  readonly #ports = new Map<string, { balancer: ServiceBalancer; binding: ServicePortBinding }>();
  #lock: Promise<void> = Promise.resolve();
  #replicas: readonly ServiceReplica[] = [];

  /** The ports bound now. */
  bindings(): ServicePortBinding[] {
    return [...this.#ports.values()].map((p) => ({ ...p.binding }));
  }

  get size(): number {
    return this.#ports.size;
  }

  /**
   * Makes the ports match `ports`: new ones bound first (one that cannot
   * be bound fails the call, and those it opened are closed again), then
   * ports no longer wanted closed. A port given without a host port asks
   * for the one in `chosen` first. Returns the host ports chosen now, by
   * spec key.
   */
  sync(ports: readonly SpecPort[], chosen: Record<string, number>, strategy: BalanceStrategy = 'round-robin'): Promise<Record<string, number>> {
    const run = this.#lock.then(async () => {
      for (const p of this.#ports.values()) p.balancer.setStrategy(strategy);
      const wanted = new Map(ports.map((p) => [portKey(p), normalizePortSpec(p)]));
      const opened: string[] = [];
      try {
        for (const [key, m] of wanted) {
          if (this.#ports.has(key)) continue;
          const { balancer, port } = await listen(m.hostIp, m.hostPort, m.hostPort === 0 ? chosen[key] : undefined, strategy);
          this.#ports.set(key, { balancer, binding: { hostIp: m.hostIp, hostPort: port, guestPort: m.guestPort, spec: key } });
          opened.push(key);
        }
      } catch (e) {
        for (const key of opened) {
          await this.#ports.get(key)?.balancer.close();
          this.#ports.delete(key);
        }
        throw e;
      }
      for (const [key, p] of [...this.#ports]) {
        if (wanted.has(key)) continue;
        this.#ports.delete(key);
        await p.balancer.close();
      }
      this.setReplicas(this.#replicas);
      // The host ports chosen by Roost, those bound before this call included.
      const chosenNow: Record<string, number> = {};
      for (const [key, m] of wanted) if (m.hostPort === 0) chosenNow[key] = this.#ports.get(key)!.binding.hostPort;
      return chosenNow;
    });
    this.#lock = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /** The replicas that take new connections (others are drained: their open connections go on). */
  setReplicas(replicas: readonly ServiceReplica[]): void {
    this.#replicas = replicas;
    for (const p of this.#ports.values()) {
      const guestPort = p.binding.guestPort;
      p.balancer.setBackends(replicas.map((r) => ({ id: r.id, connect: () => connectOrFail(r, guestPort) })));
    }
  }

  /** Waits until a replica's open connections have ended on every port, cutting those left at `timeoutMs`. */
  async drain(id: string, timeoutMs: number): Promise<void> {
    await Promise.all([...this.#ports.values()].map((p) => p.balancer.drain(id, timeoutMs)));
  }

  /** Closes every port and cuts its connections. */
  close(): Promise<void> {
    const run = this.#lock.then(async () => {
      const ports = [...this.#ports.values()];
      this.#ports.clear();
      await Promise.allSettled(ports.map((p) => p.balancer.close()));
    });
    this.#lock = run.catch(() => {});
    return run;
  }
}

/** A listening balancer on `hostIp:hostPort`; for port 0, the port chosen before (`previous`) when it is free, else any. */
async function listen(
  hostIp: string,
  hostPort: number,
  previous: number | undefined,
  strategy: BalanceStrategy,
): Promise<{ balancer: ServiceBalancer; port: number }> {
  if (hostPort === 0 && previous) {
    const b = new ServiceBalancer({ host: hostIp, port: previous, strategy });
    try {
      return { balancer: b, port: (await b.listen()).port };
    } catch {
      // Taken meanwhile: another is chosen.
    }
  }
  const b = new ServiceBalancer({ host: hostIp, port: hostPort, strategy });
  return { balancer: b, port: (await b.listen()).port };
}

/** A connection to a replica's guest port; one that cannot be made (no network) fails like a refused connection, so the balancer tries the next replica. */
function connectOrFail(r: ServiceReplica, port: number): Duplex {
  try {
    return r.connect(port);
  } catch (e) {
    const failed = new PassThrough();
    queueMicrotask(() => failed.destroy(e instanceof Error ? e : new Error(String(e))));
    return failed;
  }
}
