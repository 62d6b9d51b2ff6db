import { StringDecoder } from 'node:string_decoder';
import { RoostError } from '@roost/api';

/*
 * Incremental parsers for the two streaming formats of the REST API. Both
 * take bytes in whatever chunks the socket delivers them and never buffer
 * more than one unfinished line (bounded by `maxLine`).
 *
 * Concurrency: neither is safe for concurrent use; feed one stream into one
 * parser, in order.
 */

/** The longest line either parser accepts before it gives up on the stream (a broken or hostile peer). */
export const MAX_LINE = 16 << 20;

/**
 * Splits a byte stream into lines for NDJSON: on `\n`, with a trailing `\r`
 * removed and empty lines skipped. UTF-8 sequences split across chunks are
 * joined.
 */
export class LineSplitter {
  #decoder = new StringDecoder('utf8');
  #partial = '';

  constructor(private readonly maxLine: number = MAX_LINE) {}

  /** Feeds a chunk; returns the lines it completed. */
  push(chunk: Uint8Array | string): string[] {
    const text = this.#partial + (typeof chunk === 'string' ? chunk : this.#decoder.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
    const parts = text.split('\n');
    this.#partial = parts.pop()!;
    if (this.#partial.length > this.maxLine) {
      throw new RoostError('INTERNAL', `the daemon sent a line longer than ${this.maxLine} bytes: the stream is not NDJSON`);
    }
    return parts.map(stripCR).filter((l) => l.length > 0);
  }

  /** Ends the stream; returns the last line if it had no newline. */
  end(): string[] {
    const rest = stripCR(this.#partial + this.#decoder.end());
    this.#partial = '';
    return rest.length > 0 ? [rest] : [];
  }
}

/** Splits NDJSON bytes into parsed values (each line one JSON document). */
export class NdjsonParser {
  #lines: LineSplitter;

  constructor(maxLine: number = MAX_LINE) {
    this.#lines = new LineSplitter(maxLine);
  }

  push(chunk: Uint8Array | string): unknown[] {
    return this.#lines.push(chunk).map(parseLine);
  }

  end(): unknown[] {
    return this.#lines.end().map(parseLine);
  }
}

function parseLine(line: string): unknown {
  try {
    return JSON.parse(line) as unknown;
  } catch (cause) {
    throw new RoostError('INTERNAL', `the daemon sent a line that is not JSON: ${JSON.stringify(line.slice(0, 80))}`, { cause });
  }
}

function stripCR(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}

/** One dispatched Server-Sent Event. */
export interface SseEvent {
  /** The `event:` field (default `message`). */
  event: string;
  /** The `data:` lines joined with `\n`. */
  data: string;
  /** The last event id seen so far on this stream (`id:` of this event or an earlier one), if any. */
  id: string | undefined;
}

/**
 * A Server-Sent Events parser following the WHATWG algorithm: lines end with
 * CRLF, LF or CR (a CR at the end of one chunk and a LF at the start of the
 * next are one line end); `:` starts a comment; `data:` lines accumulate
 * joined by `\n`; a blank line dispatches; `id` without NUL sets the last
 * event id; `retry` sets the reconnection delay; one space after the colon is
 * dropped; a leading BOM is ignored.
 */
export class SseParser {
  #decoder = new StringDecoder('utf8');
  #line = '';
  #afterCR = false;
  #started = false;
  #data: string[] = [];
  #hasData = false;
  #event = '';
  /** The last event id (persists across events, as the spec says). */
  lastEventId: string | undefined;
  /** The reconnection delay the server asked for with `retry:`, in ms. */
  retry: number | undefined;

  constructor(private readonly maxLine: number = MAX_LINE) {}

  /** Feeds a chunk; returns the events it completed. */
  push(chunk: Uint8Array | string): SseEvent[] {
    let text = typeof chunk === 'string' ? chunk : this.#decoder.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    if (!this.#started && text.length > 0) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const out: SseEvent[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 10 /* \n */) {
        if (this.#afterCR) {
          // The LF of a CRLF whose CR ended the previous line.
          this.#afterCR = false;
          start = i + 1;
          continue;
        }
        this.#afterCR = false;
        this.#takeLine(this.#line + text.slice(start, i), out);
        this.#line = '';
        start = i + 1;
      } else if (c === 13 /* \r */) {
        this.#takeLine(this.#line + text.slice(start, i), out);
        this.#line = '';
        this.#afterCR = true;
        start = i + 1;
      } else if (this.#afterCR) {
        this.#afterCR = false;
      }
    }
    if (start < text.length) {
      this.#afterCR = false;
      this.#line += text.slice(start);
      if (this.#line.length > this.maxLine) throw new RoostError('INTERNAL', `the daemon sent an event line longer than ${this.maxLine} bytes`);
    }
    return out;
  }

  #takeLine(line: string, out: SseEvent[]): void {
    if (line === '') {
      this.#dispatch(out);
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.#event = value;
        break;
      case 'data':
        this.#data.push(value);
        this.#hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
      // Unknown fields are ignored.
    }
  }

  #dispatch(out: SseEvent[]): void {
    const event = this.#event || 'message';
    this.#event = '';
    if (!this.#hasData) return;
    out.push({ event, data: this.#data.join('\n'), id: this.lastEventId });
    this.#data = [];
    this.#hasData = false;
  }
}
