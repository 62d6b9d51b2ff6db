/** A peer sent bytes that break the protocol. The connection cannot continue. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
}
