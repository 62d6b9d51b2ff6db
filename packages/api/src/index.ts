/**
 * @roost/api: the contract between Roost's faces. The REST API's zod
 * schemas, the Sandbox interface shared by the embedded runtime and the
 * remote client, and RoostError with its HTTP status table.
 */
export * from './errors.js';
export * from './schemas.js';
export * from './sandbox.js';
export * from './paths.js';
export * from './files.js';
export * from './errno.js';
export * from './snapshots.js';
export * from './network.js';
