import {
  actorCallResult,
  DEFAULT_MCP_ACTOR_MESSAGES,
  McpActorToolInputs,
  McpActorToolOutputs,
  type ActorMessageRecord,
  type CreateActorOptions,
} from '@roost/api';
import { z } from 'zod';
import { additive, readOnly, settles, type ToolDef } from './tools.js';

/*
 * The actor tools (docs/actors.md): their inputs and outputs are
 * @roost/api's (McpActorToolInputs, McpActorToolOutputs), and each one calls
 * `runtime.actors` only, so they work the same on an embedded runtime and
 * on the daemon. Actors outlive the MCP session, as deployments do.
 */

/** The name of an actor tool. */
export type ActorToolName = keyof typeof McpActorToolInputs;
type Input<N extends ActorToolName> = z.infer<(typeof McpActorToolInputs)[N]>;
type Output<N extends ActorToolName> = z.infer<(typeof McpActorToolOutputs)[N]>;

/** The message of a send or call: its text, its base64 decoded, or the empty message. */
function messageOf(input: { message?: string | undefined; messageBase64?: string | undefined }): Uint8Array | string {
  if (input.messageBase64 !== undefined) return Buffer.from(input.messageBase64, 'base64');
  return input.message ?? '';
}

/** The actor tools, by name. */
export const ACTOR_TOOLS: { [N in ActorToolName]: ToolDef<Input<N>, Output<N>> } = {
  actor_deploy: {
    title: 'Deploy an actor module',
    description:
      'Stores a WASM module (base64) for actors to be created from, by its content digest (the same bytes twice: one module). ' +
      'Returns the digest to give actor_create, its imports and exports, and the grants an actor of it needs. ' +
      'An actor is a small WASM program with durable, versioned key-value state and a mailbox; each message runs its `handle` export as one transaction (docs/actors.md). ' +
      'INVALID_ARGUMENT says what the module does wrong.',
    annotations: settles(false),
    async run(input, call) {
      return call.session.runtime.actors.deploy(Buffer.from(input.wasmBase64, 'base64'), { signal: call.signal });
    },
  },
  actor_create: {
    title: 'Create an actor',
    description:
      'Creates an actor from a deployed module (`module`, a digest), from a module given here (`wasmBase64`, deployed first) or as a fork of another actor (`from`), then runs its init. ' +
      'Give it references to other actors (`refs`), grants (random, clock, fetch through an egress policy, sandboxes it may run commands in) and limits (fuel, memory, time per message). ' +
      'Returns its id, version and state root. Actors outlive this MCP session: remove them with actor_remove.',
    annotations: additive,
    async run(input, call) {
      const actors = call.session.runtime.actors;
      const options: CreateActorOptions = {};
      if (input.name !== undefined) options.name = input.name;
      if (input.module !== undefined) options.module = input.module;
      if (input.wasmBase64 !== undefined) options.module = (await actors.deploy(Buffer.from(input.wasmBase64, 'base64'), { signal: call.signal })).digest;
      if (input.from !== undefined) options.from = input.from;
      if (input.init !== undefined) options.init = input.init;
      if (input.initBase64 !== undefined) options.init = Buffer.from(input.initBase64, 'base64');
      if (input.refs !== undefined) options.refs = input.refs;
      if (input.grants !== undefined) options.grants = input.grants;
      if (input.limits !== undefined) options.limits = input.limits;
      if (input.keepVersions !== undefined) options.keepVersions = input.keepVersions;
      return actors.create({ ...options, signal: call.signal });
    },
  },
  actor_send: {
    title: 'Send a message to an actor',
    description:
      'Puts a message (text, or base64) in an actor’s mailbox and returns its sequence number once it is stored; it is handled exactly once, in mailbox order, without waiting here. ' +
      'Use actor_call to wait for the reply, and actor_messages to see how a sent message went. RESOURCE_EXHAUSTED when the mailbox is full.',
    annotations: additive,
    async run(input, call) {
      return call.session.runtime.actors.send(input.actor, messageOf(input), { signal: call.signal });
    },
  },
  actor_call: {
    title: 'Call an actor',
    description:
      'Sends a message (text, or base64) to an actor and waits for its handler: returns the reply (`reply` as text, or `replyBase64` when it is not UTF-8; absent when the handler did not reply), ' +
      'the state version it committed and the fuel it used (`ticks`). When the handler fails (a trap, out of fuel, out of time, a non-zero return) its effects are discarded ' +
      'and the result is an ACTOR error naming the reason.',
    annotations: additive,
    async run(input, call) {
      const r = await call.session.runtime.actors.call(input.actor, messageOf(input), {
        ...(input.timeoutMs !== undefined ? { timeoutMs: input.timeoutMs } : {}),
        signal: call.signal,
      });
      const out: Output<'actor_call'> = actorCallResult(r);
      return out;
    },
  },
  actor_state: {
    title: 'Read an actor’s state',
    description:
      'Returns an actor’s key-value state at its newest version (or a kept `version`): the version, its root hash, the size, and each key and value (UTF-8 text, or base64 marked by keyEncoding/valueEncoding).',
    annotations: readOnly,
    async run(input, call) {
      return call.session.runtime.actors.state(input.actor, input.version !== undefined ? { version: input.version } : {});
    },
  },
  actor_list: {
    title: 'List actors',
    description:
      'Lists the actors: id, name, module, state version and root, messages handled and failed, mailbox length, refs, grants, limits and last error.',
    annotations: readOnly,
    async run(_input, call) {
      return { actors: await call.session.runtime.actors.list() };
    },
  },
  actor_messages: {
    title: 'Read an actor’s handled messages',
    description:
      `Returns the last \`last\` (default ${DEFAULT_MCP_ACTOR_MESSAGES}) messages an actor handled, oldest first (or those after the seq \`after\`): ` +
      'for each, ok or the error, the version it committed, the fuel used, the reply (its first 4 KiB) and the log lines the handler wrote.',
    annotations: readOnly,
    async run(input, call) {
      const messages: ActorMessageRecord[] = [];
      const limit = input.last ?? DEFAULT_MCP_ACTOR_MESSAGES;
      const options = { ...(input.after !== undefined ? { after: input.after } : {}), limit, signal: call.signal };
      for await (const r of call.session.runtime.actors.messages(input.actor, options)) messages.push(r);
      return { messages };
    },
  },
  actor_remove: {
    title: 'Remove an actor',
    description: 'Removes an actor for good: its state versions and its mailbox (messages waiting are dropped).',
    annotations: settles(true),
    async run(input, call) {
      await call.session.runtime.actors.remove(input.actor);
      return { actor: input.actor, removed: true as const };
    },
  },
};
