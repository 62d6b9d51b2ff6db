import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, sign } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';

/**
 * A real registry for tests: Debian's docker-registry (distribution 2.8) on
 * 127.0.0.1, with no auth, htpasswd basic auth, or the bearer-token flow
 * against a token server in this process. Every registry dies with the
 * process that started it, even on SIGKILL.
 */

export type RegistryAuth = 'none' | 'basic' | 'token';

export interface RegistryOptions {
  /** Default 'none'. */
  auth?: RegistryAuth;
  /** Default 'roost'. */
  user?: string;
  /** Default a random one. */
  password?: string;
  /** Token mode: anonymous token requests get pull access (as on Docker Hub) instead of a 401. */
  anonymousPull?: boolean;
  /** Token mode: lifetime of issued tokens (`expires_in`), default 300 s. */
  tokenTtlSeconds?: number;
}

export interface PushOptions {
  /** Manifest format written to the registry (skopeo --format); default that of the source. */
  format?: 'oci' | 'v2s2';
  /**
   * Layer compression in the registry. 'gzip' (the default) and 'zstd' go
   * through skopeo; 'none' goes through this module's own uploader, because
   * skopeo always compresses layers it pushes to a registry.
   */
  compress?: 'gzip' | 'zstd' | 'none';
  /**
   * The image's tag in the layout. Default: the destination tag if the
   * layout has it, else the layout's only tagged image.
   */
  from?: string;
  /** Push every image of an index (skopeo --multi-arch all), not only the host's platform. */
  all?: boolean;
}

/** One line of the registry's access log (Combined Log Format). */
export interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
  bytes: number;
}

/** A token the token server issued (token mode), for assertions. */
export interface TokenGrant {
  account: string | null;
  scopes: string[];
  granted: { type: string; name: string; actions: string[] }[];
}

export interface TestRegistry {
  /** '127.0.0.1:PORT', the host part of image references. */
  readonly host: string;
  /** 'http://127.0.0.1:PORT'. */
  readonly url: string;
  readonly auth: RegistryAuth;
  readonly user: string;
  readonly password: string;
  /** The registry's storage root (docker/registry/v2/... below it). */
  readonly storageDir: string;
  /** The registry's log: its own warnings and the access log. */
  readonly logPath: string;
  readonly pid: number;
  /** Token mode: the realm, service and issuer the registry was configured with. */
  readonly token: { realm: string; service: string; issuer: string; grants: TokenGrant[] } | null;
  /** Pushes `oci:DIR:tag` from an OCI layout to `repo:tag` here; returns the pushed manifest's digest. */
  push(ociLayoutDir: string, repoTag: string, opts?: PushOptions): Promise<string>;
  /** Uploads a blob as is (monolithic upload); returns its digest. */
  putBlob(repo: string, data: Buffer): Promise<string>;
  /** Puts a manifest (or index) as is under `reference`; returns its digest. Nothing checks sizes: lying manifests are allowed. */
  putManifest(repo: string, reference: string, body: Buffer | string, mediaType: string): Promise<string>;
  /** fetch() against the registry with credentials (basic, or a bearer token for `scope`). */
  authorizedFetch(path: string, init?: RequestInit, scope?: string): Promise<Response>;
  /** Where the registry keeps a blob's bytes (to corrupt or truncate it behind the registry's back). */
  blobPath(digest: string): string;
  /** The requests the registry served so far. */
  accessLog(): Promise<AccessLogEntry[]>;
  /** Kills the registry (and token server) and removes its files. */
  stop(): Promise<void>;
}

const SERVICE = 'roost-test-registry';
const ISSUER = 'roost-test-token-issuer';
const REGISTRY_BIN = '/usr/bin/docker-registry';

