import { getRandomValues } from 'node:crypto';
import { finishL4Checksum, L4_OFFSET, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, type FrameBuilder } from './wire.js';

/*
 * The guest-facing end of one TCP connection of the user-mode stack. The
 * stack terminates the guest's TCP: bytes the guest sends are acknowledged
 * here and handed to a peer (a host socket, or the Duplex of
 * UserNet.connectTcp), bytes the peer gives are queued here and sent to the
 * guest within its window, kept until acknowledged, and retransmitted on a
 * timeout or three duplicate ACKs (NewReno-style partial-ACK recovery, no
 * congestion window: the link is a local socket). No SACK, no timestamps;
 * MSS and window scaling are negotiated. There is no TIME_WAIT: once both
 * FINs are acknowledged (or on RST) the connection is gone.
 */

/** How a connection ended, as a Node-style error code; undefined: both sides closed cleanly. */
export type TcpCloseReason = 'ECONNRESET' | 'ECONNREFUSED' | 'ETIMEDOUT' | undefined;

/** What the stack provides to every connection. */
export interface TcpContext {
  readonly frames: FrameBuilder;
  /** Sends a finished frame (length prefix included) to the guest. */
  transmit(frame: Buffer): void;
  /** False while the link to QEMU is congested: connections stop sending new data and ask to be woken. */
  linkWritable(): boolean;
  waitForLink(conn: TcpConnection): void;
  /**
   * Sends a pure ACK for this connection after the current batch of frames
   * (or, `delayed`, a few milliseconds later), unless a segment carries one first.
   */
  scheduleAck(conn: TcpConnection, delayed?: boolean): void;
  /** Bytes each connection may hold in either direction (shrinks as connections multiply). */
  bufferBudget(): number;
  /** The connection is finished; drop it from the tables. */
  release(conn: TcpConnection): void;
  now(): number;
}

/** The other end of the relay: a host socket or a UserNet.connectTcp stream. */
export interface TcpPeer {
  /** The three-way handshake finished. */
  onEstablished(): void;
  /** In-order bytes from the guest. */
  onData(data: Buffer): void;
  /** Bytes handed over by onData that the peer has not consumed yet (they shrink the window we advertise). */
  pendingBytes(): number;
  /** The guest sent FIN: no more data from it. */
  onFin(): void;
  /** The send queue fell below the budget after send() had returned false. */
  onSendSpace(): void;
  /** The connection is gone (reason undefined: a clean close). Called once. */
  onClose(reason: TcpCloseReason): void;
}

/** A parsed segment from the guest (payload is a view into the frame). */
export interface TcpSegment {
  seq: number;
  ack: number;
  flags: number;
  window: number;
  payload: Buffer;
  /** From the SYN's options (absent: not given). */
  mss?: number;
  windowScale?: number;
}

export type TcpState = 'syn-sent' | 'connecting' | 'syn-received' | 'established' | 'closed';

/** Our window scale shift: windows up to 4 MiB. */
const OUR_WINDOW_SCALE = 6;
const INITIAL_RTO_MS = 1000;
const MAX_RTO_MS = 60_000;
/** Data retransmissions before the connection is reset (about 10 minutes with backoff). */
const MAX_RETRIES = 15;
const MAX_PERSIST_MS = 30_000;
/** Handshake retransmissions (SYN-ACK, or SYN for connectTcp) before giving up. */
const MAX_HANDSHAKE_RETRIES = 5;
/** The MSS when the SYN names none, and the least we accept (a tiny MSS would turn a window into thousands of frames). */
const DEFAULT_MSS = 536;
/** RTO bounds: the floor is high because a TCG guest can take long to acknowledge a burst; a spurious retransmission costs it more. */
const MIN_RTO_MS = 1000;

/** a - b as a signed 32-bit distance, for sequence comparisons. */
function seqDiff(a: number, b: number): number {
  return (a - b) | 0;
}

function clampMss(offered: number | undefined, ours: number): number {
  return Math.min(ours, Math.max(DEFAULT_MSS, offered ?? DEFAULT_MSS));
}

