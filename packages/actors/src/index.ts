export { ActorSystem, type ActorHost, type ActorSystemOptions } from './system.js';
export { ACTOR_ID_RE, deriveActorId, moduleDigest } from './ids.js';