/** Starts a registry; call `stop()` when done (an afterAll). */
export async function startRegistry(options: RegistryOptions = {}): Promise<TestRegistry> {
  const auth = options.auth ?? 'none';
  const user = options.user ?? 'roost';
  const password = options.password ?? randomBytes(9).toString('base64url');
  await sweepStaleDirs();
  const dir = await mkdtemp(join(tmpdir(), `roost-registry-${process.pid}-`));
  const storageDir = join(dir, 'storage');
  const logPath = join(dir, 'registry.log');
  let tokenServer: TokenServer | null = null;
  let child: ChildProcess | null = null;
  try {
    await mkdir(storageDir);
    let authConfig: Record<string, unknown> | undefined;
    if (auth === 'basic') {
      const r = spawnSync('htpasswd', ['-Bbn', user, password], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`htpasswd failed (is apache2-utils installed?): ${r.error?.message ?? r.stderr}`);
      await writeFile(join(dir, 'htpasswd'), r.stdout.trim() + '\n');
      authConfig = { htpasswd: { realm: 'roost-test', path: join(dir, 'htpasswd') } };
    } else if (auth === 'token') {
      tokenServer = await startTokenServer(dir, user, password, options);
      authConfig = { token: { realm: tokenServer.realm, service: SERVICE, issuer: ISSUER, rootcertbundle: tokenServer.certPath } };
    }

    // A port picked by binding port 0 can be taken again before the registry
    // binds it: retry with a new one when the registry says so.
    let host = '';
    for (let attempt = 1; ; attempt++) {
      host = `127.0.0.1:${await freePort()}`;
      const config = {
        version: '0.1',
        log: { level: 'warn', formatter: 'text', accesslog: { disabled: false } },
        // No blob descriptor cache: tests that corrupt storage see the result at once.
        storage: { filesystem: { rootdirectory: storageDir }, delete: { enabled: true }, maintenance: { uploadpurging: { enabled: false } } },
        http: { addr: host, secret: randomBytes(16).toString('hex'), headers: { 'X-Content-Type-Options': ['nosniff'] } },
        ...(authConfig ? { auth: authConfig } : {}),
      };
      // JSON is YAML: no YAML writer needed, and every path is quoted.
      const configPath = join(dir, 'config.yml');
      await writeFile(configPath, JSON.stringify(config, null, 2) + '\n');
      child = spawnRegistry(configPath, logPath);
      const up = await waitUntilServing(child, host, logPath);
      if (up === 'up') break;
      child = null;
      if (up === 'port-taken' && attempt < 5) continue;
      throw new Error(`docker-registry did not start:\n${await tail(logPath)}`);
    }
    const proc = child;
    const url = `http://${host}`;
    const creds = auth === 'none' ? null : { user, password };
    const reg: TestRegistry = {
      host,
      url,
      auth,
      user,
      password,
      storageDir,
      logPath,
      pid: proc.pid!,
      token: tokenServer ? { realm: tokenServer.realm, service: SERVICE, issuer: ISSUER, grants: tokenServer.grants } : null,
      push: (layout, repoTag, opts = {}) => push(reg, layout, repoTag, opts),
      putBlob: (repo, data) => putBlob(reg, repo, data),
      putManifest: (repo, ref, body, mediaType) => putManifest(reg, repo, ref, body, mediaType),
      authorizedFetch: (path, init, scope) => authorizedFetch(url, creds, path, init, scope),
      blobPath: (digest) => {
        const [alg, hex] = digest.split(':');
        if (alg !== 'sha256' || !/^[0-9a-f]{64}$/.test(hex ?? '')) throw new Error(`not a sha256 digest: ${digest}`);
        return join(storageDir, 'docker/registry/v2/blobs/sha256', hex!.slice(0, 2), hex!, 'data');
      },
      accessLog: () => readAccessLog(logPath),
      stop: async () => {
        await killAndWait(proc);
        await tokenServer?.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
    return reg;
  } catch (e) {
    if (child) await killAndWait(child);
    await tokenServer?.close();
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Removes the temp dirs of registries whose test process died without stop() (SIGKILL). */
async function sweepStaleDirs(): Promise<void> {
  for (const name of await readdir(tmpdir()).catch(() => [] as string[])) {
    const pid = Number(/^roost-registry-(\d+)-/.exec(name)?.[1]);
    if (!pid || pid === process.pid || pidAlive(pid)) continue;
    await rm(join(tmpdir(), name), { recursive: true, force: true });
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function spawnRegistry(configPath: string, logPath: string): ChildProcess {
  const log = openSync(logPath, 'w');
  try {
    // setpriv --pdeathsig: the kernel kills the registry when this process
    // dies, however it dies; the setting survives setpriv's exec.
    return spawn('setpriv', ['--pdeathsig', 'KILL', '--', REGISTRY_BIN, 'serve', configPath], { stdio: ['ignore', log, log] });
  } finally {
    closeSync(log);
  }
}

async function waitUntilServing(child: ChildProcess, host: string, logPath: string): Promise<'up' | 'port-taken' | 'failed'> {
  const url = `http://${host}/v2/`;
  let exited = child.exitCode !== null || child.signalCode !== null;
  child.once('exit', () => (exited = true));
  child.once('error', () => (exited = true));
  const end = Date.now() + 15_000;
  while (Date.now() < end) {
    if (exited) return /address already in use/.test(await readFile(logPath, 'utf8').catch(() => '')) ? 'port-taken' : 'failed';
    try {
      // Any answer (200, or 401 with auth on) means someone serves; it must
      // be our registry, not another test's that took the port meanwhile.
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await res.body?.cancel();
      if (await listensOn(child.pid!, Number(host.split(':')[1]))) return 'up';
      await new Promise((r) => setTimeout(r, 25));
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  await killAndWait(child);
  return 'failed';
}

/** True if process `pid` holds the listening socket of 127.0.0.1:port (from /proc/net/tcp). */
async function listensOn(pid: number, port: number): Promise<boolean> {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const table = await readFile('/proc/net/tcp', 'utf8').catch(() => '');
  // sl local rem st ... uid timeout inode; st 0A is LISTEN
  const inode = table
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((f) => f[1] === local && f[3] === '0A')?.[9];
  if (!inode) return false;
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
  for (const fd of fds) {
    if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) === `socket:[${inode}]`) return true;
  }
  return false;
}

async function killAndWait(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
  await exited;
  clearTimeout(timer);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createNetServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

async function tail(path: string, lines = 30): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

async function readAccessLog(path: string): Promise<AccessLogEntry[]> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const entries: AccessLogEntry[] = [];
  // 127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 401 87 "" "agent"
  for (const m of text.matchAll(/^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)/gm)) {
    entries.push({ method: m[1]!, path: m[2]!, status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]) });
  }
  return entries;
}

// ---- pushing ---------------------------------------------------------------

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    child.on('error', reject);
    child.on('close', (code, sig) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} failed (${sig ?? `exit ${code}`}):\n${err}`))));
  });
}

function splitRepoTag(repoTag: string): { repo: string; tag: string } {
  const at = repoTag.lastIndexOf(':');
  if (at <= 0 || repoTag.slice(at).includes('/')) return { repo: repoTag, tag: 'latest' };
  return { repo: repoTag.slice(0, at), tag: repoTag.slice(at + 1) };
}

/** The tag of the image to push from a layout (see PushOptions.from). */
async function sourceTag(layout: string, destTag: string, from?: string): Promise<string> {
  if (from) return from;
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const tags = index.manifests.map((m) => m.annotations?.['org.opencontainers.image.ref.name']).filter((t): t is string => !!t);
  if (tags.includes(destTag)) return destTag;
  if (tags.length === 1) return tags[0]!;
  throw new Error(`${layout} has images tagged ${tags.join(', ') || '(none)'}: say which to push with { from }`);
}

async function push(reg: TestRegistry, layout: string, repoTag: string, opts: PushOptions): Promise<string> {
  const { repo, tag } = splitRepoTag(repoTag);
  let src = `oci:${layout}:${await sourceTag(layout, tag, opts.from)}`;
  if (opts.compress === 'none') return pushUncompressed(reg, layout, src.slice(`oci:${layout}:`.length), repo, tag, opts.format);
  if (opts.compress === 'zstd' && opts.format === 'v2s2') throw new Error('Docker schema 2 manifests cannot carry zstd layers: push zstd with format oci');
  const scratch = join(tmpdir(), `roost-push-${process.pid}-${randomBytes(4).toString('hex')}`);
  const digestFile = join(scratch, 'digest');
  await mkdir(scratch);
  try {
    const dest = ['--dest-tls-verify=false', '--digestfile', digestFile];
    if (reg.auth !== 'none') dest.push('--dest-creds', `${reg.user}:${reg.password}`);
    if (opts.format) dest.push('--format', opts.format);
    if (opts.all) dest.push('--multi-arch', 'all');
    if (opts.compress === 'zstd') {
      // Recompress into a scratch layout first: pushing straight to the
      // registry with --dest-compress-format reuses the gzip blobs skopeo
      // knows the registry has, and nothing gets recompressed.
      const zstd = `oci:${join(scratch, 'zstd')}:image`;
      await run('skopeo', ['copy', '--quiet', '--dest-compress-format', 'zstd', ...(opts.all ? ['--multi-arch', 'all'] : []), src, zstd]);
      src = zstd;
      // ...and --preserve-digests keeps skopeo from swapping the zstd blobs for known gzip ones.
      dest.push('--preserve-digests');
    }
    await run('skopeo', ['copy', '--quiet', ...dest, src, `docker://${reg.host}/${repo}:${tag}`]);
    return (await readFile(digestFile, 'utf8')).trim();
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
} as const;

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** Pushes an image of an OCI layout with its layers decompressed (gzip -> plain tar). */
async function pushUncompressed(reg: TestRegistry, layout: string, srcTag: string, repo: string, tag: string, format?: 'oci' | 'v2s2'): Promise<string> {
  const blob = (digest: string) => readFile(join(layout, 'blobs', ...digest.split(':')));
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === srcTag);
  if (!desc) throw new Error(`no image tagged ${srcTag} in ${layout}`);
  const manifest = JSON.parse((await blob(desc.digest)).toString()) as { config: Descriptor; layers: Descriptor[] };
  const layers: Descriptor[] = [];
  for (const l of manifest.layers) {
    let data = await blob(l.digest);
    if (l.mediaType.endsWith('gzip')) data = gunzipSync(data);
    else if (!l.mediaType.endsWith('.tar')) throw new Error(`cannot decompress a ${l.mediaType} layer`);
    layers.push({ mediaType: format === 'v2s2' ? MT.dockerLayer : MT.ociLayer, digest: await reg.putBlob(repo, data), size: data.length });
  }
  const config = await blob(manifest.config.digest);
  await reg.putBlob(repo, config);
  const docker = format === 'v2s2';
  const out = {
    schemaVersion: 2,
    mediaType: docker ? MT.dockerManifest : MT.ociManifest,
    config: { mediaType: docker ? MT.dockerConfig : MT.ociConfig, digest: manifest.config.digest, size: config.length },
    layers,
  };
  return reg.putManifest(repo, tag, JSON.stringify(out), out.mediaType);
}

function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

async function putBlob(reg: TestRegistry, repo: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  const scope = `repository:${repo}:pull,push`;
  const start = await reg.authorizedFetch(`/v2/${repo}/blobs/uploads/`, { method: 'POST' }, scope);
  if (start.status !== 202) throw new Error(`starting a blob upload to ${repo}: HTTP ${start.status} ${await start.text()}`);
  const location = new URL(start.headers.get('location')!, reg.url);
  location.searchParams.set('digest', digest);
  const put = await reg.authorizedFetch(
    location.pathname + location.search,
    { method: 'PUT', body: data, headers: { 'content-type': 'application/octet-stream' } },
    scope,
  );
  if (put.status !== 201) throw new Error(`uploading ${digest} to ${repo}: HTTP ${put.status} ${await put.text()}`);
  return digest;
}

async function putManifest(reg: TestRegistry, repo: string, reference: string, body: Buffer | string, mediaType: string): Promise<string> {
  const res = await reg.authorizedFetch(
    `/v2/${repo}/manifests/${reference}`,
    { method: 'PUT', body, headers: { 'content-type': mediaType } },
    `repository:${repo}:pull,push`,
  );
  if (res.status !== 201) throw new Error(`putting manifest ${repo}:${reference}: HTTP ${res.status} ${await res.text()}`);
  return res.headers.get('docker-content-digest') ?? sha256(body);
}

// ---- auth ------------------------------------------------------------------

/** Parses `Bearer realm="...",service="...",scope="..."` into its parameters. */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const space = header.indexOf(' ');
  const scheme = (space < 0 ? header : header.slice(0, space)).toLowerCase();
  const params: Record<string, string> = {};
  for (const m of header.slice(space + 1).matchAll(/(\w+)="([^"]*)"/g)) params[m[1]!.toLowerCase()] = m[2]!;
  return { scheme, params };
}

