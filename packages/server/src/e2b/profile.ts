import { posix } from 'node:path';
import type { SandboxApi, SandboxInfo } from '@roost/api';

/*
 * What E2B's envd knows of its own guest and Roost's face has to look up:
 * whether the image has bash (the SDK runs every command with it), which
 * user is the default (E2B's templates run as `user`, home /home/user), and
 * each user's home (where commands start and relative paths resolve).
 * These are facts of the template, as in E2B: read from the first sandbox
 * of an image, snapshot or the base, then known for every sandbox made from
 * it (a fresh guest's first file calls cost tens of ms under TCG).
 */

/** E2B's default user, used when the image has it (docs/e2b-wire.md §5). */
export const E2B_DEFAULT_USER = 'user';

/** A guest's facts, read once per sandbox. */
export interface GuestProfile {
  hasBash: boolean;
  /** `user` when /etc/passwd has it, else undefined (root). */
  defaultUser: string | undefined;
  /** Home directories by user name, from /etc/passwd. */
  homes: ReadonlyMap<string, string>;
  /** User names by uid (/etc/passwd) and group names by gid (/etc/group): E2B's entries carry names. */
  userNames: ReadonlyMap<number, string>;
  groupNames: ReadonlyMap<number, string>;
  /** Whether a home directory exists, by path (looked up once each). */
  homeExists: Map<string, Promise<boolean>>;
}

/** The homes in an /etc/passwd text (name -> home; lines that are not 7 fields are skipped). */
export function parsePasswd(text: string): Map<string, string> {
  const homes = new Map<string, string>();
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length === 7 && f[0] && f[5]?.startsWith('/')) homes.set(f[0], f[5]);
  }
  return homes;
}

/** Names by id in an /etc/passwd or /etc/group text (the first name of an id wins). */
export function namesById(text: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const line of text.split('\n')) {
    const f = line.split(':');
    const id = Number(f[2]);
    if (f.length >= 4 && f[0] && f[2] !== '' && Number.isSafeInteger(id) && !names.has(id)) names.set(id, f[0]);
  }
  return names;
}

/** How many templates' profiles are kept (the oldest is dropped past it). */
const MAX_PROFILES = 256;

/** What a sandbox was made from: its snapshot (templates and forks restore one), its image, or the base. */
export function sourceOf(info: SandboxInfo): string {
  return info.snapshot ? `snapshot:${info.snapshot}` : info.image ? `image:${info.image.id}` : 'base';
}

/** The guest profiles of the templates the face has served, each read from their first sandbox. */
export class GuestProfiles {
  readonly #profiles = new Map<string, Promise<GuestProfile>>();

  get(sandbox: SandboxApi): Promise<GuestProfile> {
    const key = sourceOf(sandbox.info);
    let p = this.#profiles.get(key);
    if (!p) {
      p = read(sandbox);
      this.#profiles.set(key, p);
      if (this.#profiles.size > MAX_PROFILES) this.#profiles.delete(this.#profiles.keys().next().value!);
      // A failed read (the sandbox went away mid-read) is not kept.
      p.catch(() => {
        if (this.#profiles.get(key) === p) this.#profiles.delete(key);
      });
    }
    return p;
  }
}

async function read(sandbox: SandboxApi): Promise<GuestProfile> {
  const [hasBash, passwd, group] = await Promise.all([
    sandbox.files.exists('/bin/bash'),
    // An image without /etc/passwd (scratch) has root only.
    sandbox.files.read('/etc/passwd').catch(() => ''),
    sandbox.files.read('/etc/group').catch(() => ''),
  ]);
  const homes = parsePasswd(passwd);
  return {
    hasBash,
    defaultUser: homes.has(E2B_DEFAULT_USER) ? E2B_DEFAULT_USER : undefined,
    homes,
    userNames: namesById(passwd),
    groupNames: namesById(group),
    homeExists: new Map(),
  };
}

/** The user a request runs as: the one it names, else the template's default (`user` if the image has it, else root). */
export function effectiveUser(profile: GuestProfile, named: string | undefined): string | undefined {
  return named ?? profile.defaultUser;
}

/** A user's home: from /etc/passwd, else /root for root and /home/<name> for others. */
export function homeOf(profile: GuestProfile, user: string | undefined): string {
  const name = !user || user === '0' ? 'root' : user;
  return profile.homes.get(name) ?? (name === 'root' ? '/root' : `/home/${name}`);
}

/** An E2B path (absolute, or relative to the user's home) as a guest path. */
export function guestPath(profile: GuestProfile, path: string, user: string | undefined): string {
  return posix.resolve(homeOf(profile, user), path);
}

/**
 * Where a command starts when the request names no directory: the user's
 * home, as in E2B, when it exists (else the image's working directory).
 */
export async function startDir(sandbox: SandboxApi, profile: GuestProfile, user: string | undefined): Promise<string | undefined> {
  const home = homeOf(profile, user);
  let exists = profile.homeExists.get(home);
  if (!exists) profile.homeExists.set(home, (exists = sandbox.files.exists(home).catch(() => false)));
  return (await exists) ? home : undefined;
}
