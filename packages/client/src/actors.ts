import {
  abortError,
  replyBytes,
  type ActorCallResult,
  CreateActorRequestSchema,
  isRoostError,
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
  parseInput,
  RoostError,
  type ActorInfo,
  type ActorMessage,
  type ActorMessageRecord,
  type ActorMessagesOptions,
  type ActorModuleInfo,
  type ActorReply,
  type ActorSendResult,
  type ActorsApi,
  type ActorState,
  type ActorVersion,
  type CreateActorOptions,
  type CreateActorRequest,
} from '@roost/api';
import type { Transport } from './http.js';
import { NdjsonParser } from './wire.js';

/** The daemon's wait for a call's outcome when none is given (its documented default). */
const DEFAULT_CALL_TIMEOUT_MS = 60_000;
/** How much longer than a call's own timeout its HTTP request waits: the daemon's TIMEOUT answer comes first. */
const CALL_TIMEOUT_MARGIN_MS = 10_000;

const path = (actor: string, rest = '') => `/v1/actors/${encodeURIComponent(actor)}${rest}`;

/** A message as bytes, refused here (as the daemon would) past MAX_ACTOR_MESSAGE_BYTES. */
function messageBytes(message: ActorMessage): Uint8Array {
  const bytes = typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
  if (bytes.byteLength > MAX_ACTOR_MESSAGE_BYTES) {
    throw new RoostError('INVALID_ARGUMENT', `the message is ${bytes.byteLength} bytes, over ${MAX_ACTOR_MESSAGE_BYTES}`, {
      details: { maxBytes: MAX_ACTOR_MESSAGE_BYTES },
    });
  }
  return bytes;
}

/**
 * `client.actors`: the actors of the daemon's home (docs/actors.md), the
 * same `ActorsApi` as the embedded `runtime.actors`. Messages, modules
 * and replies travel as raw bytes; a handler's failure is the daemon's
 * ACTOR error with its `details.reason`.
 *
 * Concurrency: every call may overlap; the daemon handles messages to one
 * actor one at a time in mailbox order.
 */
export class RemoteActors implements ActorsApi {
  /** @internal */
  constructor(private readonly transport: Transport) {}

