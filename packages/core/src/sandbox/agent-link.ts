import { HelloFlags } from '@roost/protocol';
import type { SandboxStatus } from '@roost/api';
import { AgentConnection } from '../agent/connection.js';
import { RoostError } from '../errors.js';
import { notRunningError } from './state-error.js';
import type { VmHandle } from '../vmm/types.js';

/** What the agent link needs to know about its sandbox, and how it reports a lost guest. */
export interface AgentLinkHost {
  readonly id: string;
  /** The VM the link connects to (null while there is none). */
  vm(): VmHandle | null;
  status(): SandboxStatus;
  /** Why the sandbox is in its status, if the record says. */
  reason(): string | undefined;
  removed(): boolean;
  /** The guest's network configuration, sent with every HELLO (absent: no NIC). */
  netHello(): Uint8Array | undefined;
  /** The guest broke the protocol, stopped answering or its agent went away: record the failure and end the VM. */
  /** `closed`: the connection just closed (the VM may be dying, and its exit may say why), rather than a broken protocol. */
  lost(reason: string, closed?: boolean): void;
}

/** How long a connection to an already booted agent may take. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * The sandbox's connection to its guest agent: made at boot, made again on
 * demand (a runtime that re-attached, or after `disconnect`), watched for
 * violations and silence. A guest that misbehaves gets no second chance:
 * the host reports it lost (the VM is killed), unless this process is ending
 * the VM on purpose (`ending`).
 */
export class AgentLink {
  readonly #host: AgentLinkHost;
  #conn: Promise<AgentConnection> | null = null;
  /** Set while this process stops, kills or removes the VM on purpose: a closing agent is expected then. */
  ending = false;

  constructor(host: AgentLinkHost) {
    this.#host = host;
  }

  /**
   * The first handshake with a VM's agent, waiting for the boot. A
   * non-detached guest powers off when the host disconnects.
   */
  static handshake(
    vm: VmHandle,
    options: { detached: boolean; timeoutMs: number; signal: AbortSignal; net: Uint8Array | undefined },
  ): Promise<AgentConnection> {
    return AgentConnection.connect(vm.paths.agentSocket, {
      flags: options.detached ? 0 : HelloFlags.POWEROFF_ON_DISCONNECT,
      timeoutMs: options.timeoutMs,
      signal: options.signal,
      vmExited: () => vm.hasExited,
      net: options.net,
    });
  }

  /** The open connection, or a new one: INVALID_STATE unless the VM runs (while paused, requests wait for `resume`). */
  connection(): Promise<AgentConnection> {
    if (this.#conn) return this.#conn;
    const host = this.#host;
    if (host.removed()) return Promise.reject(new RoostError('NOT_FOUND', `sandbox ${host.id} was removed`));
    const vm = host.vm();
    const status = host.status();
    if (!vm || vm.hasExited || (status !== 'running' && status !== 'paused')) {
      const reason = host.reason();
      return Promise.reject(notRunningError(host.id, status, 'run commands or reach its files', reason));
    }
    const conn = AgentConnection.connect(vm.paths.agentSocket, {
      flags: 0,
      timeoutMs: CONNECT_TIMEOUT_MS,
      vmExited: () => vm.hasExited,
      net: host.netHello(),
    }).catch((e: unknown) => {
      if (e instanceof RoostError && e.code === 'TIMEOUT') {
        // QEMU serves one client on the agent socket at a time; a stuck guest or a stray client holds it.
        throw new RoostError(
          'AGENT',
          `the agent of sandbox ${host.id} did not answer within ${CONNECT_TIMEOUT_MS / 1000} s: the guest is probably hung (see \`roost logs\`)`,
          { cause: e },
        );
      }
      throw e;
    });
    this.adopt(conn);
    return conn;
  }

  /** Makes `conn` the sandbox's connection and watches it. */
  adopt(conn: Promise<AgentConnection>): void {
    this.#conn = conn;
    const host = this.#host;
    conn.then(
      (c) => {
        const onBad = (e: RoostError) => {
          // A hostile or broken guest: it gets no second chance.
          if (this.ending) return;
          host.lost(e.message);
        };
        c.on('violation', onBad);
        c.on('unresponsive', onBad);
        if (host.status() === 'paused') c.holdLiveness(true);
        c.on('close', () => {
          if (this.#conn === conn) this.#conn = null;
          if (!this.ending && !c.closedByHost) host.lost('the guest agent went away', true);
        });
      },
      () => {
        if (this.#conn === conn) this.#conn = null;
      },
    );
  }

  /** While paused, the agent cannot answer pings: the connection must not declare it dead. */
  holdLiveness(hold: boolean): void {
    void this.#conn?.then((c) => c.holdLiveness(hold)).catch(() => {});
  }

  /** Closes this process's connection to the agent and to the VMM (the VM runs on). */
  close(): void {
    const conn = this.#conn;
    this.#conn = null;
    void conn?.then((c) => c.close()).catch(() => {});
    // QEMU serves one QMP client at a time: a runtime that lets a VM go must not keep it.
    this.#host.vm()?.release();
  }
}
