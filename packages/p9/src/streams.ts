/**
 * An in-memory pair of connected byte streams (Node 20 has no
 * `stream.duplexPair`): what one side writes, the other reads. For tests,
 * and for serving a session inside the process (a relay hands the server
 * one end).
 */
import { Duplex } from 'node:stream';

/** Two connected Duplex streams. Destroying or ending one ends the other's reading side. */
export function duplexPair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const make = (peer: () => Duplex): Duplex =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        const p = peer();
        if (!p.destroyed) p.push(chunk);
        callback();
      },
      final(callback) {
        peer().push(null);
        callback();
      },
      destroy(err, callback) {
        const p = peer();
        if (!p.destroyed && !p.readableEnded) p.push(null);
        callback(err);
      },
    });
  ends.push(
    make(() => ends[1]!),
    make(() => ends[0]!),
  );
  return [ends[0]!, ends[1]!];
}
