/** The actors' versioned, content-addressed state tree and its SQLite node store. */
export { NodeCache } from './node-cache.js';
export { EMPTY_ROOT, MAX_KEY_BYTES, MAX_VALUE_BYTES } from './node-format.js';
export { SqliteNodes, createNodeTables } from './sqlite-nodes.js';
export { StateTree, sharedNodeCache, stateSize, type NewNode, type NodeSource } from './state-tree.js';