async function authorizedFetch(
  base: string,
  creds: { user: string; password: string } | null,
  path: string,
  init: RequestInit = {},
  scope?: string,
): Promise<Response> {
  const url = new URL(path, base);
  const basic = creds ? `Basic ${Buffer.from(`${creds.user}:${creds.password}`).toString('base64')}` : null;
  const attempt = (authorization: string | null) => {
    const headers = new Headers(init.headers);
    if (authorization) headers.set('authorization', authorization);
    return fetch(url, { ...init, headers });
  };
  // Basic auth can go with the first request; a bearer token needs the challenge first.
  const first = await attempt(basic);
  if (first.status !== 401) return first;
  const challenge = parseChallenge(first.headers.get('www-authenticate') ?? '');
  if (challenge.scheme !== 'bearer') return first;
  await first.body?.cancel();
  const tokenUrl = new URL(challenge.params.realm!);
  if (challenge.params.service) tokenUrl.searchParams.set('service', challenge.params.service);
  const wanted = scope ?? challenge.params.scope;
  if (wanted) tokenUrl.searchParams.set('scope', wanted);
  const tokenRes = await fetch(tokenUrl, { headers: basic ? { authorization: basic } : {} });
  if (!tokenRes.ok) throw new Error(`token request ${tokenUrl}: HTTP ${tokenRes.status} ${await tokenRes.text()}`);
  const { token } = (await tokenRes.json()) as { token: string };
  return attempt(`Bearer ${token}`);
}

