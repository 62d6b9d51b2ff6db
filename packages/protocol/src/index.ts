/**
 * @roost/protocol: the wire format between the Roost host and its guest
 * agent, as specified in docs/PROTOCOL.md. Pure codecs, no I/O.
 */
export * from './constants.js';
export * from './errors.js';
export * from './frame.js';
export * from './tlv.js';
export * from './messages.js';
export * from './records.js';
export * from './agent-info.js';
export * from './p9-mux.js';
