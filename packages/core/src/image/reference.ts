import { RoostError } from '../errors.js';

/**
 * A fully qualified image reference: `registry/repository[:tag][@digest]`.
 * At least one of tag and digest is set (a bare name means `:latest`).
 */
export interface ImageReference {
  /** Registry host, with its port if any (`docker.io`, `127.0.0.1:5000`). */
  registry: string;
  /** Repository path within the registry (`library/alpine`, `team/app`). */
  repository: string;
  tag?: string;
  /** `algorithm:hex`, e.g. `sha256:...`. When set, it identifies the content; the tag is informational. */
  digest?: string;
}

/** The registry Docker Hub references are normalized to. */
export const DOCKER_HUB = 'docker.io';

// The reference grammar of the OCI distribution project, as Docker implements it:
//   reference  := name [ ":" tag ] [ "@" digest ]
//   name       := [ domain "/" ] path-component [ "/" path-component ]*
//   domain     := host [ ":" port ]
//   path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*   separator := [_.] | "__" | "-"+
//   tag        := [\w][\w.-]{0,127}
//   digest     := algorithm ":" hex   (sha256: exactly 64 lowercase hex digits)
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const HOST = `(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9A-Fa-f:.]+\\])`;
const DOMAIN_RE = new RegExp(`^${HOST}(?::[0-9]+)?$`);
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
const NAME_MAX = 255;

/**
 * Parses an image reference the way Docker does and returns it fully
 * qualified: `alpine` is `docker.io/library/alpine:latest`,
 * `host:5000/a/b@sha256:...` keeps its registry and digest. Throws
 * INVALID_ARGUMENT naming what is wrong.
 */
export function parseImageReference(input: string): ImageReference {
  const bad = (why: string) => new RoostError('INVALID_ARGUMENT', `invalid image reference "${input}": ${why}`);
  if (typeof input !== 'string' || input.length === 0) throw bad('it is empty');
  if (input !== input.trim()) throw bad('it has leading or trailing white space');

  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) throw bad(`"${digest}" is not a digest (expected algorithm:hex, like sha256:<64 hex digits>)`);
    const [algorithm, hex] = digest.split(':') as [string, string];
    if (algorithm === 'sha256' && !/^[0-9a-f]{64}$/.test(hex)) throw bad('a sha256 digest has exactly 64 lowercase hex digits');
    if (algorithm === 'sha512' && !/^[0-9a-f]{128}$/.test(hex)) throw bad('a sha512 digest has exactly 128 lowercase hex digits');
  }

  // A tag follows the last ':' that comes after the last '/' (a ':' before it is a registry port).
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw bad(`"${tag}" is not a tag (letters, digits, _ . -, at most 128, not starting with . or -)`);
  }

  if (rest.length === 0) throw bad('it has no repository name');
  if (rest.length > NAME_MAX) throw bad(`the name is longer than ${NAME_MAX} characters`);

  // Docker's rule: the first component is a registry only if it looks like a host.
  let registry = DOCKER_HUB;
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      registry = first;
      path = rest.slice(slash + 1);
      if (!DOMAIN_RE.test(registry)) throw bad(`"${registry}" is not a registry host`);
      const problem = registryHostProblem(registry);
      if (problem) throw bad(problem);
    }
  }
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;

  const components = path.split('/');
  for (const c of components) {
    if (c.length === 0) throw bad('the repository has an empty path component');
    if (c !== c.toLowerCase()) throw bad('repository names must be lowercase');
    if (!PATH_COMPONENT_RE.test(c)) throw bad(`"${c}" is not a valid repository path component`);
  }
  if (registry === DOCKER_HUB && components.length === 1) {
    if (/^[0-9a-f]{64}$/.test(path)) throw bad('a 64-digit hex string is an image id, not a name');
    path = `library/${path}`;
  }

  const ref: ImageReference = { registry, repository: path };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  if (tag === undefined && digest === undefined) ref.tag = 'latest';
  return ref;
}

/**
 * Why `host` (a registry's `host[:port]`, already of the right shape)
 * cannot be reached, or undefined when it can: a port outside 1-65535, or
 * a host no URL can hold.
 */
export function registryHostProblem(host: string): string | undefined {
  const port = /\]?:([0-9]+)$/.exec(host)?.[1];
  if (port !== undefined && (port.length > 5 || Number(port) < 1 || Number(port) > 65535))
    return `port ${port} of registry "${host}" is out of range (1-65535)`;
  try {
    new URL(`https://${host}/`);
  } catch {
    return `"${host}" is not a valid registry host`;
  }
  return undefined;
}

/** The fully qualified form: `docker.io/library/alpine:3.20`, `h:5000/a@sha256:...`. */
/** The reference with the tag `latest` when it names neither a tag nor a digest. */
export function withDefaultTag(ref: ImageReference): ImageReference {
  return ref.tag || ref.digest ? ref : { ...ref, tag: 'latest' };
}

export function formatImageReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/** The short form people type and Docker prints: `alpine:3.20`, `team/app:1`, `h:5000/a/b:tag`. */
export function familiarImageReference(ref: ImageReference): string {
  let name = `${ref.registry}/${ref.repository}`;
  if (ref.registry === DOCKER_HUB)
    name = ref.repository.startsWith('library/') && ref.repository.split('/').length === 2 ? ref.repository.slice(8) : ref.repository;
  return `${name}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/** The host to send registry API requests to (Docker Hub's API lives on another host than its name). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? 'registry-1.docker.io' : registry;
}
