/**
 * @roost/p9: a 9P2000.L file server in TypeScript, for the Linux kernel's
 * 9P client (v9fs). The codec (wire.ts), sessions over any byte stream that
 * can be detached, saved and rebuilt (session.ts, session-snapshot.ts), a
 * backend interface (backend.ts) with a local-directory backend using
 * QEMU's mapped-xattr ownership (local.ts), and a small client (client.ts).
 * No Roost types: usable alone.
 */
export * from './constants.js';
export * from './wire.js';
export { FrameReader } from './frames.js';
export { P9Error, errnoName, toErrno } from './errors.js';
export type { Attr, Backend, Credentials, DirEntry, FileHandle, Name, Path, SetAttrRequest, StatFs, Timespec } from './backend.js';
export { LocalBackend, LocalHandle, type LocalBackendOptions } from './local.js';
export { sanitizeName, type SafeRootOptions } from './local-paths.js';
export { Quota } from './quota.js';
export { LockTable, type HeldLock, type LockConflict } from './locks.js';
export { Export, type ExportOptions } from './export.js';
export { Session, type AttachEnd, type SessionHost, type SessionOptions } from './session.js';
export { serializeSession, restoreSession, type FidSnapshot, type LockSnapshot, type SessionSnapshot } from './session-snapshot.js';
export { P9Server, type P9ServerOptions } from './server.js';
export { P9Client, type Request } from './client.js';
export { duplexPair } from './streams.js';
export { connectInProcess, type Connected } from './harness.js';
export { TokenAuthenticator, newToken, TOKEN_PREFIX, type Authenticator, type Grant } from './auth.js';
export {
  parseCredentials,
  formatCredentials,
  writeCredentials,
  parseRemoteUrl,
  formatRemoteUrl,
  type RemoteCredentials,
  type RemoteAddress,
} from './credentials.js';
export { certificateFingerprint, normalizeFingerprint, loadOrCreateCertificate, writePrivateFile, type ServerCertificate } from './remote-tls.js';
export { RemoteServer, ALPN_9P, type RemoteServerOptions, type RemoteServerStats } from './remote-server.js';
export { RemoteBackend, RemoteHandle, type RemoteBackendOptions } from './remote-backend.js';
export type { RemoteConnection, RemoteConnectionOptions, RemoteTarget } from './remote-connection.js';