function randomIsn(): number {
  return getRandomValues(new Uint32Array(1))[0]!;
}

export class TcpConnection {
  state: TcpState;
  peer: TcpPeer | null = null;
  /** Set by the stack: the key of its flow table. */
  readonly key: string;

  // ---- send side (towards the guest) ----
  #iss = 0;
  #sndUna = 0;
  #sndNxt = 0;
  #sndWnd = 0;
  #sndWl1 = 0;
  #sndWl2 = 0;
  #sndScale = 0;
  #sndMss = DEFAULT_MSS;
  /** Bytes from sndUna on: sent-unacknowledged, then unsent. */
  #queue: Buffer[] = [];
  #queued = 0;
  #sendBlocked = false;
  #finQueued = false;
  #finSent = false;
  #finAcked = false;
  #dupAcks = 0;
  /** While retransmitting after a loss: the sndNxt at the time; partial ACKs below it resend at once. */
  #recoverUntil: number | null = null;
  #rto = INITIAL_RTO_MS;
  /** Smoothed RTT and its variation (RFC 6298), ms; srtt 0: no sample yet. */
  #srtt = 0;
  #rttvar = 0;
  /** The segment being timed (Karn: never a retransmitted one), or null. */
  #rttSeq: number | null = null;
  #rttStartedAt = 0;
  #retries = 0;
  /** Retransmission (or handshake) deadline, 0 when disarmed. */
  #deadline = 0;
  #persistDeadline = 0;
  #persistBackoff = INITIAL_RTO_MS;

  // ---- receive side (from the guest) ----
  #rcvNxt = 0;
  #rcvScale = 0;
  /** The highest right window edge we have advertised: data up to it is accepted even if the window later closed. */
  #rcvRight = 0;
  #rcvFin = false;
  ackPending = false;
  /** Data segments taken since our last ACK: every second one is acknowledged at once, a lone one after a short delay (like Linux's delayed ACK: fewer frames for a TCG guest to take). */
  #segmentsUnacked = 0;
  readonly #ourMss: number;

  constructor(
    readonly ctx: TcpContext,
    /** The guest's port, the address the guest sees for the other end (e.g. 10.0.2.2) and its port. */
    readonly guestAddress: number,
    readonly guestPort: number,
    readonly remoteAddress: number,
    readonly remotePort: number,
    mtu: number,
    state: 'syn-sent' | 'connecting',
  ) {
    this.key = TcpConnection.keyOf(guestPort, remoteAddress, remotePort);
    this.state = state;
    this.#ourMss = mtu - 40;
  }

