import { lookup } from 'node:dns/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { MAX_ACTOR_MESSAGE_BYTES, normalizeEgress, RoostError, type ActorGrants, type SandboxApi } from '@roost/api';
import type { ActorHost } from '@roost/actors';
import { EgressFilter } from './net/policy.js';

/*
 * What an actor reaches outside itself when granted (docs/actors.md):
 * `fetch` through the same egress policy as a sandbox's network (the host is
 * 127.0.0.1, reached only through a `host` rule), and `sandbox_exec` in the
 * sandboxes it was granted. The address checked is the address connected to
 * (no second lookup between the check and the connection).
 */

const FETCH_TIMEOUT_MS = 30_000;
const EXEC_TIMEOUT_MS = 60_000;
const LOCALHOST = 0x7f000001;

interface FetchRequest {
  url: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string;
}

function ipv4(text: string): number {
  return text.split('.').reduce((n, part) => (n << 8) + Number(part), 0) >>> 0;
}

const denied = (why: string) => new RoostError('PERMISSION_DENIED', why);

function parseJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new RoostError('INVALID_ARGUMENT', `${what}: not JSON`);
  }
}

/** Filters per actor grant, parsed once (the policy text is the key). */
const filters = new Map<string, EgressFilter>();
function filterFor(grant: ActorGrants['fetch']): EgressFilter {
  const policy = normalizeEgress(grant);
  const key = JSON.stringify(policy);
  let f = filters.get(key);
  if (!f) {
    if (filters.size > 256) filters.clear();
    f = new EgressFilter(policy, { hostAddresses: [LOCALHOST] });
    filters.set(key, f);
  }
  return f;
}

async function actorFetch(grants: ActorGrants, requestText: string): Promise<Uint8Array> {
  if (grants.fetch === undefined || grants.fetch === 'deny') throw denied('fetch is not granted');
  const req = parseJson<FetchRequest>(requestText, 'fetch request');
  let url: URL;
  try {
    url = new URL(req.url);
  } catch {
    throw new RoostError('INVALID_ARGUMENT', `fetch: bad url ${String(req.url).slice(0, 200)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new RoostError('INVALID_ARGUMENT', `fetch: ${url.protocol} is not http or https`);
  const filter = filterFor(grants.fetch);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  let address: string;
  if (isIP(host) === 4) address = host;
  else if (isIP(host) === 6) throw denied(`fetch: IPv6 destinations are not supported (${host})`);
  else {
    const name = host === 'localhost' ? 'host' : host;
    if (name !== 'host' && !filter.allowsName(name)) throw denied(`fetch: the egress policy does not allow ${host}`);
    address = name === 'host' ? '127.0.0.1' : (await lookup(name, { family: 4 })).address;
    if (name !== 'host') filter.learn(name, [ipv4(address)], 60);
  }
  const decision = filter.check(ipv4(address), port, 'tcp');
  if (!decision.allowed) throw denied(`fetch: the egress policy does not allow ${host}:${port}`);

  const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise<Uint8Array>((resolve, reject) => {
    const r = send(
      url,
      {
        method: req.method ?? 'GET',
        headers: req.headers ?? {},
        timeout: FETCH_TIMEOUT_MS,
        // Connect to the address that was checked, whatever the name resolves to now.
        lookup: (_h, _o, cb) => cb(null, [{ address, family: 4 }] as never, 4 as never),
        servername: isIP(host) ? undefined : host,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_ACTOR_MESSAGE_BYTES) {
            r.destroy(new Error(`the response is over ${MAX_ACTOR_MESSAGE_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () =>
          resolve(
            Buffer.from(JSON.stringify({ status: res.statusCode ?? 0, headers: flatHeaders(res.headers), body: Buffer.concat(chunks).toString('utf8') })),
          ),
        );
        res.on('error', reject);
      },
    );
    r.on('timeout', () => r.destroy(new Error('fetch timed out')));
    r.on('error', reject);
    r.end(req.body ?? undefined);
  });
}

function flatHeaders(h: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined) out[k] = Array.isArray(v) ? v.join(', ') : v;
  return out;
}

/** The ActorHost of a runtime: `getSandbox` finds a sandbox by id or prefix. */
export function actorHost(getSandbox: (id: string) => Promise<SandboxApi>): ActorHost {
  return {
    fetch: (actor, request) => actorFetch(actor.grants, request),
    async sandboxExec(actor, requestText) {
      const req = parseJson<{ sandbox?: string; cmd?: unknown; stdin?: string }>(requestText, 'sandbox_exec request');
      const granted = actor.grants.sandboxes ?? [];
      if (typeof req.sandbox !== 'string' || !granted.includes(req.sandbox)) throw denied(`sandbox_exec: sandbox ${String(req.sandbox)} is not granted`);
      if (!Array.isArray(req.cmd) || req.cmd.length === 0 || !req.cmd.every((a) => typeof a === 'string')) {
        throw new RoostError('INVALID_ARGUMENT', 'sandbox_exec: cmd must be a non-empty array of strings');
      }
      const sandbox = await getSandbox(req.sandbox);
      const result = await sandbox.commands.run(req.cmd as string[], { timeoutMs: EXEC_TIMEOUT_MS, ...(req.stdin !== undefined ? { stdin: req.stdin } : {}) });
      return Buffer.from(JSON.stringify({ exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr }));
    },
  };
}
