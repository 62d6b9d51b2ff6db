/**
 * COPY/ADD source resolution over a listed context, with Docker's COPY
 * semantics: a file; a directory (its contents, not itself); a glob, where
 * `*`, `?` and `[...]` match within one path component (BuildKit walks
 * the directory before the first wildcard and filepath.Match-es each path:
 * `**` is just `*`), a matched directory copied as a directory source
 * would be. Each source named (and each glob match) is followed if it is a
 * symlink; symlinks inside copied directories are kept as symlinks.
 *
 * Path safety: `..` that leaves the context, and symlinks (followed
 * through) that lead out of it, are refused; a leading `/` means the
 * context root, as in Docker. Symlink chains are cut after 40 links
 * (ELOOP), so a loop is an error, not a hang.
 */
import { posix } from 'node:path';
import type { ContextEntry, CopyEntry } from './context-entry.js';
import { DEFAULT_DOCKERFILE_NAME, dockerfileError } from './dockerfile-error.js';
import { containsWildcards, filepathMatch, splitWildcards } from './glob.js';

/** Options of {@link SourceResolver.resolve}: where the sources come from, for errors. */
export interface ResolveSourcesOptions {
  /** The COPY/ADD line (errors name it). */
  line?: number;
  /** The Dockerfile's name in messages (default `Dockerfile`). */
  file?: string;
  /** `COPY` (default) or `ADD`, for messages. */
  instruction?: 'COPY' | 'ADD';
}

/** Linux's limit on symlinks followed in one path lookup. */
const MAX_LINKS = 40;

/** A listed context, indexed to resolve COPY sources. */
export class SourceResolver {
  private readonly index = new Map<string, number>();
  private readonly hostRoots: string[];

  /**
   * `entries` sorted as the listing gives them (a directory's entries right
   * after it); `rootEntry` the root (path `.`); `hostRoots` the absolute
   * host paths the root is known by (its real path first), for absolute
   * symlink targets.
   */
  constructor(
    private readonly entries: readonly ContextEntry[],
    private readonly rootEntry: ContextEntry,
    hostRoots: readonly string[],
  ) {
    entries.forEach((e, i) => this.index.set(e.path, i));
    this.hostRoots = [...new Set(hostRoots.map((r) => posix.normalize(r).replace(/\/$/, '') || '/'))];
  }

  /** The entry at a relative path (`.` or `''` for the root), not following symlinks. */
  get(path: string): ContextEntry | undefined {
    if (path === '' || path === '.') return this.rootEntry;
    const i = this.index.get(path);
    return i === undefined ? undefined : this.entries[i];
  }

  /** The entries under a directory (all of them for the root), in listing order. */
  descendants(dir: ContextEntry): ContextEntry[] {
    if (dir === this.rootEntry || dir.path === '.') return [...this.entries];
    const start = this.index.get(dir.path);
    if (start === undefined) return [];
    const prefix = dir.path + '/';
    const out: ContextEntry[] = [];
    for (let i = start + 1; i < this.entries.length; i++) {
      const e = this.entries[i] as ContextEntry;
      if (!e.path.startsWith(prefix)) break;
      out.push(e);
    }
    return out;
  }

