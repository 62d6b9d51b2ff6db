/**
 * The user-mode network stack: a sandbox's Ethernet link (QEMU's stream
 * netdev) terminated in the runtime, with the egress policy applied to
 * every flow on the host.
 */
export { UserNet, type UserNetOptions } from './stack.js';
export { USER_NET, USER_NET_HOST_ADDRESS, createUserNetFilter } from './addressing.js';
