/**
 * Starting a VM's file server (main.ts) and talking to it. The server is a
 * detached process of its own: it outlives the runtime that started it
 * when the sandbox is detached, and ends by itself when the VM's QEMU does.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RoostError } from '../errors.js';
import { PRIVATE_FILE } from '../state/private.js';
import { FILE_SERVER_FILES, type ControlAnswer, type ControlRequest, type FileExport, type FileServerConfig, type FileServerState } from './config.js';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

/**
 * glibc malloc settings for the server: 9P messages are up to 1 MiB, and
 * buffers that size are mapped and given back rather than kept in the heap
 * (measured: 49 -> 35 MiB private after 32 MiB through a volume).
 */
const SMALL_MALLOC = { MALLOC_ARENA_MAX: '1', MALLOC_MMAP_THRESHOLD_: '131072', MALLOC_TRIM_THRESHOLD_: '131072' };

/** How long a started file server may take to listen for its owner. */
const START_TIMEOUT_MS = 15_000;

/** What starting a VM's file server needs. */
export interface StartFileServer {
  /** The sandbox directory (its config, control socket and log go there). */
  dir: string;
  /** QEMU's socket for the VM's `roost.p9` port. */
  socket: string;
  /** The VM's pid (the server gives up connecting once it is gone). */
  vmPid?: number;
  exports: FileExport[];
  /** A snapshot's saved sessions (FileServerState as a file): the VM is restored. */
  restore?: string;
  /**
   * The confined VM's uid and gid: the server runs as them, keeping only
   * the two capabilities that let it read and write a volume's files of any
   * owner (as QEMU's own 9P server did in the jail), so what the guest makes
   * is owned by the sandbox's uid. Absent: this process's user.
   */
  user?: { uid: number; gid: number };
  signal?: AbortSignal;
}

/**
 * Starts the file server of a VM that was just started (its port socket
 * exists or is about to), and waits until it takes commands. Returns its pid.
 */
export async function startFileServer(req: StartFileServer): Promise<number> {
  const control = join(req.dir, FILE_SERVER_FILES.control);
  const config: FileServerConfig = {
    socket: req.socket,
    ...(req.vmPid !== undefined ? { vmPid: req.vmPid } : {}),
    control,
    exports: req.exports,
    ...(req.restore ? { restore: req.restore } : {}),
  };
  const configPath = join(req.dir, FILE_SERVER_FILES.config);
  await rm(control, { force: true });
  await writeFile(configPath, JSON.stringify(config), { mode: PRIVATE_FILE });
  const log = openSync(join(req.dir, FILE_SERVER_FILES.log), 'a', PRIVATE_FILE);
  let child;
  try {
    // Its own session (detached): a terminal's Ctrl-C or the owner's death does not end it; the VM's does.
    const node = [process.execPath, '--max-semi-space-size=2', MAIN, configPath];
    const argv = req.user
      ? [
          'setpriv',
          `--reuid=${req.user.uid}`,
          `--regid=${req.user.gid}`,
          '--clear-groups',
          '--inh-caps=-all,+dac_override,+fowner',
          '--ambient-caps=-all,+dac_override,+fowner',
          '--bounding-set=-all,+dac_override,+fowner',
          '--',
          ...node,
        ]
      : node;
    child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', log, log], detached: true, env: { ...process.env, ...SMALL_MALLOC } });
  } finally {
    closeSync(log);
  }
  child.unref();
  const pid = child.pid;
  if (pid === undefined) throw new RoostError('VMM', 'could not start the file server for the volumes');
  let exited: string | null = null;
  child.once('exit', (code, sig) => (exited = `exited (${sig ?? `code ${code}`})`));
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) {
      // Its last line says why (a remote volume that cannot be reached, a directory gone).
      const why = lastLine(join(req.dir, FILE_SERVER_FILES.log));
      throw new RoostError('BOOT_FAILED', `the file server for the volumes ${exited}${why ? `: ${why}` : ''} (see ${join(req.dir, FILE_SERVER_FILES.log)})`);
    }
    try {
      await new FileServerControl(req.dir).request({ op: 'ping' }, 2000);
      return pid;
    } catch {
      // not listening yet
    }
    if (req.signal?.aborted || Date.now() > deadline) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
      if (req.signal?.aborted) throw new RoostError('ABORTED', 'sandbox creation was aborted');
      throw new RoostError(
        'BOOT_FAILED',
        `the file server for the volumes did not start within ${START_TIMEOUT_MS} ms: see ${join(req.dir, FILE_SERVER_FILES.log)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

function lastLine(file: string): string {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    const line = text.slice(text.lastIndexOf('\n') + 1);
    // `<time> roost-files[pid]: failed: why` -> `why`
    return line.replace(/^\S+ roost-files\[\d+\]: (failed: )?/, '').slice(0, 500);
  } catch {
    return '';
  }
}

/** A connection to a VM's file server (one command at a time). */
export class FileServerControl {
  readonly #path: string;
  #socket: net.Socket | null = null;

  constructor(dir: string) {
    this.#path = join(dir, FILE_SERVER_FILES.control);
  }

  /**
   * Makes the VM's volumes quiet for a snapshot: the guest's relay stops
   * sending, every request in flight is answered and delivered, and the
   * sessions are returned. Until `resume` (or this connection closes) the
   * guest's file operations on its volumes wait.
   */
  async quiesce(timeoutMs: number): Promise<FileServerState> {
    const answer = await this.request({ op: 'quiesce', timeoutMs }, timeoutMs + 5000, true);
    if (!answer.state) throw new RoostError('INTERNAL', 'the file server saved no state');
    return answer.state;
  }

  /** Lets the guest's volume operations go on after `quiesce`. */
  async resume(): Promise<void> {
    await this.request({ op: 'resume' }, 10_000, true);
  }

  close(): void {
    this.#socket?.destroy();
    this.#socket = null;
  }

  /** Sends one command and reads its answer. `keep`: the connection stays open (a quiesce is undone when it closes). */
  async request(req: ControlRequest, timeoutMs: number, keep = false): Promise<ControlAnswer & { ok: true }> {
    const socket = this.#socket ?? (await this.#connect(timeoutMs));
    if (keep) this.#socket = socket;
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let text = '';
        const timer = setTimeout(() => done(new Error(`the file server did not answer ${req.op} within ${timeoutMs} ms`)), timeoutMs);
        const onData = (chunk: string): void => {
          text += chunk;
          const nl = text.indexOf('\n');
          if (nl >= 0) done(null, text.slice(0, nl));
        };
        const onClose = (): void => done(new Error('the file server closed the connection'));
        const done = (err: Error | null, value?: string): void => {
          clearTimeout(timer);
          socket.off('data', onData);
          socket.off('close', onClose);
          if (err) reject(err);
          else resolve(value!);
        };
        socket.on('data', onData);
        socket.on('close', onClose);
        socket.write(JSON.stringify(req) + '\n');
      });
      const answer = JSON.parse(line) as ControlAnswer;
      if (!answer.ok) throw new RoostError('INVALID_STATE', `the volumes' file server: ${answer.error}`);
      return answer;
    } finally {
      if (!keep) socket.destroy();
    }
  }

  #connect(timeoutMs: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.connect(this.#path);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error('timed out connecting to the file server'));
      }, timeoutMs);
      s.setEncoding('utf8');
      s.once('connect', () => {
        clearTimeout(timer);
        s.on('error', () => {});
        resolve(s);
      });
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }
}