  /** Stores a WASM module by its content digest (the same bytes twice: one module). INVALID_ARGUMENT naming what the module does wrong. */
  async deploy(module: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<ActorModuleInfo> {
    if (module.byteLength > MAX_ACTOR_MODULE_BYTES) {
      throw new RoostError('INVALID_ARGUMENT', `the module is ${module.byteLength} bytes, over the limit of ${MAX_ACTOR_MODULE_BYTES}`, {
        details: { maxBytes: MAX_ACTOR_MODULE_BYTES },
      });
    }
    return this.transport.json<ActorModuleInfo>('POST', '/v1/actors/modules', {
      body: module,
      contentType: 'application/wasm',
      signal: options.signal,
      what: 'deploying an actor module',
    });
  }

  async modules(): Promise<ActorModuleInfo[]> {
    return (await this.transport.json<{ modules: ActorModuleInfo[] }>('GET', '/v1/actors/modules')).modules;
  }

  /** Removes a module no actor uses (INVALID_STATE while one does). */
  async removeModule(digest: string): Promise<void> {
    await this.transport.json<undefined>('DELETE', `/v1/actors/modules/${encodeURIComponent(digest)}`, { what: `removing actor module ${digest}` });
  }

  /** Creates an actor and runs its `init` (checked here first: a bad request rejects, INVALID_ARGUMENT, without a request). */
  async create(options: CreateActorOptions & { signal?: AbortSignal }): Promise<ActorInfo> {
    const { signal, init, ...rest } = options;
    const request: CreateActorRequest = { ...rest };
    if (typeof init === 'string') request.init = init;
    else if (init !== undefined) request.initBase64 = Buffer.from(messageBytes(init)).toString('base64');
    const body = parseInput(CreateActorRequestSchema, request, 'actor options');
    // The init runs within the actor's own wall-time limit (up to 10 minutes): the daemon bounds the wait.
    return this.transport.json<ActorInfo>('POST', '/v1/actors', { json: body, signal, timeoutMs: null, what: 'creating an actor' });
  }

  /** By id, unique id prefix, or name. */
  get(actor: string): Promise<ActorInfo> {
    return this.transport.json<ActorInfo>('GET', path(actor));
  }

  async list(): Promise<ActorInfo[]> {
    return (await this.transport.json<{ actors: ActorInfo[] }>('GET', '/v1/actors')).actors;
  }

  /** Puts a message in the actor's mailbox; resolves once it is there durably (it will be handled exactly once). */
  async send(actor: string, message: ActorMessage, options: { signal?: AbortSignal } = {}): Promise<ActorSendResult> {
    const r = await this.transport.json<ActorSendResult>('POST', path(actor, '/messages'), {
      body: messageBytes(message),
      signal: options.signal,
      what: `sending a message to actor ${actor}`,
    });
    return { seq: r.seq };
  }

  /** Sends and waits for the handler's outcome: its reply, or an ACTOR error (trap, out of fuel, timeout, non-zero return). */
  async call(actor: string, message: ActorMessage, options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<ActorReply> {
    const r = await this.transport.json<ActorCallResult>('POST', path(actor, '/call'), {
      body: messageBytes(message),
      query: { timeoutMs: options.timeoutMs },
      signal: options.signal,
      timeoutMs: (options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS) + CALL_TIMEOUT_MARGIN_MS,
      what: `calling actor ${actor}`,
    });
    return { seq: r.seq, version: r.version, ticks: r.ticks, reply: replyBytes(r) };
  }

  /** The state at the newest version, or at `version` if it is kept. */
  state(actor: string, options: { version?: number } = {}): Promise<ActorState> {
    return this.transport.json<ActorState>('GET', path(actor, '/state'), { query: { version: options.version } });
  }

  async versions(actor: string): Promise<ActorVersion[]> {
    return (await this.transport.json<{ versions: ActorVersion[] }>('GET', path(actor, '/versions'))).versions;
  }

  /** Pins the newest version (kept from pruning). */
  snapshot(actor: string): Promise<ActorVersion> {
    return this.transport.json<ActorVersion>('POST', path(actor, '/snapshot'), { what: `snapshotting actor ${actor}` });
  }

  /**
   * Handled messages, oldest first; with `follow`, then new ones as they
   * are handled, until `signal` aborts (the iteration then ends quietly),
   * the actor is removed or the daemon stops. A broken connection is
   * UNAVAILABLE (resume with `after`: the last seq seen).
   */
  async *messages(actor: string, options: ActorMessagesOptions = {}): AsyncGenerator<ActorMessageRecord> {
    const { signal } = options;
    const what = `the messages of actor ${actor}`;
    if (signal?.aborted) return;
    let stream: Awaited<ReturnType<Transport['stream']>>;
    try {
      stream = await this.transport.stream('GET', path(actor, '/messages'), {
        query: { after: options.after, follow: options.follow ? 'true' : undefined, limit: options.limit },
        accept: 'application/x-ndjson',
        signal,
        what,
      });
    } catch (e) {
      if (signal?.aborted) return;
      throw e;
    }
    const { res, abort } = stream;
    const parser = new NdjsonParser();
    let ended = false;
    try {
      for await (const chunk of res) {
        for (const v of parser.push(chunk as Buffer)) yield v as ActorMessageRecord;
      }
      ended = true;
      for (const v of parser.end()) yield v as ActorMessageRecord;
    } catch (e) {
      if (signal?.aborted) return;
      if (isRoostError(e)) throw e;
      throw new RoostError('UNAVAILABLE', `${what}: the connection to the daemon at ${this.transport.endpoint.display} broke`, { cause: e });
    } finally {
      // A caller that stops early (break) or an abort: the daemon sees the connection close.
      if (!ended) abort(signal?.aborted ? abortError(signal, what) : new RoostError('ABORTED', `${what}: the stream was closed`));
    }
  }

  /** Removes the actor, its state versions and its mailbox (messages waiting are dropped; calls waiting fail NOT_FOUND). */
  async remove(actor: string): Promise<void> {
    // The removal waits for the message being handled, bounded by the actor's wall-time limit: the daemon bounds the wait.
    await this.transport.json<undefined>('DELETE', path(actor), { timeoutMs: null, what: `removing actor ${actor}` });
  }
}
