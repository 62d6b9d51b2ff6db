import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { RoostError } from '../errors.js';
import { DOCKER_HUB, registryHostProblem } from './reference.js';

/**
 * A registry login: a user name with a password (or access token), or an
 * OAuth2 refresh token (Docker's "identity token"), which token services
 * take in place of a password.
 */
export type Credentials = { username: string; password: string } | { identityToken: string; username?: string };

export interface CredentialStoreOptions {
  /** Roost's own credentials file, written by `roost login` (`<ROOST_HOME>/auth.json`). */
  roostAuthFile: string;
  /** Where Docker's `config.json` is: default `$DOCKER_CONFIG`, else `~/.docker`. */
  dockerConfigDir?: string;
}

/** Names Docker Hub goes by in config files; all of them mean `docker.io`. */
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);
/** The server address Docker gives credential helpers for Docker Hub. */
const DOCKER_HUB_SERVER = 'https://index.docker.io/v1/';
const REGISTRY_RE = /^(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]+)?$/i;
/** A credential helper that has not answered in this long is stuck (helpers may wait on a keyring unlock). */
const HELPER_TIMEOUT_MS = 30_000;
const HELPER_OUTPUT_MAX = 1 << 20;

/** True for a registry name: a host name or bracketed IPv6 address, with an optional port (1-65535), and nothing else. */
export function isRegistryHost(registry: string): boolean {
  return REGISTRY_RE.test(registry) && registryHostProblem(registry) === undefined;
}

/**
 * The registry a login or a config key names, as Docker reads `auths` keys:
 * any scheme and path dropped (`https://host:5000/v2/` is `host:5000`),
 * lowercased, Docker Hub's aliases folded into `docker.io`.
 */
export function normalizeRegistry(key: string): string {
  let host = key.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = host.indexOf('/');
  if (slash >= 0) host = host.slice(0, slash);
  host = host.toLowerCase();
  return DOCKER_HUB_ALIASES.has(host) ? DOCKER_HUB : host;
}

const entrySchema = z.looseObject({
  auth: z.string().optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  identitytoken: z.string().optional(),
});
// Loose: Docker's config has many other keys, and Roost's file keeps whatever it does not know when rewritten.
const authFileSchema = z.looseObject({
  auths: z.record(z.string(), entrySchema).optional(),
  credHelpers: z.record(z.string(), z.string()).optional(),
  credsStore: z.string().optional(),
});
type AuthFile = z.infer<typeof authFileSchema>;
type AuthEntry = z.infer<typeof entrySchema>;

/**
 * Registry credentials: Roost's own file first (`roost login`), then
 * Docker's `config.json` (its `auths`, `credHelpers` and `credsStore`, read
 * the way the Docker CLI reads them). Nothing is cached: a `get` reads the
 * files (and runs a helper) again. Concurrent `login`/`logout` calls on one
 * store are serialized; two processes writing at once may lose one update.
 */
export class CredentialStore {
  readonly roostAuthFile: string;
  readonly dockerConfigDir: string;
  private writing: Promise<unknown> = Promise.resolve();

  constructor(options: CredentialStoreOptions) {
    this.roostAuthFile = options.roostAuthFile;
    this.dockerConfigDir = options.dockerConfigDir ?? process.env.DOCKER_CONFIG ?? join(homedir(), '.docker');
  }

  /**
   * The credentials for `registry` (`docker.io`, `host:5000`), or undefined
   * to pull anonymously. Throws IMAGE when a file is unreadable or a
   * credential helper is missing or fails (a helper that has no credentials
   * for the registry gives undefined).
   */
  async get(registry: string): Promise<Credentials | undefined> {
    const key = normalizeRegistry(registry);
    const own = await readAuthFile(this.roostAuthFile);
    const mine = own && findEntry(own, key, this.roostAuthFile);
    if (mine) return mine;

    const dockerFile = join(this.dockerConfigDir, 'config.json');
    const docker = await readAuthFile(dockerFile);
    if (!docker) return undefined;
    // Docker's order: a per-registry helper, else the default store, else the file's own entries.
    const helper = Object.entries(docker.credHelpers ?? {}).find(([k]) => normalizeRegistry(k) === key)?.[1] ?? (docker.credsStore || undefined);
    if (helper) return runCredentialHelper(helper, key === DOCKER_HUB ? DOCKER_HUB_SERVER : key, dockerFile);
    return findEntry(docker, key, dockerFile);
  }

  /**
   * Saves a login into Roost's file (mode 0600, replaced atomically). Does
   * not contact the registry: check the login first with
   * `RegistryClient.checkLogin`.
   */
  async login(registry: string, username: string, password: string): Promise<void> {
    const key = checkRegistry(registry);
    if (!username) throw new RoostError('INVALID_ARGUMENT', 'a user name is required');
    if (username.includes(':')) throw new RoostError('INVALID_ARGUMENT', 'a user name cannot contain ":"');
    if (!password) throw new RoostError('INVALID_ARGUMENT', 'a password (or access token) is required');
    await this.update((file) => {
      file.auths = { ...file.auths, [key]: { auth: Buffer.from(`${username}:${password}`, 'utf8').toString('base64') } };
      return true;
    });
  }

  /** Removes a login from Roost's file. Returns false when there was none. (Docker's own logins are Docker's to remove.) */
  async logout(registry: string): Promise<boolean> {
    const key = checkRegistry(registry);
    let removed = false;
    await this.update((file) => {
      for (const k of Object.keys(file.auths ?? {})) {
        if (normalizeRegistry(k) !== key) continue;
        delete file.auths![k];
        removed = true;
      }
      return removed;
    });
    return removed;
  }

