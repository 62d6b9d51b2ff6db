import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import wabtInit from 'wabt';
import type { ActorInfo, ActorMessageRecord, ActorModuleInfo, ActorState, McpLimits } from '@roost/api';
import { Runtime } from '@roost/core';
import { createMcpServer, listTools, McpSession } from '@roost/server';

/*
 * The actor tools (packages/server/src/mcp/actor-tools.ts) through the MCP
 * SDK's own client (so each result is checked against the tool's output
 * schema, as a client does), over a real embedded runtime in a temp home:
 * real worker threads, real SQLite, no VM. Here rather than beside the code
 * because the server's sources (its tests too) never import @roost/core.
 */

const LIMITS: McpLimits = { outputBytes: 1024, readBytes: 1024, maxSandboxes: 1 };

/**
 * An echo actor: it stores each message under `last`, logs it and replies
 * with it (its first 4 KiB); a message starting with `!` traps.
 */
const ECHO_WAT = `(module
  (import "roost" "msg_read" (func $msg_read (param i32 i32 i32) (result i32)))
  (import "roost" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))
  (import "roost" "reply" (func $reply (param i32 i32) (result i32)))
  (import "roost" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "last")
  (func (export "handle") (param $len i32) (result i32)
    (local $n i32)
    (local.set $n (call $msg_read (i32.const 64) (i32.const 0) (select (local.get $len) (i32.const 4096) (i32.lt_u (local.get $len) (i32.const 4096)))))
    (if (i32.eq (i32.load8_u (i32.const 64)) (i32.const 33)) (then unreachable))
    (call $log (i32.const 64) (local.get $n))
    (drop (call $state_set (i32.const 0) (i32.const 4) (i32.const 64) (local.get $n)))
    (call $reply (i32.const 64) (local.get $n))))`;

async function echoModule(): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const parsed = wabt.parseWat('echo.wat', ECHO_WAT);
  try {
    return new Uint8Array(parsed.toBinary({}).buffer);
  } finally {
    parsed.destroy();
  }
}

let home: string;
let runtime: Runtime;
let client: Client;
let wasm: Uint8Array;

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), 'roost-mcp-actors-'));
  runtime = await Runtime.open({ home, owner: 'actor-tools.test.ts' });
  const server = createMcpServer(new McpSession(runtime, LIMITS), { version: 'test' });
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await server.connect(serverSide);
  client = new Client({ name: 'actor-tools-test', version: '1.0.0' });
  await client.connect(clientSide);
  wasm = await echoModule();
});

afterAll(async () => {
  await client?.close();
  await runtime?.close();
  if (home) await rm(home, { recursive: true, force: true });
});

async function call(name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return (await client.callTool({ name, arguments: args })) as CallToolResult;
}

/** The structured result of a call that succeeded. */
async function ok<T>(name: string, args: Record<string, unknown>): Promise<T> {
  const r = await call(name, args);
  expect(r.isError, JSON.stringify(r.content)).toBeFalsy();
  return r.structuredContent as T;
}

/** The text of a call that failed (`CODE: message`). */
async function fails(name: string, args: Record<string, unknown>): Promise<string> {
  const r = await call(name, args);
  expect(r.isError).toBe(true);
  return (r.content[0] as { text: string }).text;
}

const b64 = (b: Uint8Array | string) => Buffer.from(b).toString('base64');

