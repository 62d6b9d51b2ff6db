import { readFileSync } from 'node:fs';
import { Agent, request as httpRequest, type IncomingMessage } from 'node:http';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020.js';
import type { ValidateFunction } from 'ajv';
import { expect } from 'vitest';

/*
 * A small HTTP client for the daemon's tests, over a unix socket or TCP,
 * that checks EVERY response body it sees against docs/openapi.json: the
 * status must be documented for the route (or covered by `default`), the
 * media type must be one the document lists, and JSON bodies, NDJSON lines
 * and SSE event data must match their schemas. A mismatch fails the test.
 */

type Json = Record<string, unknown>;

const documentPath = fileURLToPath(new URL('../docs/openapi.json', import.meta.url));
/** The committed OpenAPI document. */
export const openapi = JSON.parse(readFileSync(documentPath, 'utf8')) as Json;

// The default import of ajv's CJS build is the class at run time; its typings put it under `default`.
const AjvClass = ((Ajv2020 as unknown as { default?: typeof Ajv2020 }).default ?? Ajv2020) as unknown as typeof Ajv2020.default;
const ajv = new AjvClass({ strict: false, allErrors: true });
ajv.addFormat('binary', true);
ajv.addSchema(openapi, 'openapi');

const validators = new Map<string, ValidateFunction>();
/** A validator for the schema at a JSON pointer into the document. */
function validatorAt(pointer: string[]): ValidateFunction {
  const ref = 'openapi#/' + pointer.map((p) => encodeURIComponent(p.replace(/~/g, '~0').replace(/\//g, '~1'))).join('/');
  let v = validators.get(ref);
  if (!v) {
    v = ajv.compile({ $ref: ref });
    validators.set(ref, v);
  }
  return v;
}

/** Counts of what was checked, so a test can assert the checking happened. */
export const validated = { responses: 0, lines: 0, events: 0 };

function check(v: ValidateFunction, value: unknown, what: string): void {
  if (!v(value)) {
    throw new Error(`${what} does not match docs/openapi.json: ${ajv.errorsText(v.errors)}\n${JSON.stringify(value).slice(0, 2000)}`);
  }
}

interface Operation {
  template: string;
  method: string;
}

/** The documented operation of a request, or null for a path the document does not have. */
function operationOf(method: string, path: string): Operation | null {
  const paths = openapi.paths as Record<string, Json>;
  for (const template of Object.keys(paths)) {
    const re = new RegExp('^' + template.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+') + '$');
    if (re.test(path) && paths[template]![method.toLowerCase()]) return { template, method: method.toLowerCase() };
  }
  return null;
}

/** The pointer of the response object for a status (following a component $ref), and the object. */
function responseOf(op: Operation | null, status: number): { pointer: string[]; response: Json } {
  if (!op) {
    // Unknown routes answer 404 in the one error shape (after auth and the in-flight limit).
    const name = status === 401 ? 'Unauthenticated' : status === 503 ? 'Unavailable' : 'NotFound';
    if (name === 'NotFound') expect(status, 'a path the document does not have').toBe(404);
    const pointer = ['components', 'responses', name];
    return { pointer, response: (openapi.components as { responses: Record<string, Json> }).responses[name]! };
  }
  const responses = ((openapi.paths as Record<string, Record<string, Json>>)[op.template]![op.method] as { responses: Record<string, Json> }).responses;
  const key = responses[String(status)] ? String(status) : 'default';
  let pointer = ['paths', op.template, op.method, 'responses', key];
  let response = responses[key];
  if (!response) throw new Error(`${op.method.toUpperCase()} ${op.template}: status ${status} is not documented`);
  if (typeof response.$ref === 'string') {
    const name = response.$ref.split('/').pop()!;
    pointer = ['components', 'responses', name];
    response = (openapi.components as { responses: Record<string, Json> }).responses[name]!;
  }
  if (status < 400 && key === 'default') throw new Error(`${op.method.toUpperCase()} ${op.template}: success status ${status} is not documented`);
  return { pointer, response };
}

function mediaTypeOf(res: IncomingMessage): string {
  return (res.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

/** Where the daemon listens. */
export type Target = { socketPath: string } | { url: string };

export interface RequestOptions {
  /** A JSON body (serialized), or raw bytes / text sent as they are. */
  body?: unknown;
  raw?: string | Buffer;
  headers?: Record<string, string>;
  /** Send the body without a Content-Length (chunked). */
  chunked?: boolean;
  /** Override the client's token; null sends no Authorization header. */
  token?: string | null;
  signal?: AbortSignal;
}

/** A complete, validated response. */
export interface ApiResponse<T = unknown> {
  status: number;
  headers: IncomingMessage['headers'];
  /** Parsed JSON, the text of a text body, or the NDJSON values / SSE events when the body was a stream. */
  body: T;
  text: string;
}

/** A parsed Server-Sent Event. */
export interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

/** A streamed, validated response: lines or events as they arrive. */
export interface StreamResponse {
  status: number;
  headers: IncomingMessage['headers'];
  /** The NDJSON values, each validated, as they arrive. */
  lines(): AsyncGenerator<Json>;
  /** The SSE events (comments skipped, counted in `comments`), each one's data validated. */
  events(): AsyncGenerator<SseEvent & { json: Json }>;
  comments: number;
  /** Drops the connection. */
  close(): void;
}

/** The daemon's HTTP client for tests; every response is checked against docs/openapi.json. */
export class ApiClient {
  readonly #target: Target;
  readonly #token: string | null;
  readonly #agent = new Agent({ keepAlive: true, maxSockets: 256 });
  #session: { id: string; close(): void } | null = null;

  constructor(target: Target, token: string | null) {
    this.#target = target;
    this.#token = token;
  }

  /** Sends a request and reads the whole response, validating it. */
  async request<T = Json>(method: string, path: string, options: RequestOptions = {}): Promise<ApiResponse<T>> {
    const res = await this.#send(method, path, options);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const body = validateResponse(method, path, res.statusCode!, res.headers['content-type'] ?? '', text);
    return { status: res.statusCode!, headers: res.headers, body: body as T, text };
  }

  /** JSON shorthands. */
  get<T = Json>(path: string, options?: RequestOptions): Promise<ApiResponse<T>> {
    return this.request<T>('GET', path, options);
  }
  post<T = Json>(path: string, body?: unknown, options: RequestOptions = {}): Promise<ApiResponse<T>> {
    return this.request<T>('POST', path, { ...options, ...(body === undefined ? {} : { body }) });
  }
  delete<T = Json>(path: string, options?: RequestOptions): Promise<ApiResponse<T>> {
    return this.request<T>('DELETE', path, options);
  }

  /** Sends a request whose response is a stream (NDJSON or SSE); an error status is read and validated whole. */
  async stream(method: string, path: string, options: RequestOptions = {}): Promise<StreamResponse> {
    const res = await this.#send(method, path, options);
    const status = res.statusCode!;
    const op = operationOf(method, path.split('?')[0]!);
    const { pointer, response } = responseOf(op, status);
    const type = mediaTypeOf(res);
    const content = response.content as Record<string, Json> | undefined;
    if (!content?.[type]) throw new Error(`${method} ${path}: ${status} ${type} is not a documented media type (${Object.keys(content ?? {}).join(', ')})`);
    const schemaPointer = [...pointer, 'content', type];
    validated.responses++;
    const out: StreamResponse = {
      status,
      headers: res.headers,
      comments: 0,
      close: () => res.destroy(),
      async *lines() {
        if (type === 'application/json') {
          // An error answered before the stream began.
          const chunks: Buffer[] = [];
          for await (const c of res) chunks.push(c as Buffer);
          const value = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Json;
          check(validatorAt([...schemaPointer, 'schema']), value, `${method} ${path} ${status}`);
          yield value;
          return;
        }
        expect(type).toBe('application/x-ndjson');
        const v = validatorAt([...schemaPointer, 'schema']);
        let buf = '';
        const decoder = new TextDecoder();
        for await (const chunk of res) {
          buf += decoder.decode(chunk as Buffer, { stream: true });
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!line.trim()) continue;
            const value = JSON.parse(line) as Json;
            check(v, value, `${method} ${path} NDJSON line`);
            validated.lines++;
            yield value;
          }
        }
        expect(buf.trim(), 'an NDJSON stream ends with a newline').toBe('');
      },
      async *events() {
        expect(type).toBe('text/event-stream');
        const media = content[type]!;
        expect(media['x-sse-data'], 'the document gives the schema of event data').toBeDefined();
        const dataV = validatorAt([...schemaPointer, 'x-sse-data']);
        const errorV = validatorAt([...schemaPointer, 'x-sse-error-data']);
        let buf = '';
        const decoder = new TextDecoder();
        for await (const chunk of res) {
          buf += decoder.decode(chunk as Buffer, { stream: true });
          let end: number;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const ev: SseEvent = { data: '' };
            const data: string[] = [];
            let comment = false;
            for (const l of block.split('\n')) {
              if (l.startsWith(':')) comment = true;
              else if (l.startsWith('id:')) ev.id = l.slice(3).trim();
              else if (l.startsWith('event:')) ev.event = l.slice(6).trim();
              else if (l.startsWith('data:')) data.push(l.slice(5).replace(/^ /, ''));
            }
            if (data.length === 0) {
              if (comment) out.comments++;
              continue;
            }
            ev.data = data.join('\n');
            const json = JSON.parse(ev.data) as Json;
            check(ev.event === 'error' ? errorV : dataV, json, `${method} ${path} SSE event ${ev.event}`);
            if (ev.event !== 'error') {
              expect(String(json.id), 'the SSE id is the event id').toBe(ev.id);
              expect(json.type, 'the SSE event name is the event type').toBe(ev.event);
            }
            validated.events++;
            yield { ...ev, json };
          }
        }
      },
    };
    return out;
  }

  /**
   * Opens a client session (POST /v1/sessions), as @roost/client does before
   * it creates a sandbox that is not detached: its id goes in the
   * Roost-Session header of every later request, and the sandboxes made in
   * it end when it does (`close()`, or the client's connections closing).
   */
  async openSession(): Promise<string> {
    const s = await this.stream('POST', '/v1/sessions');
    expect(s.status).toBe(200);
    const lines = s.lines();
    const first = (await lines.next()).value as { id: string };
    // Keepalive lines are read (and validated) as they come, until the stream ends.
    void (async () => {
      try {
        for await (const line of lines) void line;
      } catch {
        // closed
      }
    })();
    this.#session = { id: first.id, close: () => s.close() };
    return first.id;
  }

  /** Closes kept-alive connections (and the session's stream). */
  close(): void {
    this.#session?.close();
    this.#session = null;
    this.#agent.destroy();
  }

  #send(method: string, path: string, options: RequestOptions): Promise<IncomingMessage> {
    const headers: Record<string, string> = { ...options.headers };
    if (this.#session && !Object.keys(headers).some((h) => h.toLowerCase() === 'roost-session')) headers['roost-session'] = this.#session.id;
    const token = options.token === undefined ? this.#token : options.token;
    if (token !== null && !Object.keys(headers).some((h) => h.toLowerCase() === 'authorization')) headers.authorization = `Bearer ${token}`;
    let payload: string | Buffer | undefined;
    if (options.raw !== undefined) payload = options.raw;
    else if (options.body !== undefined) {
      payload = JSON.stringify(options.body);
      headers['content-type'] ??= 'application/json';
    }
    if (payload !== undefined && !options.chunked) headers['content-length'] = String(Buffer.byteLength(payload));
    const target = this.#target;
    const base =
      'socketPath' in target
        ? { socketPath: target.socketPath, host: 'localhost' }
        : (() => {
            const u = new URL(target.url);
            return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port) };
          })();
    return new Promise((resolve, reject) => {
      const req = httpRequest({ ...base, method, path, headers, agent: this.#agent, ...(options.signal ? { signal: options.signal } : {}) }, resolve);
      req.on('error', reject);
      if (payload !== undefined && options.chunked) {
        // Two writes without a length: node sends them chunked.
        const bytes = Buffer.from(payload);
        req.write(bytes.subarray(0, bytes.length >> 1));
        req.end(bytes.subarray(bytes.length >> 1));
      } else req.end(payload);
    });
  }
}

/**
 * Checks a complete response (from this client, or from curl) against the
 * document; returns the parsed body (JSON value, NDJSON values, or text).
 */
export function validateResponse(method: string, path: string, status: number, contentType: string, text: string): unknown {
  const op = operationOf(method, path.split('?')[0]!);
  const { pointer, response } = responseOf(op, status);
  const content = response.content as Record<string, Json> | undefined;
  validated.responses++;
  if (!content) {
    expect(text, `${method} ${path} ${status} has no documented body`).toBe('');
    return undefined;
  }
  const type = contentType.split(';')[0]!.trim().toLowerCase();
  if (!content[type])
    throw new Error(`${method} ${path}: ${status} ${type || '(no content type)'} is not a documented media type (${Object.keys(content).join(', ')})`);
  const v = validatorAt([...pointer, 'content', type, 'schema']);
  if (type === 'application/json') {
    const value = JSON.parse(text) as unknown;
    check(v, value, `${method} ${path} ${status}`);
    return value;
  }
  if (type === 'application/x-ndjson') {
    const values = text
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as unknown);
    for (const value of values) check(v, value, `${method} ${path} NDJSON line`);
    validated.lines += values.length;
    return values;
  }
  check(v, text, `${method} ${path} ${status}`);
  return text;
}
