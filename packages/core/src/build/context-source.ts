import type { ContextSource } from './builder.js';
import { openContext, type CopyEntry } from './context.js';
import type { CopyFile } from './copy-layer.js';
import type { StepCopy } from './plan-types.js';

/**
 * The build context as the engine reads it: a listed context (context.ts)
 * whose COPY sources become the files of a layer, placed as Docker places
 * them: a file source onto a destination that is not a directory becomes
 * the destination itself; everything else lands below the destination.
 * Files of the copied set that are hard links of each other stay links.
 */
export async function contextSource(root: string, dockerfile: string, file: string): Promise<ContextSource> {
  const ctx = await openContext(root, { dockerfile });
  /** The context's entries behind the files a select gave, for their digest. */
  const picked = new WeakMap<CopyFile, CopyEntry>();
  return {
    async select(step: StepCopy): Promise<CopyFile[]> {
      const entries = ctx.resolveSources(step.sources, { line: step.line, file });
      const destIsDir = step.dest.endsWith('/');
      const dest = step.dest.replace(/^\/+|\/+$/g, '');
      const single = !destIsDir && entries.length === 1 && entries[0]!.type !== 'directory';
      const firstOfInode = new Map<string, string>();
      const out: CopyFile[] = [];
      for (const e of entries) {
        const target = single ? dest : [dest, e.target].filter(Boolean).join('/');
        if (target === '') continue; // the root's own entry: `/` keeps its metadata
        const inode = `${e.dev}:${e.ino}`;
        const first = e.type === 'file' && e.nlink > 1 ? firstOfInode.get(inode) : undefined;
        const f: CopyFile = first
          ? { target, type: 'hardlink', mode: e.mode, size: 0, mtime: Math.floor(e.mtimeMs / 1000), link: first }
          : {
              target,
              type: e.type === 'directory' ? 'dir' : e.type,
              mode: e.mode,
              size: e.size,
              mtime: Math.floor(e.mtimeMs / 1000),
              ...(e.type === 'symlink' ? { link: e.linkTarget ?? '' } : {}),
              ...(e.type === 'file' ? { open: () => ctx.open(e) } : {}),
            };
        if (e.type === 'file' && e.nlink > 1 && !first) firstOfInode.set(inode, target);
        picked.set(f, e);
        out.push(f);
      }
      return out;
    },
    digest(files: readonly CopyFile[]): Promise<string> {
      return ctx.digestOf(files.map((f) => picked.get(f)).filter((e): e is CopyEntry => e !== undefined));
    },
  };
}