  /**
   * The context entries COPY/ADD `sources` pick, each with its `target`
   * under the destination, in source order (duplicates dropped). Throws
   * INVALID_ARGUMENT `FILE:LINE: COPY failed: ...` for a source that
   * matches nothing, leaves the context, or loops.
   */
  resolve(sources: readonly string[], options: ResolveSourcesOptions = {}): CopyEntry[] {
    const name = options.instruction ?? 'COPY';
    const fail = (message: string, source?: string): never => {
      throw dockerfileError(options.file ?? DEFAULT_DOCKERFILE_NAME, options.line ?? 0, `${name} failed: ${message}`, source === undefined ? {} : { source });
    };
    if (sources.length === 0) fail('no source files were specified');
    const out: CopyEntry[] = [];
    const seen = new Set<string>();
    const add = (entry: ContextEntry, target: string): void => {
      const key = `${entry.path}\0${target}`;
      if (seen.has(key)) return;
      seen.add(key);
      out.push({ ...entry, target });
    };
    const addSource = (picked: ContextEntry, source: string, baseName: string): void => {
      const entry = picked.type === 'symlink' ? this.follow(picked.path, source, fail) : picked;
      if (!entry) return fail(`"${source}" is a symlink to something not in the build context (or excluded by .dockerignore)`, source);
      if (entry.type !== 'directory') return add(entry, baseName);
      add(entry, '');
      const prefixLength = entry.path === '.' ? 0 : entry.path.length + 1;
      for (const inside of this.descendants(entry)) add(inside, inside.path.slice(prefixLength));
    };

    for (const source of sources) {
      const rel = normalizeSource(source, fail);
      if (!containsWildcards(rel)) {
        const entry = this.follow(rel, source, fail);
        if (!entry) fail(`file not found in build context or excluded by .dockerignore: "${source}"`, source);
        addSource(entry as ContextEntry, source, posix.basename(rel));
        continue;
      }
      const { dir, pattern } = splitWildcards(rel);
      const base = this.follow(dir, source, fail);
      const matches: ContextEntry[] = [];
      if (base?.type === 'directory') {
        const prefixLength = base.path === '.' ? 0 : base.path.length + 1;
        let skipUnder: string | null = null;
        for (const entry of this.descendants(base)) {
          if (skipUnder !== null && entry.path.startsWith(skipUnder)) continue;
          skipUnder = null;
          let matched = false;
          try {
            matched = filepathMatch(pattern, entry.path.slice(prefixLength));
          } catch {
            fail(`"${source}" is not a valid pattern`, source);
          }
          if (!matched) continue;
          matches.push(entry);
          if (entry.type === 'directory') skipUnder = entry.path + '/';
        }
      }
      if (matches.length === 0) fail(`no source files were specified: nothing in the build context matches "${source}"`, source);
      for (const match of matches) addSource(match, source, posix.basename(match.path));
    }
    return out;
  }

  /**
   * The entry `rel` names, every symlink on the way (the last one too)
   * followed inside the context; undefined when there is none. A link
   * that leads out of the context, or a chain of more than 40, fails.
   */
  private follow(rel: string, source: string, fail: (message: string, source?: string) => never): ContextEntry | undefined {
    let pending = rel === '' ? [] : rel.split('/');
    let current: string[] = [];
    let entry: ContextEntry = this.rootEntry;
    let links = 0;
    let via = '';
    while (pending.length > 0) {
      const component = pending.shift() as string;
      if (component === '' || component === '.') continue;
      if (component === '..') {
        if (current.length === 0) fail(`"${source}" leads outside the build context${via}`, source);
        current.pop();
        entry = this.get(current.join('/')) as ContextEntry;
        continue;
      }
      const path = [...current, component].join('/');
      const found = this.get(path);
      if (!found) return undefined;
      if (found.type === 'symlink') {
        if (++links > MAX_LINKS) fail(`"${source}": too many levels of symbolic links (a symlink loop at ${found.path}?)`, source);
        const target = found.linkTarget ?? '';
        via = ` (through the symlink ${found.path} -> ${target})`;
        if (target.startsWith('/')) {
          const inside = this.hostToRelative(target);
          if (inside === null) fail(`"${source}" leads outside the build context${via}`, source);
          current = [];
          pending = [...(inside as string).split('/'), ...pending];
        } else {
          pending = [...target.split('/'), ...pending];
        }
        continue;
      }
      if (pending.some((c) => c !== '' && c !== '.') && found.type !== 'directory') return undefined;
      current.push(component);
      entry = found;
    }
    return entry;
  }

  /** An absolute host path inside the context as a relative path (`''` for the root), or null. */
  private hostToRelative(target: string): string | null {
    const normalized = posix.normalize(target);
    for (const root of this.hostRoots) {
      if (normalized === root || normalized === root + '/') return '';
      if (root === '/') return normalized.slice(1);
      if (normalized.startsWith(root + '/')) return normalized.slice(root.length + 1).replace(/\/$/, '');
    }
    return null;
  }
}

/**
 * A COPY source as a clean relative path (`''` for the root): a leading `/`
 * means the context root (as in Docker), `.` parts dropped, `..` resolved;
 * `..` that climbs above the root is refused.
 */
export function normalizeSource(source: string, fail: (message: string, source?: string) => never): string {
  const parts: string[] = [];
  for (const component of source.split('/')) {
    if (component === '' || component === '.') continue;
    if (component === '..') {
      if (parts.length === 0) fail(`"${source}" is outside the build context (COPY can only read what is in the context)`, source);
      parts.pop();
      continue;
    }
    parts.push(component);
  }
  return parts.join('/');
}
