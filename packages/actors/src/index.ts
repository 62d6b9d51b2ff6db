export { ActorSystem, type ActorHost, type ActorSystemOptions } from './system.js';
export { ACTOR_ID_RE, deriveActorId, moduleDigest } from './ids.js';
/** The loader, for tools and benchmarks: what `deploy` checks and runs. */
export { capMemory, prepareModule, type PreparedModule } from './wasm/index.js';
export { ABI_IMPORTS, FUEL_EXPORT, START_EXPORT, type ActorGrant } from './abi.js';
