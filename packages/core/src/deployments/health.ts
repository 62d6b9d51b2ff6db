import { request } from 'node:http';
import type { Duplex } from 'node:stream';
import type { HealthCheck } from '@roost/api';

/*
 * Health checks of deployment replicas (issue 19), run from the host: an
 * HTTP GET or a TCP connect through the replica's network (the same path
 * its published ports take), or a command through its agent. A replica's
 * state follows Docker's HEALTHCHECK: `starting` until its first success
 * (failures in `startPeriodMs` do not count), `healthy`, and `unhealthy`
 * after `retries` failures in a row.
 */

/** How a probe reaches a replica. */
export interface ProbeTarget {
  /** A TCP connection to a guest port: emits 'connect', or an error. */
  connectTcp(guestPort: number): Duplex;
  /** Runs argv in the guest; resolves to its exit code (a timeout rejects). */
  exec(argv: string[], options: { timeoutMs: number; signal: AbortSignal }): Promise<number>;
}

/** One probe's outcome: ok, and what was seen (for events and `inspect`). */
export interface ProbeResult {
  ok: boolean;
  detail: string;
}

/** Runs one probe of `check`, bounded by its timeoutMs. Never rejects. */
export async function probe(check: HealthCheck, target: ProbeTarget): Promise<ProbeResult> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), check.timeoutMs);
  timer.unref();
  try {
    if (check.http) return await probeHttp(target, check.http.port, check.http.path, ac.signal);
    if (check.tcp) return await probeTcp(target, check.tcp.port, ac.signal);
    if (check.exec) {
      const code = await target.exec(check.exec, { timeoutMs: check.timeoutMs, signal: ac.signal });
      return { ok: code === 0, detail: `exit status ${code}` };
    }
    return { ok: false, detail: 'no probe' };
  } catch (e) {
    return { ok: false, detail: ac.signal.aborted ? `no answer within ${check.timeoutMs} ms` : e instanceof Error ? e.message : String(e) };
  } finally {
    clearTimeout(timer);
  }
}

function probeTcp(target: ProbeTarget, port: number, signal: AbortSignal): Promise<ProbeResult> {
  return new Promise((resolve, reject) => {
    const s = target.connectTcp(port);
    const onAbort = () => s.destroy(new Error('timeout'));
    signal.addEventListener('abort', onAbort, { once: true });
    s.once('connect', () => {
      signal.removeEventListener('abort', onAbort);
      s.destroy();
      resolve({ ok: true, detail: `port ${port} accepts connections` });
    });
    s.once('error', (e: NodeJS.ErrnoException) => {
      signal.removeEventListener('abort', onAbort);
      reject(new Error(`port ${port}: ${e.code ?? e.message}`));
    });
  });
}

function probeHttp(target: ProbeTarget, port: number, path: string, signal: AbortSignal): Promise<ProbeResult> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: 'replica',
        port,
        path,
        method: 'GET',
        signal,
        headers: { connection: 'close', 'user-agent': 'roost-health' },
        createConnection: () => target.connectTcp(port) as never,
      },
      (res) => {
        res.resume();
        const status = res.statusCode ?? 0;
        resolve({ ok: status >= 200 && status < 400, detail: `GET ${path} on port ${port}: ${status}` });
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => reject(new Error(`GET ${path} on port ${port}: ${e.code ?? e.message}`)));
    req.end();
  });
}

/** A replica's health, as its probes say. */
export type HealthState = 'starting' | 'healthy' | 'unhealthy';

/** Follows one replica's probes. */
export class HealthTracker {
  #state: HealthState = 'starting';
  #failures = 0;
  #last: ProbeResult | null = null;

  /** @param startedAt when the replica's workload started (ms since the epoch). */
  constructor(
    private readonly check: Pick<HealthCheck, 'retries' | 'startPeriodMs'>,
    private readonly startedAt: number,
  ) {}

  get state(): HealthState {
    return this.#state;
  }

  /** Failures in a row so far. */
  get failures(): number {
    return this.#failures;
  }

  get last(): ProbeResult | null {
    return this.#last;
  }

  /** Takes a probe's result; returns the state it leads to. */
  record(result: ProbeResult, now = Date.now()): HealthState {
    this.#last = result;
    if (result.ok) {
      this.#failures = 0;
      this.#state = 'healthy';
      return this.#state;
    }
    // Failures while a replica starts up do not count (Docker's start period), until it has once been healthy.
    if (this.#state === 'starting' && now - this.startedAt < this.check.startPeriodMs) return this.#state;
    this.#failures++;
    if (this.#failures >= this.check.retries) this.#state = 'unhealthy';
    return this.#state;
  }
}
