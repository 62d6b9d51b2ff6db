/**
 * The paths fids stand for, as a tree shared by every session of one
 * export: a fid holds a node, a node knows its parent and its name, and a
 * file's path is read from the chain when it is needed. A rename through
 * the server moves the node, so every fid below it follows (as QEMU fixes
 * fid paths after a rename); a removal detaches it, so a fid of a removed
 * file does not silently reach a new file made later under the same name.
 *
 * Nodes live while a fid holds them or a live node hangs below them, so
 * the tree is bounded by the fids (at most 16 nodes per walk).
 */
import type { Name, Path } from './backend.js';
import { Errno } from './constants.js';
import { P9Error } from './errors.js';

/** One name in the tree. */
export class PathNode {
  readonly children = new Map<string, PathNode>();
  /** Fids (and restored state) holding this node. */
  refs = 0;
  /** Detached by a removal or by a rename over it. */
  detached = false;

  constructor(
    public parent: PathNode | null,
    public name: Name,
  ) {}

  /** The path from the export root, or null when this node or an ancestor was detached. */
  path(): Path | null {
    if (this.detached) return null;
    const names: Name[] = [];
    for (let n: PathNode | null = this.parent, name = this.name; n !== null; name = n.name, n = n.parent) {
      if (n.detached) return null;
      names.push(name);
    }
    return names.reverse();
  }

  /** The path, or ENOENT when the file was removed. */
  livePath(): Path {
    const p = this.path();
    if (p === null) throw new P9Error(Errno.ENOENT, 'the file was removed');
    return p;
  }

  /** Whether this is the export root. */
  get isRoot(): boolean {
    return this.parent === null;
  }
}

const key = (name: Name): string => name.toString('latin1');

/** The tree of one export. */
export class PathTree {
  readonly root = new PathNode(null, Buffer.alloc(0));

  /** The node of `name` under `parent` (made when missing). */
  child(parent: PathNode, name: Name): PathNode {
    const k = key(name);
    let node = parent.children.get(k);
    if (node === undefined) {
      node = new PathNode(parent, Buffer.from(name));
      parent.children.set(k, node);
    }
    return node;
  }

  /** The node of a path from the root (made when missing). */
  at(path: Path): PathNode {
    let node = this.root;
    for (const name of path) node = this.child(node, name);
    return node;
  }

  /** Takes a reference. */
  ref(node: PathNode): PathNode {
    node.refs++;
    return node;
  }

  /** Drops a reference, freeing nodes nothing holds any more. */
  unref(node: PathNode): void {
    node.refs--;
    this.prune(node);
  }

  /** Frees `node` and its ancestors while nothing holds them. */
  prune(node: PathNode | null): void {
    while (node !== null && node.parent !== null && node.refs <= 0 && node.children.size === 0) {
      const parent: PathNode = node.parent;
      if (parent.children.get(key(node.name)) === node) parent.children.delete(key(node.name));
      node = parent;
    }
  }

  /** After a rename: the node at (oldParent, oldName), if any, now is (newParent, newName); one there before is detached. */
  moved(oldParent: PathNode, oldName: Name, newParent: PathNode, newName: Name): void {
    const node = oldParent.children.get(key(oldName));
    const replaced = newParent.children.get(key(newName));
    if (replaced !== undefined && replaced !== node) this.#detach(newParent, replaced);
    if (node === undefined) {
      this.prune(newParent);
      return;
    }
    oldParent.children.delete(key(oldName));
    node.parent = newParent;
    node.name = Buffer.from(newName);
    newParent.children.set(key(newName), node);
    this.prune(oldParent);
  }

  /** After a removal: the node at (parent, name), if any, is detached. */
  removed(parent: PathNode, name: Name): void {
    const node = parent.children.get(key(name));
    if (node !== undefined) this.#detach(parent, node);
    this.prune(parent);
  }

  #detach(parent: PathNode, node: PathNode): void {
    parent.children.delete(key(node.name));
    node.detached = true;
  }

  /** Nodes in the tree (for tests of the bounds). */
  get size(): number {
    let n = 0;
    const count = (node: PathNode): void => {
      n++;
      for (const c of node.children.values()) count(c);
    };
    count(this.root);
    return n;
  }
}