describe('MCP actor tools', () => {
  it('are listed with their schemas and hints', async () => {
    const tools = new Map((await client.listTools()).tools.map((t) => [t.name, t]));
    const names = ['actor_deploy', 'actor_create', 'actor_send', 'actor_call', 'actor_state', 'actor_list', 'actor_messages', 'actor_remove'];
    for (const name of names) expect(tools.has(name), name).toBe(true);
    expect(
      listTools()
        .filter((t) => t.name.startsWith('actor_'))
        .map((t) => t.name),
    ).toEqual(names);
    expect(tools.get('actor_state')!.annotations).toMatchObject({ readOnlyHint: true });
    expect(tools.get('actor_remove')!.annotations).toMatchObject({ readOnlyHint: false, destructiveHint: true });
    expect(Object.keys(tools.get('actor_call')!.inputSchema.properties!)).toEqual(['actor', 'message', 'messageBase64', 'timeoutMs']);
  });

  it('deploy, create, call, send, state, messages, list and remove: through runtime.actors', async () => {
    const mod = await ok<ActorModuleInfo>('actor_deploy', { wasmBase64: b64(wasm) });
    expect(mod.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(mod.imports).toContain('roost.log');

    const created = await ok<ActorInfo>('actor_create', { name: 'echo', module: mod.digest, limits: { fuel: 1_000_000 } });
    expect(created).toMatchObject({ name: 'echo', module: mod.digest, version: 0, limits: { fuel: 1_000_000 } });

    expect(await ok('actor_call', { actor: 'echo', message: 'hello' })).toMatchObject({ version: 1, reply: 'hello' });
    // Bytes that are not UTF-8 go in and come back as base64.
    const binary = Uint8Array.from([0xff, 0x00, 0xfe]);
    const r = await ok<{ seq: number; ticks: number; reply?: string; replyBase64?: string }>('actor_call', { actor: created.id, messageBase64: b64(binary) });
    expect(r).toMatchObject({ version: 2, replyBase64: b64(binary) });
    expect(r.reply).toBeUndefined();
    expect(r.ticks).toBeGreaterThan(0);

    const sent = await ok<{ seq: number }>('actor_send', { actor: 'echo', message: 'later' });
    expect(sent.seq).toBeGreaterThan(r.seq);
    // Mailbox order: the call after the send sees the send handled first.
    expect(await ok('actor_call', { actor: 'echo', message: 'now' })).toMatchObject({ version: 4, reply: 'now' });

    const state = await ok<ActorState>('actor_state', { actor: 'echo' });
    expect(state).toMatchObject({ version: 4, entries: [{ key: 'last', value: 'now' }] });
    expect(state.root).toMatch(/^[0-9a-f]{64}$/);
    expect(await ok('actor_state', { actor: 'echo', version: 2 })).toMatchObject({ entries: [{ key: 'last', value: b64(binary), valueEncoding: 'base64' }] });

    const { messages } = await ok<{ messages: ActorMessageRecord[] }>('actor_messages', { actor: 'echo', last: 2 });
    expect(messages.map((m) => [m.seq, m.ok, m.logs])).toEqual([
      [sent.seq, true, ['later']],
      [sent.seq + 1, true, ['now']],
    ]);
    expect((await ok<{ messages: ActorMessageRecord[] }>('actor_messages', { actor: 'echo', after: sent.seq })).messages.map((m) => m.reply)).toEqual(['now']);

    expect((await ok<{ actors: ActorInfo[] }>('actor_list', {})).actors).toMatchObject([{ name: 'echo', version: 4, handled: 4, failed: 0 }]);
    expect(await ok('actor_remove', { actor: 'echo' })).toEqual({ actor: 'echo', removed: true });
    expect(await fails('actor_state', { actor: 'echo' })).toBe('NOT_FOUND: no actor echo');
  });

  it("a handler's failure is an ACTOR error with its reason, and changes nothing", async () => {
    const a = await ok<ActorInfo>('actor_create', { wasmBase64: b64(wasm), init: 'x' });
    expect(a.name).toBeNull();
    expect(await fails('actor_call', { actor: a.id, message: '!boom' })).toMatch(/^ACTOR: actor \S+: message \d+ failed \(trap\): /);
    expect((await ok<ActorState>('actor_state', { actor: a.id })).entries).toEqual([]);
    const { messages } = await ok<{ messages: ActorMessageRecord[] }>('actor_messages', { actor: a.id });
    expect(messages.at(-1)).toMatchObject({ ok: false, error: { code: 'ACTOR', reason: 'trap' }, version: null });
    await ok('actor_remove', { actor: a.id });
  });

  it('refuses bad input before calling the runtime, naming the field', async () => {
    expect(await fails('actor_create', { name: 'x' })).toMatch(/^INVALID_ARGUMENT: .*give one of module .*wasmBase64.*from/);
    expect(await fails('actor_create', { module: 'sha256:abc' })).toMatch(/^INVALID_ARGUMENT: .*module: a module digest is sha256:/);
    expect(await fails('actor_call', { actor: 'x', message: 'a', messageBase64: 'YQ==' })).toMatch(/^INVALID_ARGUMENT: .*not both/);
    expect(await fails('actor_deploy', { wasmBase64: 'not base64!' })).toMatch(/^INVALID_ARGUMENT: .*wasmBase64: must be base64/);
    expect(await fails('actor_deploy', { wasmBase64: b64('hello') })).toMatch(/^INVALID_ARGUMENT: invalid actor module: not a WASM binary/);
    expect(await fails('actor_call', { actor: 'nobody', message: 'a' })).toBe('NOT_FOUND: no actor nobody');
    expect((await ok<{ actors: ActorInfo[] }>('actor_list', {})).actors).toEqual([]);
  });
});
