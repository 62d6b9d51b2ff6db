import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { chmod, rm, truncate, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import {
  Capability,
  decodeExec,
  decodeHostHello,
  encodeAgentHello,
  encodeEof,
  encodeExit,
  encodeFrame,
  encodeFreezeResult,
  encodeStarted,
  FrameDecoder,
  HelloFlags,
  MAX_PAYLOAD,
  MessageType,
  VERSION,
  type Frame,
} from '@roost/protocol';
import { RoostError } from '../errors.js';
import { saveRam } from '../snapshot/memory.js';
import type { FoundVm, SavedMemory, Vmm, VmConfig, VmConfinement, VmControlOptions, VmExit, VmHandle, VmIoError, VmPaths, VmStateTarget } from './types.js';

/**
 * Writes assets that exist into `cache` (a home's `cache/`): what the fake
 * VMM boots is never read, but a runtime checks the files are there. For
 * unit tests of the layers above the VMM.
 */
export function writeFakeAssets(cache: string): void {
  mkdirSync(join(cache, 'kernel', 'k1'), { recursive: true });
  const assets = {
    kernel: join(cache, 'kernel', 'k1', 'vmlinux'),
    kernelHz: 100,
    initramfs: join(cache, 'initramfs-a1.cpio'),
    rootfs: join(cache, 'base.erofs'),
    agentHash: 'a1',
  };
  for (const f of [assets.kernel, assets.initramfs, assets.rootfs]) writeFileSync(f, 'fake\n');
  writeFileSync(join(cache, 'assets.json'), JSON.stringify(assets));
}

/**
 * How the fake guest behaves, per VM (read when the VM starts):
 * - `answer`: its agent answers HELLO, PING, POWEROFF, FREEZE and THAW;
 * - `silent`: its agent accepts the connection and never answers;
 * - `exit`: the VM process exits right after it starts (a kernel that panics);
 * - `garbage`: the agent answers HELLO, then sends an answer the host never asked for (a violation);
 * - `old`: an agent from before capabilities (protocol 1 without the CAPABILITIES TLV): it
 *   answers like `answer`, but announces nothing, so the host must not send it FREEZE, CALL or NET.
 */
export type FakeGuest = 'answer' | 'silent' | 'exit' | 'garbage' | 'old';

const FAKE_NOSPACE: VmIoError = { nospace: true, message: 'No space left on device' };

/** A pid no process has (above Linux's pid_max), so nothing real is ever signalled or read. */
let nextPid = 5_000_000;

/**
 * @internal A VMM without virtual machines, for unit tests of the layers
 * above the seam (the sandbox lifecycle, records, recovery): a "VM" is a
 * unix socket on which a small fake agent speaks @roost/protocol, so the
 * sandbox's real agent connection, liveness and boot code run against it.
 * Every command exits at once without output (EXEC): with status 0, or
 * the VM's `checkExitCode` for the program `check`; the program `serve` runs until
 * it is signalled. Files are not served (CALL goes unanswered). It is not
 * exported from the package: tests that claim a feature works boot QEMU.
 */
export class FakeVmm implements Vmm {
  /** Nothing to confine: its VMs are in-process fakes. */
  readonly confines = false;
  readonly name = 'fake';
  /** How the guest of the next VM behaves. */
  guest: FakeGuest = 'answer';
  /** Every VM started, in order. */
  readonly started: FakeVm[] = [];
  readonly #running = new Map<number, FakeVm>();

  async version(): Promise<string> {
    return 'fake-vmm 1';
  }

  paths(dir: string): VmPaths {
    return {
      agentSocket: join(dir, 'agent.sock'),
      netSocket: join(dir, 'net.sock'),
      fileSocket: join(dir, 'files.sock'),
      consoleLog: join(dir, 'console.log'),
      vmmLog: join(dir, 'qemu.log'),
    };
  }

  /** A small file standing for the disk (a real one is a qcow2 of a few hundred KiB: nothing reads this one as a disk). */
  async createDisk(path: string, sizeMiB: number): Promise<void> {
    await writeFile(path, `fake disk of ${sizeMiB} MiB\n`, { mode: 0o600 });
  }

  async createOverlay(base: string, path: string): Promise<void> {
    await writeFile(path, `overlay of ${base}\n`, { mode: 0o600 });
  }

  async start(config: VmConfig): Promise<VmHandle> {
    const vm = new FakeVm(nextPid++, this.paths(config.dir), config, this.guest);
    await vm.boot();
    this.started.push(vm);
    this.#running.set(vm.pid, vm);
    void vm.exited.then(() => this.#running.delete(vm.pid));
    return vm;
  }

  attach(pid: number): VmHandle | null {
    return this.#running.get(pid) ?? null;
  }

  /** The running fake VMs whose directory is directly under `root`. */
  findVms(root: string): FoundVm[] {
    return [...this.#running.values()]
      .filter((vm) => dirname(vm.config.dir) === root)
      .map((vm) => ({ pid: vm.pid, dir: vm.config.dir, cpus: vm.config.cpus, memoryMiB: vm.config.memoryMiB, accel: vm.config.accel }));
  }

  /** The running VM of a sandbox directory, if any. */
  vmOf(dir: string): FakeVm | undefined {
    return [...this.#running.values()].find((vm) => vm.config.dir === dir);
  }
}

/** @internal A fake VM: its state, and the fake agent on its agent socket. */
export class FakeVm implements VmHandle {
  readonly exited: Promise<VmExit>;
  /** `running`, `paused`, `io-error` or `shutdown`, as a VMM would say. */
  state = 'running';
  /** The host's disk is full: the guest's next write (`guestWrites`) stops the VM, as QEMU's `werror=stop` does. */
  hostDiskFull = false;
  /** Disk writes the guest made that wait for the host (retried on `resume`). */
  pendingWrites = 0;
  /** Disk writes that reached the host. */
  writes = 0;
  readonly #ioListeners: ((error: VmIoError) => void)[] = [];
  /** Controls asked of it, in order (`pause`, `resume`, `saveState`, `quit`, `kill`, `release`). */
  readonly calls: string[] = [];
  /** The guest's disk is frozen (between FREEZE and THAW). */
  frozen = false;
  /** The exit status of the program `check` in this guest (a health check's). */
  checkExitCode = 0;
  #exit!: (e: VmExit) => void;
  #hasExited = false;
  #server: Server | null = null;
  #sockets = new Set<Socket>();
  #paused: (() => void)[] = [];
  readonly #ram: string;

  constructor(
    readonly pid: number,
    readonly paths: VmPaths,
    readonly config: VmConfig,
    readonly guest: FakeGuest,
  ) {
    this.exited = new Promise((resolve) => (this.#exit = resolve));
    this.#ram = join(config.dir, 'fake-ram');
  }

  /** As a jail would say: the uid and limits it was asked for (no process is confined). */
  get confinement(): VmConfinement | null {
    const jail = this.config.jail;
    return jail ? { uid: jail.uid, gid: jail.gid, cgroup: null, limits: jail.limits } : null;
  }

  get hasExited(): boolean {
    return this.#hasExited;
  }

  /** Starts the fake agent (or, for `exit`, dies at once). */
  async boot(): Promise<void> {
    // Private as QEMU's (started with umask 077) and its log keeper's files.
    appendFileSync(this.paths.consoleLog, `fake kernel: booting ${this.config.id}${this.config.restore ? ' (restore)' : ''}\n`, { mode: 0o600 });
    // The guest's RAM: a sparse file with one page written, read back by saveState.
    await writeFile(this.#ram, 'fake guest memory\n', { mode: 0o600 });
    await truncate(this.#ram, this.config.memoryMiB * 2 ** 20);
    if (this.guest === 'exit') {
      appendFileSync(this.paths.consoleLog, 'fake kernel: panic\n');
      setTimeout(() => this.#end({ code: 0, signal: null }), 5).unref();
      return;
    }
    await rm(this.paths.agentSocket, { force: true });
    this.#server = createServer((socket) => this.#serve(socket));
    await new Promise<void>((resolve, reject) => {
      this.#server!.once('error', reject);
      this.#server!.listen(this.paths.agentSocket, () => resolve());
    });
    await chmod(this.paths.agentSocket, 0o600);
    this.#server.unref();
  }

  waitForExit(): Promise<VmExit> {
    const hold = setInterval(() => {}, 1 << 30);
    return this.exited.finally(() => clearInterval(hold));
  }

  async status(): Promise<string> {
    this.#checkAlive('report its status');
    return this.state;
  }

  async pause(): Promise<void> {
    this.#checkAlive('pause');
    this.calls.push('pause');
    this.state = 'paused';
  }

  async resume(): Promise<void> {
    this.#checkAlive('resume');
    this.calls.push('resume');
    this.state = 'running';
    // The writes kept while stopped are retried first: on a disk still full, the VM stops again.
    const retry = this.pendingWrites;
    this.pendingWrites = 0;
    if (retry > 0) setTimeout(() => this.guestWrites(retry), 1).unref();
    for (const run of this.#paused.splice(0)) run();
  }

  onIoError(listener: (error: VmIoError) => void): void {
    this.#ioListeners.push(listener);
    if (this.state === 'io-error') queueMicrotask(() => listener(FAKE_NOSPACE));
  }

  /** The guest writes `count` blocks to its disk: with the host's disk full, the VM stops with them kept. */
  guestWrites(count = 1): void {
    if (this.#hasExited) return;
    if (!this.hostDiskFull) {
      this.writes += count;
      return;
    }
    this.pendingWrites += count;
    this.state = 'io-error';
    for (const listener of this.#ioListeners) listener(FAKE_NOSPACE);
  }

  async saveState(target: VmStateTarget, options: VmControlOptions & { timeoutMs: number }): Promise<SavedMemory> {
    this.#checkAlive('saveState');
    if (this.state !== 'paused') throw new RoostError('VMM', 'fake VMM: the state of a running VM cannot be saved');
    if (options.signal?.aborted) throw new RoostError('ABORTED', 'fake VMM: save aborted');
    this.calls.push('saveState');
    await writeFile(target.devices, `fake device state of ${this.config.id}\n`, { mode: 0o600 });
    return saveRam({ kind: 'file', path: this.#ram }, target.memoryBytes, target.memory);
  }

  async quit(): Promise<void> {
    this.#checkAlive('quit');
    this.calls.push('quit');
    this.#end({ code: 0, signal: null });
  }

  kill(): void {
    this.calls.push('kill');
    this.#end({ code: null, signal: 'SIGKILL' });
  }

  release(): void {
    this.calls.push('release');
  }

  /** The guest powers itself off (as on POWEROFF). */
  powerOff(): void {
    this.#end({ code: 0, signal: null });
  }

  #checkAlive(what: string): void {
    if (this.#hasExited) throw new RoostError('VMM', `fake VMM: cannot ${what}: the VM exited`);
  }

  #end(exit: VmExit): void {
    if (this.#hasExited) return;
    this.#hasExited = true;
    this.state = 'shutdown';
    this.#server?.close();
    for (const s of this.#sockets) s.destroy();
    void rm(this.paths.agentSocket, { force: true });
    this.#exit(exit);
  }

  /** The fake agent: one host session per connection, frames handled while the VM runs. */
  #serve(socket: Socket): void {
    this.#sockets.add(socket);
    const decoder = new FrameDecoder();
    let poweroffOnDisconnect = false;
    /** Streams of `serve` commands still running: their EOFs, sent with the EXIT. */
    const running = new Map<number, Buffer[]>();
    socket.on('error', () => {});
    socket.on('close', () => {
      this.#sockets.delete(socket);
      // A pending snapshot keeps the VM up whatever the session's flags (docs/PROTOCOL.md, "Snapshots").
      if (poweroffOnDisconnect && !this.frozen) this.powerOff();
    });
    if (this.guest === 'silent') return;
    const handle = (f: Frame) => {
      if (this.state === 'paused' || this.state === 'io-error') {
        // A paused guest answers nothing until it runs again.
        this.#paused.push(() => handle(f));
        return;
      }
      switch (f.type) {
        case MessageType.HELLO: {
          const hello = decodeHostHello(f.payload);
          poweroffOnDisconnect = (hello.flags & HelloFlags.POWEROFF_ON_DISCONNECT) !== 0;
          // Announces what the real agent does (an `old` one: nothing), so the host's capability gates are exercised.
          const capabilities = this.guest === 'old' ? undefined : Capability.FREEZE | Capability.CALL | Capability.NET;
          socket.write(
            encodeAgentHello({
              version: VERSION,
              agentVersion: this.guest === 'old' ? 'fake-agent 0' : 'fake-agent 1',
              maxPayload: MAX_PAYLOAD,
              nonce: Buffer.from(hello.nonce),
              ...(capabilities !== undefined ? { capabilities } : {}),
            }),
          );
          if (this.guest === 'garbage') setTimeout(() => socket.write(encodeFreezeResult(MessageType.THAW, { errno: 0 })), 20).unref();
          break;
        }
        case MessageType.PING:
          socket.write(encodeFrame(0, MessageType.PONG, f.payload));
          break;
        case MessageType.POWEROFF:
          this.powerOff();
          break;
        case MessageType.FREEZE:
          // An old agent would have dropped the connection on an unknown message: the host must not send it.
          if (this.guest === 'old') throw new Error('FREEZE sent to an agent that did not announce it');
          this.frozen = true;
          socket.write(encodeFreezeResult(MessageType.FREEZE, { errno: 0 }));
          break;
        case MessageType.THAW:
          this.frozen = false;
          socket.write(encodeFreezeResult(MessageType.THAW, { errno: 0 }));
          break;
        case MessageType.EXEC: {
          const program = decodeExec(f.payload).args[0];
          const ends = [encodeEof(f.stream, 1), encodeEof(f.stream, 2)];
          if (program === 'serve') {
            // Runs until a signal ends it.
            socket.write(encodeStarted(f.stream, 1, 0));
            running.set(f.stream, ends);
            break;
          }
          const exitCode = program === 'check' ? this.checkExitCode : 0;
          socket.write(Buffer.concat([encodeStarted(f.stream, 1, 0), ...ends, encodeExit(f.stream, { exitCode, signal: null, timedOut: false })]));
          break;
        }
        case MessageType.SIGNAL: {
          const ends = running.get(f.stream);
          if (!ends) break;
          running.delete(f.stream);
          const signal = f.payload.length >= 4 ? Buffer.from(f.payload).readUInt32BE(0) : 9;
          socket.write(Buffer.concat([...ends, encodeExit(f.stream, { exitCode: null, signal, timedOut: false })]));
          break;
        }
        default:
        // CALL and the rest: not served by the fake.
      }
    };
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const f of decoder.push(chunk)) handle(f);
      } catch {
        socket.destroy();
      }
    });
  }
}
