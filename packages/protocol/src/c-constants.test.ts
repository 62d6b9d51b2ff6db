import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  CallFlags,
  Capability,
  DEFAULT_WINDOW,
  ErrorCode,
  HEADER_SIZE,
  HelloFlags,
  LENGTH_OVERHEAD,
  MAX_ENTROPY,
  MAX_FRAME_LENGTH,
  MAX_NONCE,
  MAX_PAYLOAD,
  MAX_RECORD,
  MAX_STREAMS,
  MessageType,
  NET_CONFIG_LEN,
  Tag,
  VERSION,
  WatchEvent,
} from './constants.js';
import { MUX_HEADER, MUX_MAX_CHANNEL, MUX_MAX_PAYLOAD, MuxKind } from './p9-mux.js';

// The C agent has its own copy of every number on the wire (guest/agent/proto.h,
// fileops.h). Each side freezes its own table; this test checks the two agree,
// in both directions: every C name has its TypeScript twin with the same value
// and every TypeScript member has its C twin.

const agentDir = fileURLToPath(new URL('../../../guest/agent/', import.meta.url));
const source = (file: string) => readFileSync(agentDir + file, 'utf8');

/** `#define NAME value` lines whose value is a constant expression of numbers and earlier names. */
function defines(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^#define[ \t]+([A-Z][A-Z0-9_]*)[ \t]+([^\n]*?)[ \t]*(?:\/\*.*)?$/gm)) {
    const value = evaluate(m[2]!, out);
    if (value !== undefined) out.set(m[1]!, value);
  }
  return out;
}

/** Evaluates `1u`, `0x10u`, `(5u + NAME)`, `(1u << 20)`; undefined for anything else (strings, casts, macros with arguments). */
function evaluate(expr: string, known: Map<string, number>): number | undefined {
  const tokens = expr.match(/0x[0-9a-fA-F]+u?|\d+u?|[A-Z_][A-Z0-9_]*|<<|[-+*()]|\S/g) ?? [];
  let js = '';
  for (const t of tokens) {
    if (/^(0x[0-9a-fA-F]+|\d+)u?$/.test(t)) js += String(Number(t.replace(/u$/, '')));
    else if (/^[A-Z_]/.test(t)) {
      const v = known.get(t);
      if (v === undefined) return undefined;
      js += String(v);
    } else if (['<<', '+', '-', '*', '(', ')'].includes(t)) js += t;
    else return undefined;
  }
  if (js === '') return undefined;
  // Only digits and the operators above reach this point.
  return Number(new Function(`return (${js});`)() as number);
}

/** The members of `enum name { A = 1, ... }`. */
function cEnum(text: string, name: string): Map<string, number> {
  const body = new RegExp(`enum ${name} \\{([^}]*)\\}`).exec(text)?.[1];
  if (body === undefined) throw new Error(`enum ${name} not found`);
  const out = new Map<string, number>();
  for (const m of body.matchAll(/([A-Z][A-Z0-9_]*)\s*=\s*(0x[0-9a-fA-F]+|\d+)/g)) out.set(m[1]!, Number(m[2]));
  return out;
}

/** The C constants named `prefix + key`, as a record keyed without the prefix. */
function withPrefix(table: Map<string, number>, prefix: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of table) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

const protoH = source('proto.h');
const fileopsH = source('fileops.h');
const protoDefines = defines(protoH);
const fileopsDefines = defines(fileopsH);

describe('the C agent and @roost/protocol agree', () => {
  it('on the version, sizes and limits', () => {
    const c = (name: string) => {
      const v = protoDefines.get(name);
      if (v === undefined) throw new Error(`${name} not found in proto.h`);
      return v;
    };
    expect({
      VERSION: c('ROOST_VERSION'),
      MAX_PAYLOAD: c('ROOST_MAX_PAYLOAD'),
      HEADER_SIZE: c('ROOST_FRAME_HDR'),
      LENGTH_OVERHEAD: c('ROOST_FRAME_MIN_LENGTH'),
      MAX_FRAME_LENGTH: c('ROOST_FRAME_MAX_LENGTH'),
      MAX_STREAMS: c('ROOST_MAX_STREAMS'),
      MAX_ENTROPY: c('ROOST_MAX_ENTROPY'),
      MAX_NONCE: c('ROOST_MAX_NONCE'),
      MAX_PING: c('ROOST_MAX_PING'),
      NET_CONFIG_LEN: c('ROOST_NET_LEN'),
      DEFAULT_WINDOW: c('ROOST_DEFAULT_WINDOW'),
    }).toEqual({
      VERSION,
      MAX_PAYLOAD,
      HEADER_SIZE,
      LENGTH_OVERHEAD,
      MAX_FRAME_LENGTH,
      MAX_STREAMS,
      MAX_ENTROPY,
      MAX_NONCE,
      // A PING payload has the nonce's bound (constants.ts: "Bytes of a nonce or a PING payload").
      MAX_PING: MAX_NONCE,
      NET_CONFIG_LEN,
      DEFAULT_WINDOW,
    });
  });

  it('on the bound of a call record', () => {
    // fileops.c: a record buffer is the 4-byte length field plus the largest record.
    const recMax = defines(protoH + '\n' + source('fileops.c')).get('REC_MAX');
    expect(recMax).toBeDefined();
    expect(recMax! - 4).toBe(MAX_RECORD);
  });

  it('on message types', () => {
    expect(withPrefix(cEnum(protoH, 'roost_type'), 'ROOST_T_')).toEqual(MessageType);
  });

  it('on TLV tags', () => {
    expect(withPrefix(cEnum(protoH, 'roost_tag'), 'ROOST_TAG_')).toEqual(Tag);
  });

  it('on ERROR codes', () => {
    expect(withPrefix(cEnum(protoH, 'roost_err'), 'ROOST_E_')).toEqual(ErrorCode);
  });

  it('on HELLO flags and capabilities', () => {
    expect(withPrefix(protoDefines, 'ROOST_FLAG_')).toEqual(HelloFlags);
    expect(withPrefix(protoDefines, 'ROOST_CAP_')).toEqual(Capability);
  });

  it('on call flags and watch events', () => {
    const flags = withPrefix(fileopsDefines, 'FOP_');
    delete flags.MAX_ARGS; // not on the wire: the agent's own bound on operands
    expect(flags).toEqual(CallFlags);
    expect(withPrefix(cEnum(fileopsH, 'fop_event'), 'FOP_EV_')).toEqual(WatchEvent);
  });

  it('on the mux frames of the 9P relay port', () => {
    const relayH = source('p9relay.h');
    const d = defines(relayH);
    expect({ HDR: d.get('P9R_HDR'), MAX: d.get('P9R_MAX_PAYLOAD'), CHAN: d.get('P9R_MAX_CHAN') }).toEqual({
      HDR: MUX_HEADER,
      MAX: MUX_MAX_PAYLOAD,
      CHAN: MUX_MAX_CHANNEL,
    });
    expect(withPrefix(cEnum(relayH, 'p9r_kind'), 'P9R_')).toEqual(MuxKind);
  });

  it('reads the tables it compares (the parsers are not vacuous)', () => {
    expect(Object.keys(withPrefix(cEnum(protoH, 'roost_tag'), 'ROOST_TAG_')).length).toBeGreaterThan(30);
    expect(protoDefines.get('ROOST_FRAME_MAX_LENGTH')).toBe(5 + 65536);
    expect(evaluate('(1u << 20)', new Map())).toBe(1 << 20);
    expect(evaluate('"roost-agent"', new Map())).toBeUndefined();
  });
});