// ---- the token server ------------------------------------------------------

interface TokenServer {
  realm: string;
  certPath: string;
  grants: TokenGrant[];
  close(): Promise<void>;
}

/**
 * A token server of the registry token spec (docs: distribution's
 * spec/auth/token.md and jwt.md): GET (or OAuth2 password-grant POST) on
 * /token with basic credentials returns an RS256 JWT whose x5c header
 * carries the self-signed certificate the registry trusts as rootcertbundle.
 */
async function startTokenServer(dir: string, user: string, password: string, options: RegistryOptions): Promise<TokenServer> {
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  const r = spawnSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=roost-test-token-issuer'],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`openssl req failed: ${r.error?.message ?? r.stderr}`);
  const key = await readFile(keyPath, 'utf8');
  const certDer = (await readFile(certPath, 'utf8')).replace(/-----[^-]+-----|\s/g, '');
  const ttl = options.tokenTtlSeconds ?? 300;
  const grants: TokenGrant[] = [];

  const issue = (account: string | null, service: string | null, scopes: string[]) => {
    if (service !== SERVICE) return { status: 400, body: { errors: [{ code: 'DENIED', message: `unknown service ${service}` }] } };
    const authenticated = account !== null;
    const access = scopes.flatMap((s) => {
      // type:name:actions, where the name may itself hold a ':' (host:port/repo)
      const first = s.indexOf(':');
      const last = s.lastIndexOf(':');
      if (first < 0 || last === first) return [];
      const requested = s
        .slice(last + 1)
        .split(',')
        .filter(Boolean);
      const actions = authenticated ? requested : requested.filter((a) => a === 'pull');
      return [{ type: s.slice(0, first), name: s.slice(first + 1, last), actions }];
    });
    grants.push({ account, scopes, granted: access });
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer] };
    const claims = { iss: ISSUER, sub: account ?? '', aud: SERVICE, exp: now + ttl, nbf: now - 10, iat: now, jti: randomBytes(12).toString('hex'), access };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const token = `${signingInput}.${sign('sha256', Buffer.from(signingInput), key).toString('base64url')}`;
    return { status: 200, body: { token, access_token: token, expires_in: ttl, issued_at: new Date(now * 1000).toISOString() } };
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const reply = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    if (url.pathname !== '/token') return reply(404, { errors: [{ code: 'NOT_FOUND' }] });
    let account: string | null = null;
    let pass: string | null = null;
    let service = url.searchParams.get('service');
    let scopes = url.searchParams
      .getAll('scope')
      .flatMap((s) => s.split(' '))
      .filter(Boolean);
    const authz = req.headers.authorization;
    if (authz?.startsWith('Basic ')) {
      const decoded = Buffer.from(authz.slice(6), 'base64').toString();
      const colon = decoded.indexOf(':');
      account = decoded.slice(0, colon);
      pass = decoded.slice(colon + 1);
    }
    if (req.method === 'POST') {
      // OAuth2 password grant (spec/auth/oauth.md)
      let raw = '';
      for await (const chunk of req) raw += String(chunk);
      const form = new URLSearchParams(raw);
      if (form.get('grant_type') !== 'password') return reply(400, { error: 'unsupported_grant_type' });
      account = form.get('username');
      pass = form.get('password');
      service = form.get('service');
      scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
    } else if (req.method !== 'GET') {
      return reply(405, { errors: [{ code: 'UNSUPPORTED' }] });
    }
    if (account !== null && (account !== user || pass !== password)) {
      return reply(
        401,
        { errors: [{ code: 'UNAUTHORIZED', message: 'wrong user name or password' }] },
        { 'www-authenticate': 'Basic realm="roost-test-token"' },
      );
    }
    if (account === null && !options.anonymousPull) {
      return reply(401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }, { 'www-authenticate': 'Basic realm="roost-test-token"' });
    }
    const { status, body } = issue(account, service, scopes);
    reply(status, body);
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    certPath,
    grants,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function b64url(s: string): string {
  return Buffer.from(s).toString('base64url');
}