  static keyOf(guestPort: number, remoteAddress: number, remotePort: number): string {
    return `${guestPort}:${remoteAddress}:${remotePort}`;
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  /** Bytes queued towards the guest (sent-unacknowledged and unsent). */
  get queuedBytes(): number {
    return this.#queued;
  }

  // ---- handshakes --------------------------------------------------------------

  /** Guest SYN of a new connection (state `connecting`): remember its ISN and options; the answer waits for the host connect. */
  acceptSyn(seg: TcpSegment): void {
    this.#rcvNxt = (seg.seq + 1) >>> 0;
    this.#sndMss = clampMss(seg.mss, this.#ourMss);
    if (seg.windowScale !== undefined) {
      this.#sndScale = Math.min(14, seg.windowScale);
      this.#rcvScale = OUR_WINDOW_SCALE;
    }
    this.#sndWnd = seg.window;
    this.#synSeq = seg.seq;
  }

  #synSeq = 0;

  /** True when `seq` is the ISN of the guest SYN that opened this connection (a retransmission, not a new connection). */
  acceptsSyn(seq: number): boolean {
    return this.state !== 'syn-sent' && seq === this.#synSeq;
  }

  /** The host side connected: answer the guest's SYN. */
  hostConnected(): void {
    if (this.state !== 'connecting') return;
    this.#iss = randomIsn();
    this.#sndUna = this.#iss;
    this.#sndNxt = (this.#iss + 1) >>> 0;
    this.state = 'syn-received';
    this.#retries = 0;
    this.#rto = INITIAL_RTO_MS;
    this.#sendSynAck();
    this.#deadline = this.ctx.now() + this.#rto;
  }

  #connectDeadline = 0;

  /** connectTcp: send our SYN to the guest (state `syn-sent`); no answer within `timeoutMs`: ETIMEDOUT. */
  startConnect(timeoutMs: number): void {
    this.#connectDeadline = this.ctx.now() + timeoutMs;
    this.#iss = randomIsn();
    this.#sndUna = this.#iss;
    this.#sndNxt = (this.#iss + 1) >>> 0;
    this.#retries = 0;
    this.#rto = INITIAL_RTO_MS;
    this.#sendSyn();
    this.#deadline = this.ctx.now() + this.#rto;
  }

  // ---- the peer's side of the API -----------------------------------------------

  /** Queues bytes for the guest. False when the queue is at the budget: stop and wait for onSendSpace. */
  send(data: Buffer): boolean {
    if (this.state === 'closed' || this.#finQueued) return false;
    if (data.length > 0) {
      this.#queue.push(data);
      this.#queued += data.length;
      this.output();
    }
    const full = this.#queued >= this.ctx.bufferBudget();
    if (full) this.#sendBlocked = true;
    return !full;
  }

  /** The peer has no more data: FIN after the queue. */
  end(): void {
    if (this.state === 'closed' || this.#finQueued) return;
    this.#finQueued = true;
    this.output();
  }

  /** Resets the connection (RST to the guest when it knows of it) and tells the peer `reason`. */
  abort(reason: TcpCloseReason = 'ECONNRESET'): void {
    if (this.state === 'closed') return;
    if (this.state === 'syn-sent') this.#sendRaw(TCP_RST, this.#sndNxt, 0, 0);
    else if (this.state !== 'connecting') this.#sendControl(TCP_RST | TCP_ACK, this.#sndNxt);
    this.#close(reason);
  }

  /** Closes without telling the guest (the link is gone). */
  drop(reason: TcpCloseReason = 'ECONNRESET'): void {
    this.#close(reason);
  }

  /** The peer consumed bytes: advertise the larger window if it grew enough to matter. */
  windowMaybeOpened(): void {
    if (this.state !== 'established' || this.#rcvFin) return;
    // Only when the guest may be short of window (ACKs of its data carry the window anyway), and
    // with receiver-side silly window avoidance: growth of two segments or a quarter of the buffer.
    const current = Math.max(0, seqDiff(this.#rcvRight, this.#rcvNxt));
    const budget = this.ctx.bufferBudget();
    if (current >= budget >> 1) return;
    const grown = this.#freeWindow() - current;
    if (grown <= 0) return;
    if (grown >= Math.min(budget >> 2, 2 * this.#ourMss) || (current < this.#ourMss && current + grown >= Math.min(this.#ourMss, budget >> 1))) {
      this.ctx.scheduleAck(this);
    }
  }

  // ---- segments from the guest ----------------------------------------------------

  /** Handles one segment of this connection from the guest. */
  onSegment(seg: TcpSegment): void {
    switch (this.state) {
      case 'closed':
        return;
      case 'connecting':
        // Waiting for the host connect: retransmitted SYNs wait too; RST gives up.
        if (seg.flags & TCP_RST) this.#close('ECONNRESET');
        return;
      case 'syn-sent':
        this.#onSynSentSegment(seg);
        return;
      case 'syn-received':
        if (seg.flags & TCP_RST) {
          if (seg.seq === this.#rcvNxt) this.#close('ECONNRESET');
          return;
        }
        if (seg.flags & TCP_SYN) {
          if (seg.seq === this.#synSeq) this.#sendSynAck();
          return;
        }
        if (!(seg.flags & TCP_ACK)) return;
        if (seg.ack !== this.#sndNxt) {
          this.#sendRaw(TCP_RST, seg.ack, 0, 0);
          return;
        }
        this.#establish(seg);
        this.#onSynchronized(seg);
        return;
      case 'established':
        this.#onSynchronized(seg);
        return;
    }
  }

  #onSynSentSegment(seg: TcpSegment): void {
    const ackOk = (seg.flags & TCP_ACK) !== 0 && seg.ack === this.#sndNxt;
    if (seg.flags & TCP_RST) {
      if (ackOk) this.#close('ECONNREFUSED');
      return;
    }
    if (seg.flags & TCP_ACK && !ackOk) {
      this.#sendRaw(TCP_RST, seg.ack, 0, 0);
      return;
    }
    if (!(seg.flags & TCP_SYN) || !ackOk) return;
    this.#rcvNxt = (seg.seq + 1) >>> 0;
    this.#rcvRight = this.#rcvNxt;
    this.#sndMss = clampMss(seg.mss, this.#ourMss);
    if (seg.windowScale !== undefined) {
      this.#sndScale = Math.min(14, seg.windowScale);
      this.#rcvScale = OUR_WINDOW_SCALE;
    }
    // The window of a SYN-ACK is never scaled.
    this.#sndUna = this.#sndNxt;
    this.#sndWnd = seg.window;
    this.#sndWl1 = seg.seq;
    this.#sndWl2 = seg.ack;
    this.#deadline = 0;
    this.#retries = 0;
    this.#rto = INITIAL_RTO_MS;
    this.state = 'established';
    this.#sendAck();
    this.peer?.onEstablished();
    this.output();
  }

  #establish(seg: TcpSegment): void {
    this.state = 'established';
    this.#sndUna = this.#sndNxt;
    this.#sndWnd = seg.window << this.#sndScale;
    this.#sndWl1 = seg.seq;
    this.#sndWl2 = seg.ack;
    this.#deadline = 0;
    this.#retries = 0;
    this.#rto = INITIAL_RTO_MS;
    this.peer?.onEstablished();
  }

  #onSynchronized(seg: TcpSegment): void {
    if (seg.flags & TCP_RST) {
      // Accept a reset only inside the window (RFC 5961 would ask for an exact match; the link is ours).
      const d = seqDiff(seg.seq, this.#rcvNxt);
      if (d >= 0 && d <= Math.max(1, seqDiff(this.#rcvRight, this.#rcvNxt))) this.#close('ECONNRESET');
      return;
    }
    if (seg.flags & TCP_SYN) {
      // A SYN on a synchronized connection: challenge ACK.
      this.#sendAck();
      return;
    }
    if (!(seg.flags & TCP_ACK)) return;
    if (!this.#processAck(seg) || this.closed) return;
    this.#processData(seg);
    // The peer's callbacks may have closed the connection.
    if (this.closed) return;
    this.output();
    this.#maybeFinished();
  }

  /** False when the segment must be dropped. */
  #processAck(seg: TcpSegment): boolean {
    const ack = seg.ack;
    if (seqDiff(ack, this.#sndNxt) > 0) {
      // Acknowledges something we never sent.
      this.#sendAck();
      return false;
    }
    const advanced = seqDiff(ack, this.#sndUna);
    const oldWindow = this.#sndWnd;
    if (seqDiff(this.#sndWl1, seg.seq) < 0 || (this.#sndWl1 === seg.seq && seqDiff(this.#sndWl2, ack) <= 0)) {
      this.#sndWnd = seg.window << this.#sndScale;
      this.#sndWl1 = seg.seq;
      this.#sndWl2 = ack;
    }
    if (advanced > 0) {
      this.#acknowledge(advanced);
      this.#dupAcks = 0;
      if (this.#recoverUntil !== null) {
        if (seqDiff(ack, this.#recoverUntil) < 0) this.#retransmitFirst();
        else this.#recoverUntil = null;
      }
    } else if (advanced === 0 && seg.payload.length === 0 && !(seg.flags & TCP_FIN) && this.#sndWnd === oldWindow && this.#sndNxt !== this.#sndUna) {
      this.#dupAcks++;
      if (this.#dupAcks === 3 && this.#recoverUntil === null) {
        this.#recoverUntil = this.#sndNxt;
        this.#rttSeq = null;
        this.#retransmitFirst();
      }
    }
    if (this.#sndWnd > 0) this.#persistDeadline = 0;
    return true;
  }

  #acknowledge(count: number): void {
    let dataAcked = count;
    if (this.#finSent && (this.#sndUna + count) >>> 0 === this.#sndNxt) {
      // Our FIN (the last sequence number) is acknowledged with everything before it.
      this.#finAcked = true;
      dataAcked--;
    }
    dataAcked = Math.min(dataAcked, this.#queued);
    this.#queued -= dataAcked;
    while (dataAcked > 0) {
      const head = this.#queue[0]!;
      if (head.length <= dataAcked) {
        this.#queue.shift();
        dataAcked -= head.length;
      } else {
        this.#queue[0] = head.subarray(dataAcked);
        dataAcked = 0;
      }
    }
    this.#sndUna = (this.#sndUna + count) >>> 0;
    if (this.#rttSeq !== null && seqDiff(this.#sndUna, this.#rttSeq) > 0) {
      this.#sampleRtt(this.ctx.now() - this.#rttStartedAt);
      this.#rttSeq = null;
    }
    this.#retries = 0;
    this.#rto = this.#baseRto();
    this.#deadline = this.#sndNxt === this.#sndUna ? 0 : this.ctx.now() + this.#rto;
    if (this.#sendBlocked && this.#queued < this.ctx.bufferBudget() >> 1) {
      this.#sendBlocked = false;
      this.peer?.onSendSpace();
    }
  }

  #sampleRtt(rtt: number): void {
    if (this.#srtt === 0) {
      this.#srtt = rtt;
      this.#rttvar = rtt / 2;
    } else {
      this.#rttvar = 0.75 * this.#rttvar + 0.25 * Math.abs(this.#srtt - rtt);
      this.#srtt = 0.875 * this.#srtt + 0.125 * rtt;
    }
  }

  #baseRto(): number {
    return this.#srtt === 0 ? INITIAL_RTO_MS : Math.min(MAX_RTO_MS, Math.max(MIN_RTO_MS, this.#srtt + 4 * this.#rttvar));
  }

  #processData(seg: TcpSegment): void {
    let data = seg.payload;
    let fin = (seg.flags & TCP_FIN) !== 0;
    if (data.length === 0 && !fin) return;
    if (this.#rcvFin) {
      // After the guest's FIN only retransmissions can come: acknowledge them again.
      this.ctx.scheduleAck(this);
      return;
    }
    const offset = seqDiff(this.#rcvNxt, seg.seq);
    if (offset < 0) {
      // Out of order (we dropped something earlier): a duplicate ACK makes the guest resend.
      this.#sendAck();
      return;
    }
    if (offset > 0) {
      if (offset > data.length || (offset === data.length && !fin)) {
        this.ctx.scheduleAck(this);
        return;
      }
      data = data.subarray(offset);
    }
    const room = Math.max(0, seqDiff(this.#rcvRight, this.#rcvNxt));
    if (data.length > room) {
      data = data.subarray(0, room);
      fin = false;
    }
    if (data.length > 0) {
      this.#rcvNxt = (this.#rcvNxt + data.length) >>> 0;
      this.#segmentsUnacked++;
      this.ctx.scheduleAck(this, this.#segmentsUnacked < 2);
      this.peer?.onData(data);
      if (this.closed) return;
    }
    if (fin) {
      this.#rcvNxt = (this.#rcvNxt + 1) >>> 0;
      this.#rcvFin = true;
      this.ctx.scheduleAck(this);
      this.peer?.onFin();
    } else if (data.length < seg.payload.length - offset) {
      // Past our window: say where it is.
      this.ctx.scheduleAck(this);
    }
  }

  #maybeFinished(): void {
    if (this.#rcvFin && this.#finAcked && this.state !== 'closed') {
      if (this.ackPending) this.#sendAck();
      this.#close(undefined);
    }
  }

  // ---- output ----------------------------------------------------------------------

  /** Sends what the guest's window allows of the queue (and the FIN after it). */
  output(): void {
    if (this.state !== 'established') return;
    for (;;) {
      const inFlight = seqDiff(this.#sndNxt, this.#sndUna) - (this.#finSent ? 1 : 0);
      const unsent = this.#queued - inFlight;
      if (unsent <= 0) {
        if (this.#finQueued && !this.#finSent) {
          if (!this.ctx.linkWritable()) return this.ctx.waitForLink(this);
          this.#finSent = true;
          this.#sendSegment(this.#sndNxt, 0, true);
          this.#sndNxt = (this.#sndNxt + 1) >>> 0;
          this.#armRetransmit();
        }
        return;
      }
      if (this.#finSent) return;
      const windowLeft = seqDiff(this.#sndUna + this.#sndWnd, this.#sndNxt);
      const length = Math.min(unsent, this.#sndMss, windowLeft);
      if (length <= 0) {
        if (this.#sndWnd === 0 && inFlight === 0 && this.#persistDeadline === 0) {
          this.#persistBackoff = INITIAL_RTO_MS;
          this.#persistDeadline = this.ctx.now() + this.#persistBackoff;
        }
        return;
      }
      if (!this.ctx.linkWritable()) return this.ctx.waitForLink(this);
      const fin = this.#finQueued && length === unsent;
      if (this.#rttSeq === null && this.#recoverUntil === null) {
        this.#rttSeq = this.#sndNxt;
        this.#rttStartedAt = this.ctx.now();
      }
      this.#sendSegment(this.#sndNxt, length, fin);
      this.#sndNxt = (this.#sndNxt + length + (fin ? 1 : 0)) >>> 0;
      if (fin) this.#finSent = true;
      this.#armRetransmit();
    }
  }

  /** Periodic work (the stack's tick): retransmissions, zero-window probes, handshake timeouts. */
  onTick(now: number): void {
    if (this.state === 'closed') return;
    if (this.state === 'syn-sent' && now >= this.#connectDeadline) {
      this.#close('ETIMEDOUT');
      return;
    }
    if (this.#deadline !== 0 && now >= this.#deadline) {
      if (!this.ctx.linkWritable()) {
        // The guest is not reading at all (paused VM): waiting is not a loss.
        this.#deadline = now + this.#rto;
      } else if (this.state === 'syn-sent' || this.state === 'syn-received') {
        if (++this.#retries > MAX_HANDSHAKE_RETRIES) {
          if (this.state === 'syn-received') this.#sendControl(TCP_RST | TCP_ACK, this.#sndNxt);
          this.#close('ETIMEDOUT');
          return;
        }
        if (this.state === 'syn-sent') this.#sendSyn();
        else this.#sendSynAck();
        this.#rto = Math.min(this.#rto * 2, MAX_RTO_MS);
        this.#deadline = this.state === 'syn-sent' ? Math.min(now + this.#rto, this.#connectDeadline) : now + this.#rto;
      } else if (this.state === 'established') {
        if (++this.#retries > MAX_RETRIES) {
          this.abort('ETIMEDOUT');
          return;
        }
        // Resend the first segment only: the link is reliable, so a timeout more likely means a slow guest than a lost window.
        this.#rttSeq = null;
        this.#retransmitFirst();
        this.#rto = Math.min(this.#rto * 2, MAX_RTO_MS);
        this.#deadline = now + this.#rto;
      }
    }
    if (this.#persistDeadline !== 0 && now >= this.#persistDeadline && this.state === 'established') {
      if (this.#sndWnd === 0 && this.#sndNxt === this.#sndUna) {
        // A segment just left of the window: the guest answers with an ACK carrying its window.
        this.#sendRaw(TCP_ACK, (this.#sndNxt - 1) >>> 0, this.#rcvNxt, this.#advertise());
        this.#persistBackoff = Math.min(this.#persistBackoff * 2, MAX_PERSIST_MS);
        this.#persistDeadline = now + this.#persistBackoff;
      } else {
        this.#persistDeadline = 0;
      }
    }
  }

  /** Sends a pure ACK now if one is owed. */
  flushAck(): void {
    if (this.ackPending && this.state === 'established') this.#sendAck();
    this.ackPending = false;
  }

  #armRetransmit(): void {
    if (this.#deadline === 0) this.#deadline = this.ctx.now() + this.#rto;
  }

  #retransmitFirst(): void {
    const inFlight = seqDiff(this.#sndNxt, this.#sndUna);
    if (inFlight <= 0) return;
    const dataInFlight = inFlight - (this.#finSent ? 1 : 0);
    const length = Math.min(dataInFlight, this.#sndMss);
    this.#sendSegment(this.#sndUna, length, this.#finSent && length === dataInFlight);
  }

  #sendSyn(): void {
    this.#sendRaw(TCP_SYN, this.#iss, 0, Math.min(65535, this.ctx.bufferBudget()), true);
  }

  #sendSynAck(): void {
    this.#sendRaw(TCP_SYN | TCP_ACK, this.#iss, this.#rcvNxt, Math.min(65535, this.ctx.bufferBudget()), true);
    this.#rcvRight = (this.#rcvNxt + Math.min(65535, this.ctx.bufferBudget())) >>> 0;
  }

  #sendAck(): void {
    this.ackPending = false;
    this.#sendRaw(TCP_ACK, this.#sndNxt, this.#rcvNxt, this.#advertise());
  }

  #sendControl(flags: number, seq: number): void {
    this.#sendRaw(flags, seq, this.#rcvNxt, 0);
  }

  #freeWindow(): number {
    const used = this.peer?.pendingBytes() ?? 0;
    return Math.max(0, this.ctx.bufferBudget() - used);
  }

  /** The window field to send now (scaled), never moving the right edge left. */
  #advertise(): number {
    let window = this.#rcvFin ? 0 : this.#freeWindow();
    const promised = seqDiff(this.#rcvRight, this.#rcvNxt);
    if (window < promised) window = promised;
    const field = Math.min(65535, Math.floor(window / 2 ** this.#rcvScale));
    const advertised = field * 2 ** this.#rcvScale;
    if (seqDiff(this.#rcvNxt + advertised, this.#rcvRight) > 0) this.#rcvRight = (this.#rcvNxt + advertised) >>> 0;
    return field;
  }

  /** A data (and/or FIN) segment from the queue at sequence `seq`. */
  #sendSegment(seq: number, length: number, fin: boolean): void {
    const ctx = this.ctx;
    const frame = ctx.frames.ipv4(this.remoteAddress, this.guestAddress, PROTO_TCP, 20 + length);
    this.#writeHeader(frame, TCP_ACK | (fin ? TCP_FIN : 0) | (length > 0 ? TCP_PSH : 0), seq, this.#rcvNxt, this.#advertise(), 20);
    if (length > 0) {
      // Copy queue bytes [seq - sndUna, + length) after the header.
      let skip = seqDiff(seq, this.#sndUna);
      let pos = L4_OFFSET + 20;
      let left = length;
      for (const chunk of this.#queue) {
        if (skip >= chunk.length) {
          skip -= chunk.length;
          continue;
        }
        const take = Math.min(chunk.length - skip, left);
        chunk.copy(frame, pos, skip, skip + take);
        pos += take;
        left -= take;
        skip = 0;
        if (left === 0) break;
      }
    }
    finishL4Checksum(frame, this.remoteAddress, this.guestAddress, PROTO_TCP, 16);
    this.ackPending = false;
    this.#segmentsUnacked = 0;
    ctx.transmit(frame);
  }

  #sendRaw(flags: number, seq: number, ack: number, window: number, synOptions = false): void {
    const headerLength = synOptions ? 20 + (this.#rcvScale > 0 || this.state === 'syn-sent' ? 8 : 4) : 20;
    const frame = this.ctx.frames.ipv4(this.remoteAddress, this.guestAddress, PROTO_TCP, headerLength);
    this.#writeHeader(frame, flags, seq, ack, window, headerLength);
    if (synOptions) {
      const o = L4_OFFSET + 20;
      frame[o] = 2; // MSS
      frame[o + 1] = 4;
      frame.writeUInt16BE(this.#ourMss, o + 2);
      if (headerLength === 28) {
        frame[o + 4] = 1; // NOP
        frame[o + 5] = 3; // window scale
        frame[o + 6] = 3;
        frame[o + 7] = OUR_WINDOW_SCALE;
      }
    }
    finishL4Checksum(frame, this.remoteAddress, this.guestAddress, PROTO_TCP, 16);
    if (flags & TCP_ACK) {
      this.ackPending = false;
      this.#segmentsUnacked = 0;
    }
    this.ctx.transmit(frame);
  }

  #writeHeader(frame: Buffer, flags: number, seq: number, ack: number, window: number, headerLength: number): void {
    const o = L4_OFFSET;
    frame.writeUInt16BE(this.remotePort, o);
    frame.writeUInt16BE(this.guestPort, o + 2);
    frame.writeUInt32BE(seq >>> 0, o + 4);
    frame.writeUInt32BE(flags & TCP_ACK ? ack >>> 0 : 0, o + 8);
    frame[o + 12] = (headerLength / 4) << 4;
    frame[o + 13] = flags;
    frame.writeUInt16BE(window, o + 14);
    frame.writeUInt32BE(0, o + 16); // checksum, urgent pointer
  }

  #close(reason: TcpCloseReason): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.#queue = [];
    this.#queued = 0;
    this.#deadline = 0;
    this.#persistDeadline = 0;
    this.ctx.release(this);
    const peer = this.peer;
    this.peer = null;
    peer?.onClose(reason);
  }
}

/** Reads MSS and window scale from a SYN's options (bounds-checked; junk ends the walk). */
export function parseSynOptions(frame: Buffer, start: number, end: number): { mss?: number; windowScale?: number } {
  const out: { mss?: number; windowScale?: number } = {};
  let p = start;
  while (p < end) {
    const kind = frame[p]!;
    if (kind === 0) break;
    if (kind === 1) {
      p++;
      continue;
    }
    if (p + 1 >= end) break;
    const len = frame[p + 1]!;
    if (len < 2 || p + len > end) break;
    if (kind === 2 && len === 4) out.mss = frame.readUInt16BE(p + 2);
    else if (kind === 3 && len === 3) out.windowScale = frame[p + 2]!;
    p += len;
  }
  return out;
}

/** A RST answering a segment that belongs to no connection (RFC 793: never answer a RST). */
export function resetFor(
  frames: FrameBuilder,
  seg: { guestAddress: number; guestPort: number; remoteAddress: number; remotePort: number; seq: number; ack: number; flags: number; length: number },
): Buffer | null {
  if (seg.flags & TCP_RST) return null;
  const src = seg.remoteAddress;
  const dst = seg.guestAddress;
  const frame = frames.ipv4(src, dst, PROTO_TCP, 20);
  const o = L4_OFFSET;
  frame.writeUInt16BE(seg.remotePort, o);
  frame.writeUInt16BE(seg.guestPort, o + 2);
  if (seg.flags & TCP_ACK) {
    frame.writeUInt32BE(seg.ack >>> 0, o + 4);
    frame.writeUInt32BE(0, o + 8);
    frame[o + 13] = TCP_RST;
  } else {
    const consumed = seg.length + (seg.flags & TCP_SYN ? 1 : 0) + (seg.flags & TCP_FIN ? 1 : 0);
    frame.writeUInt32BE(0, o + 4);
    frame.writeUInt32BE((seg.seq + consumed) >>> 0, o + 8);
    frame[o + 13] = TCP_RST | TCP_ACK;
  }
  frame[o + 12] = 5 << 4;
  frame.writeUInt16BE(0, o + 14);
  frame.writeUInt32BE(0, o + 16);
  finishL4Checksum(frame, src, dst, PROTO_TCP, 16);
  return frame;
}