  /** Reads Roost's file, lets `change` edit it, and writes it back when `change` says it changed. */
  private update(change: (file: AuthFile) => boolean): Promise<void> {
    const run = this.writing.then(async () => {
      const file = (await readAuthFile(this.roostAuthFile)) ?? {};
      if (change(file)) await writeAtomic(this.roostAuthFile, `${JSON.stringify(file, null, 2)}\n`);
    });
    this.writing = run.catch(() => undefined);
    return run;
  }
}

function checkRegistry(registry: string): string {
  const key = normalizeRegistry(registry);
  if (!isRegistryHost(key)) throw new RoostError('INVALID_ARGUMENT', `"${registry}" is not a registry host (like docker.io or registry.example:5000)`);
  return key;
}

/** A credentials file, or undefined when there is none. An empty file is an empty config, as Docker has it. */
async function readAuthFile(path: string): Promise<AuthFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new RoostError('IMAGE', `cannot read the credentials file ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (text.trim() === '') return {};
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new RoostError('IMAGE', `the credentials file ${path} is not valid JSON (${(e as Error).message}): fix or remove it`, { cause: e });
  }
  const r = authFileSchema.safeParse(doc);
  if (!r.success) {
    const why = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new RoostError('IMAGE', `the credentials file ${path} is not valid: ${why}`);
  }
  return r.data;
}

/** The first `auths` entry for `key` that holds credentials (Docker leaves empty entries behind when a helper stores them). */
function findEntry(file: AuthFile, key: string, path: string): Credentials | undefined {
  for (const [k, entry] of Object.entries(file.auths ?? {})) {
    if (normalizeRegistry(k) !== key) continue;
    const creds = decodeEntry(entry, k, path);
    if (creds) return creds;
  }
  return undefined;
}

function decodeEntry(entry: AuthEntry, key: string, path: string): Credentials | undefined {
  let username = entry.username;
  let password = entry.password;
  if (entry.auth) {
    const plain = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = plain.indexOf(':');
    if (colon <= 0) throw new RoostError('IMAGE', `the "auth" of ${key} in ${path} is not base64 of user:password: log in again`);
    username = plain.slice(0, colon);
    password = plain.slice(colon + 1);
  }
  if (entry.identitytoken) return { identityToken: entry.identitytoken, ...(username ? { username } : {}) };
  if (username && password !== undefined) return { username, password };
  return undefined;
}

/**
 * Asks `docker-credential-<name> get` for the credentials of `server`, as
 * Docker does: the server address on stdin, `{ServerURL, Username, Secret}`
 * on stdout, Username `<token>` for an identity token.
 */
function runCredentialHelper(name: string, server: string, configPath: string): Promise<Credentials | undefined> {
  const program = `docker-credential-${name}`;
  // The name becomes a program name looked up in PATH: nothing that could make it a path.
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) {
    return Promise.reject(new RoostError('IMAGE', `${configPath} names the credential helper "${name}", which is not a valid helper name`));
  }
  return new Promise((resolve, reject) => {
    const child = spawn(program, ['get'], { stdio: ['pipe', 'pipe', 'pipe'], timeout: HELPER_TIMEOUT_MS });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let size = 0;
    let settled = false;
    const settle = (fn: () => void) => {
      if (!settled) {
        settled = true;
        fn();
      }
    };
    const collect = (into: Buffer[]) => (chunk: Buffer) => {
      size += chunk.length;
      if (size > HELPER_OUTPUT_MAX) child.kill();
      else into.push(chunk);
    };
    child.stdout.on('data', collect(stdout));
    child.stderr.on('data', collect(stderr));
    child.stdin.on('error', () => {}); // a helper may exit without reading its input; its exit status says what happened
    child.stdin.end(server);
    child.on('error', (e: NodeJS.ErrnoException) => {
      settle(() =>
        reject(
          e.code === 'ENOENT'
            ? new RoostError('IMAGE', `the credential helper ${program} (configured in ${configPath}) is not installed or not on PATH`, { cause: e })
            : new RoostError('IMAGE', `cannot run the credential helper ${program}: ${e.message}`, { cause: e }),
        ),
      );
    });
    child.on('close', (code, signal) => {
      settle(() => {
        const out = Buffer.concat(stdout).toString('utf8').trim();
        const err = Buffer.concat(stderr).toString('utf8').trim();
        if (signal !== null) {
          const why = size > HELPER_OUTPUT_MAX ? 'wrote too much output' : `did not answer within ${HELPER_TIMEOUT_MS / 1000} s`;
          return reject(new RoostError('IMAGE', `the credential helper ${program} ${why} (asked for ${server})`));
        }
        if (code !== 0) {
          if (/credentials not found/i.test(`${out}\n${err}`)) return resolve(undefined);
          const first = (err || out).split('\n')[0] || `exit status ${code}`;
          return reject(new RoostError('IMAGE', `the credential helper ${program} failed for ${server}: ${first}`, { details: { exitCode: code } }));
        }
        let reply: { Username?: unknown; Secret?: unknown };
        try {
          reply = JSON.parse(out) as typeof reply;
        } catch (e) {
          return reject(new RoostError('IMAGE', `the credential helper ${program} gave an answer that is not JSON`, { cause: e }));
        }
        const username = typeof reply.Username === 'string' ? reply.Username : '';
        const secret = typeof reply.Secret === 'string' ? reply.Secret : '';
        if (!secret) return resolve(undefined);
        resolve(username === '<token>' ? { identityToken: secret } : { username, password: secret });
      });
    });
  });
}

/** Writes `path` so that a reader sees the old or the new file, never a partial one, and only its owner can read it. */
async function writeAtomic(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    try {
      await fh.writeFile(text, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw new RoostError('IMAGE', `cannot write the credentials file ${path}: ${(e as Error).message}`, { cause: e });
  }
}
