import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { isRoostError, RoostError, type DoctorOptions, type DoctorReport, type ImagesApi, type RuntimeApi, type SandboxApi, type VolumesApi } from '@roost/api';
import { RoostClient } from '@roost/client';
import { ImageStore, roostHome, Runtime, Volumes } from '@roost/core';
import { StoreImages } from '@roost/core/internal';
import { probeHomeDaemon, waitForStartingDaemon } from './daemon.js';

/** What the image commands talk to: the daemon's image store, or the home's (no lock needed). */
export interface ImagesFace {
  readonly kind: 'remote' | 'embedded';
  readonly images: ImagesApi;
  close(): Promise<void>;
}

/**
 * What one CLI invocation talks to: the daemon (`remote`) or a runtime
 * opened in this process (`embedded`). Commands use `runtime` (the
 * `RuntimeApi` both implement) and the few helpers here, so both faces run
 * the same code.
 */
export interface Face extends ImagesFace {
  /** The daemon's address, or the home. */
  readonly where: string;
  readonly runtime: RuntimeApi;
  /** Ends the connection or the runtime (non-detached sandboxes of an embedded runtime die with it). */
  close(): Promise<void>;
}

/**
 * Opens the face of this invocation for one command, and closes it after.
 * `reconcile`: an embedded runtime keeps the home's warm pools filled (and its deployments running) while
 * the command runs (only commands that create or take from pools ask: others
 * would start restores they abort when they end).
 */
export type WithFace = <T>(command: string, fn: (face: Face) => Promise<T>, options?: { reconcile?: boolean }) => Promise<T>;
/** Opens the image face of this invocation for one command, and closes it after. */
export type WithImages = <T>(fn: (face: ImagesFace) => Promise<T>) => Promise<T>;

/** How long a command waits for a daemon that holds the home but does not answer on its socket yet (it is starting). */
const STARTING_DAEMON_WAIT_MS = 15_000;

/**
 * Chooses the face of this invocation: `--host` or $ROOST_HOST means that
 * daemon; else a daemon listening on the home's socket (answering
 * `GET /v1/health`); else an embedded runtime, which takes the home's lock
 * (UNAVAILABLE naming its owner if another process holds it; when that is a
 * daemon still starting, the command waits for it and goes through it).
 */
export async function connect(options: { host?: string; home?: string; command: string; reconcile?: boolean }): Promise<Face> {
  const home = roostHome(options.home);
  const client = await findDaemon(home, options.host);
  if (client) return new RemoteFace(client);
  try {
    return new EmbeddedFace(await Runtime.open({ home, owner: `roost ${options.command} (pid ${process.pid})`, reconcile: options.reconcile ?? false }));
  } catch (e) {
    if (!isRoostError(e, 'UNAVAILABLE')) throw e;
    const starting = await waitForStartingDaemon(home, STARTING_DAEMON_WAIT_MS);
    if (!starting) throw e;
    return new RemoteFace(starting);
  }
}

/**
 * The face of the image commands: the daemon when there is one (as
 * `connect` finds it), else the home's image store, used without the home's
 * lock (its SQLite database is safe to share, even with a running runtime).
 */
export async function connectImages(options: { host?: string; home?: string }): Promise<ImagesFace> {
  const home = roostHome(options.home);
  const client = await findDaemon(home, options.host);
  if (client) return new RemoteFace(client);
  // Builds boot sandboxes, so they need the home's runtime: `roost build` connects with `connect`, not here.
  const noBuilds = async (): Promise<never> => {
    throw new RoostError('INVALID_STATE', "an image build needs the home's runtime: use `roost build`");
  };
  return { kind: 'embedded', images: new StoreImages(new ImageStore({ home }), noBuilds), close: async () => {} };
}

/**
 * What the volume commands talk to: the daemon's volumes when there is one
 * (as `connect` finds it), else the home's, used without the home's lock
 * (the checks that must agree with sandboxes being created are SQLite transactions).
 */
export async function connectVolumes(options: { host?: string; home?: string }): Promise<{ volumes: VolumesApi; close(): Promise<void> }> {
  const home = roostHome(options.home);
  const client = await findDaemon(home, options.host);
  if (client) return { volumes: client.volumes, close: () => client.close() };
  return { volumes: new Volumes({ home }), close: async () => {} };
}

/**
 * `roost doctor`: the daemon's when one owns the home (as `connect` finds
 * it), else the offline doctor, which takes the home's lock but not its
 * database, so it works where `Runtime.open` refuses the database.
 */
export async function runDoctor(options: { host?: string; home?: string } & DoctorOptions): Promise<DoctorReport> {
  const home = roostHome(options.home);
  const client = await findDaemon(home, options.host);
  const repair = options.repair ?? false;
  if (!client) return Runtime.doctor({ home, repair });
  try {
    return await client.doctor({ repair });
  } finally {
    await client.close();
  }
}

/** The daemon to use: the given host, else the home's if one answers on its socket, else none. */
async function findDaemon(home: string, hostOption: string | undefined): Promise<RoostClient | null> {
  const host = hostOption ?? (process.env.ROOST_HOST || undefined);
  if (host) return new RoostClient({ host, home });
  // A socket nobody listens on (a daemon that died) means embedded. A daemon
  // that is slow is still the owner of the home; one that refuses us is reported.
  return (await probeHomeDaemon(home))?.client ?? null;
}

class RemoteFace implements Face {
  readonly kind = 'remote';

  constructor(readonly runtime: RoostClient) {}

  get images(): ImagesApi {
    return this.runtime.images;
  }

  get where(): string {
    return this.runtime.endpoint.display;
  }

  close(): Promise<void> {
    return this.runtime.close();
  }
}

class EmbeddedFace implements Face {
  readonly kind = 'embedded';

  constructor(readonly runtime: Runtime) {}

  get images(): ImagesApi {
    return this.runtime.images;
  }

  get where(): string {
    return this.runtime.home;
  }

  close(): Promise<void> {
    return this.runtime.close();
  }
}

/** The console log file of an embedded sandbox. */
export function consoleLogPath(sandbox: SandboxApi): string {
  const path = (sandbox as { consoleLogPath?: unknown }).consoleLogPath;
  if (typeof path !== 'string') throw new RoostError('INTERNAL', `sandbox ${sandbox.id} has no console log path`);
  return path;
}

/** Reads a local file from `offset` to its current end, writing it out; returns the new offset. */
export async function copyFrom(path: string, offset: number, out: NodeJS.WritableStream): Promise<number> {
  const size = (await stat(path).catch(() => ({ size: 0 }))).size;
  if (size <= offset) return size < offset ? 0 : offset;
  await new Promise<void>((resolve, reject) => {
    createReadStream(path, { start: offset, end: size - 1 })
      .on('data', (c) => out.write(c))
      .on('end', resolve)
      .on('error', reject);
  });
  return size;
}
