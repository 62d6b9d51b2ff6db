/**
 * @roost/api: the contract between Roost's faces. Input schemas with their
 * limits, the interfaces the embedded runtime and the remote client both
 * implement, RoostError with its HTTP status table, and the wire decoders.
 */
export * from './errors.js';
export * from './disk-full.js';
export * from './limits.js';
export * from './schemas.js';
export * from './options.js';
export * from './sandbox.js';
export * from './images.js';
export * from './push.js';
export * from './build.js';
export * from './paths.js';
export * from './names.js';
export * from './files.js';
export * from './errno.js';
export * from './snapshots.js';
export * from './labels.js';
export * from './pools.js';
export * from './network.js';
export * from './abort.js';
export * from './wire.js';
export * from './output-buffer.js';
export * from './read-limit.js';
export * from './command-args.js';
export * from './doctor.js';
export * from './sessions.js';
export * from './mcp.js';
export * from './mcp-deployments.js';
export * from './mcp-actors.js';
export * from './deployments.js';
export * from './actors.js';
