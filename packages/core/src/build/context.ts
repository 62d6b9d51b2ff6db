/**
 * The build context: a directory on the host, listed once (minus
 * `.dockerignore`), from which COPY and ADD read. The builder reads its
 * Dockerfile from here too.
 */
import { access, lstat, readFile, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { RoostError } from '../errors.js';
import { makeEntry, openEntry, type ContextEntry, type CopyEntry } from './context-entry.js';
import { listContext } from './context-list.js';
import { digestOf, type DigestOptions } from './digest.js';
import { DEFAULT_DOCKERFILE_NAME, dockerfileError, messageOf } from './dockerfile-error.js';
import { IgnoreMatcher, parseIgnoreFile, type IgnorePattern } from './dockerignore.js';
import { SourceResolver, type ResolveSourcesOptions } from './sources.js';

export type { ContextEntry, ContextEntryType, CopyEntry } from './context-entry.js';
export type { ResolveSourcesOptions } from './sources.js';
export type { DigestOptions, DigestProgress } from './digest.js';

/** Options of {@link openContext}. */
export interface OpenContextOptions {
  /** The Dockerfile: absolute, or relative to the context directory (default `Dockerfile` in it); it may be outside the context. */
  dockerfile?: string;
  /** Stops the listing (rejects with ABORTED). */
  signal?: AbortSignal;
}

/** A listed build context. */
export interface BuildContext {
  /** The context directory's real path. */
  readonly root: string;
  /** The Dockerfile's absolute path. */
  readonly dockerfilePath: string;
  /** The ignore file used (`<Dockerfile>.dockerignore` beside the Dockerfile wins over `<root>/.dockerignore`), or null. */
  readonly ignoreFile: string | null;
  /** Its patterns, cleaned, in order. */
  readonly ignorePatterns: readonly IgnorePattern[];
  /** Every included file, directory and symlink, sorted by path (the root itself is {@link rootEntry}). */
  readonly entries: readonly ContextEntry[];
  /** The root directory (path `.`). */
  readonly rootEntry: ContextEntry;
  /** Sockets, FIFOs and devices found and not listed (nothing can COPY them). */
  readonly skipped: readonly string[];
  /** The Dockerfile's text (readable even when `.dockerignore` excludes it; COPY cannot read it then). */
  readDockerfile(): Promise<string>;
  /** The included entry at a relative path, symlinks not followed (`.` for the root). */
  entry(path: string): ContextEntry | undefined;
  /**
   * What COPY/ADD `sources` (as the plan gives them, expanded) pick, with
   * where each lands under the destination; see sources.ts for the rules.
   * Throws INVALID_ARGUMENT naming `options.line` when a source matches
   * nothing, leaves the context, or loops.
   */
  resolveSources(sources: readonly string[], options?: ResolveSourcesOptions): CopyEntry[];
  /** A file entry's contents, streamed; fails if the file was replaced since it was listed. */
  open(entry: ContextEntry): Readable;
  /** The content digest of `entries` (see digest.ts), for cache keys. */
  digestOf(entries: readonly (ContextEntry | CopyEntry)[], options?: DigestOptions): Promise<string>;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** The ignore file that applies: `<Dockerfile>.dockerignore` beside the Dockerfile, else `<root>/.dockerignore`, else none. */
async function findIgnoreFile(root: string, dockerfilePath: string): Promise<string | null> {
  const beside = `${dockerfilePath}.dockerignore`;
  if (await exists(beside)) return beside;
  const atRoot = join(root, '.dockerignore');
  return (await exists(atRoot)) ? atRoot : null;
}

/** A path for messages: relative to the context when inside it. */
function shown(root: string, path: string): string {
  const rel = relative(root, path);
  return rel.startsWith('..') || isAbsolute(rel) ? path : rel;
}

/**
 * Opens the build context at `dir`: reads `.dockerignore` (or
 * `<Dockerfile>.dockerignore`), lists every file not excluded (symlinks
 * recorded, never followed), and returns an object that resolves COPY
 * sources, streams contents and digests them.
 *
 * Throws INVALID_ARGUMENT when `dir` is not a directory or the ignore file
 * has a bad pattern (naming its line), NOT_FOUND when the Dockerfile is
 * missing, PERMISSION_DENIED when an included directory cannot be read.
 */
export async function openContext(dir: string, options: OpenContextOptions = {}): Promise<BuildContext> {
  const given = resolve(dir);
  let root: string;
  try {
    root = await realpath(given);
    if (!(await stat(root)).isDirectory()) throw new Error('not a directory');
  } catch (err) {
    throw new RoostError('INVALID_ARGUMENT', `the build context ${dir} is not a directory: ${messageOf(err)}`, { details: { path: dir }, cause: err });
  }
  const dockerfilePath = resolve(root, options.dockerfile ?? DEFAULT_DOCKERFILE_NAME);
  if (!(await exists(dockerfilePath))) {
    throw new RoostError('NOT_FOUND', `no Dockerfile at ${dockerfilePath}${options.dockerfile === undefined ? ' (give its path with -f)' : ''}`, {
      details: { path: dockerfilePath },
    });
  }

  const ignoreFile = await findIgnoreFile(root, dockerfilePath);
  let ignorePatterns: IgnorePattern[] = [];
  if (ignoreFile !== null) {
    const text = await readFile(ignoreFile, 'utf8');
    try {
      ignorePatterns = parseIgnoreFile(text);
    } catch (err) {
      const line = Number(/^line (\d+): /.exec(messageOf(err))?.[1] ?? 0);
      throw dockerfileError(shown(root, ignoreFile), line, messageOf(err).replace(/^line \d+: /, ''));
    }
  }
  const dockerfileName = shown(root, dockerfilePath);
  const matcher = ignorePatterns.length > 0 ? new IgnoreMatcher(ignorePatterns) : null;
  const listing = await listContext(root, matcher, options.signal);
  const rootEntry = makeEntry('.', root, await lstat(root), 'directory', null);
  const resolver = new SourceResolver(listing.entries, rootEntry, [root, given]);

  return {
    root,
    dockerfilePath,
    ignoreFile,
    ignorePatterns,
    entries: listing.entries,
    rootEntry,
    skipped: listing.skipped,
    readDockerfile: () => readFile(dockerfilePath, 'utf8'),
    entry: (path) => resolver.get(path),
    resolveSources: (sources, resolveOptions) => resolver.resolve(sources, { ...resolveOptions, file: resolveOptions?.file ?? dockerfileName }),
    open: (entry) => openEntry(entry),
    digestOf: (entries, digestOptions) => digestOf(entries, digestOptions),
  };
}
