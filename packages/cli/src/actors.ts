import { open } from 'node:fs/promises';
import type { Command } from 'commander';
import {
  actorCallResult,
  isRoostError,
  MAX_ACTOR_MESSAGE_BYTES,
  MAX_ACTOR_MODULE_BYTES,
  parseEgressRule,
  RoostError,
  type ActorGrants,
  type ActorLimits,
  type ActorMessageRecord,
  type ActorModuleInfo,
  type ActorReply,
  type ActorsApi,
  type CreateActorOptions,
} from '@roost/api';
import { int } from './args.js';
import type { Face, WithFace } from './connect.js';
import { actorTable, describeActorState, describeRecord, moduleTable, versionTable } from './actors-format.js';
import { parseSize } from './volumes.js';

/*
 * `roost actor deploy|create|send|call|state|ls|inspect|versions|snapshot|
 * logs|rm|modules|rm-module` (docs/actors.md): thin over `runtime.actors`,
 * through the daemon when one answers, else through a runtime opened here.
 *
 * The runtime that owns the home handles the actors' messages. Without a
 * daemon that is this command's own runtime, while it runs: `call` waits for
 * its reply (handled here), `send` returns once the message is stored in the
 * mailbox, and the message is handled when a runtime next owns the home (the
 * daemon, or the next `roost` command, which handles the messages waiting
 * before its own, as a mailbox is ordered).
 */

/** A module digest, as `--module` and `rm-module` take it. */
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
/** The grants `--grant` names (fetch and sandboxes have their own flags, with what they allow). */
const SIMPLE_GRANTS = ['random', 'clock'] as const;

const collect = (v: string, acc: string[]): string[] => [...acc, v];

/** What the embedded face says of messages it stores but may not handle. */
const EMBEDDED_NOTE =
  'no daemon runs, so the message is handled when a runtime owns the home: the daemon (`roost serve`) or the next `roost` command (if this one ended before it got to it)';

/** The flags of `roost actor create`. */
interface CreateFlags {
  module?: string;
  from?: string;
  ref: string[];
  init?: string;
  grant: string[];
  fetchAllow: string[];
  sandbox: string[];
  fuel?: number;
  memory?: string;
  timeout?: number;
  mailbox?: number;
  maxState?: string;
  keepVersions?: number;
  json?: boolean;
}

/**
 * @param setExitCode sets the CLI's exit status (`call`: 1 when the actor's
 * handler failed, as a command's own failure; Roost's errors are 125).
 */
export function addActorCommands(program: Command, withFace: WithFace, setExitCode: (code: number) => void): void {
  const actor = program
    .command('actor')
    .alias('actors')
    .description(
      'WASM actors: small programs with durable, versioned state and a mailbox (docs/actors.md). ' +
        'The runtime that owns the home handles their messages: the daemon, else this command while it runs',
    );

  actor
    .command('deploy')
    .description('store a WASM module (by its content digest) for actors to be created from; prints the digest')
    .argument('<file>', 'the .wasm file')
    .option('--json', 'print the module as JSON')
    .action(async (file: string, flags: { json?: boolean }) => {
      const info = await withFace('actor deploy', async (face) => deployFile(face.runtime.actors, file, 'FILE'));
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : `${info.digest}\n`);
    });

  actor
    .command('create')
    .description('create an actor and run its init; prints its id')
    .argument('[name]', "the actor's name (optional: its id names it too)")
    .option('--module <module>', 'the module: a .wasm file (deployed first) or a digest (sha256:...) from `roost actor deploy`')
    .option(
      '--from <actor[@version]>',
      "fork: start from this actor's state (its newest version, or VERSION), module, grants and limits; other flags override them",
    )
    .option('--ref <actor>', 'an actor it holds a reference to: its refs 1, 2, ... in this order (repeatable)', collect, [] as string[])
    .option('--init <text>', 'the init message (UTF-8 text) its `init` export runs with')
    .option('--grant <grant>', `grant ${SIMPLE_GRANTS.join(' or ')} (repeatable)`, collect, [] as string[])
    .option(
      '--fetch-allow <rule>',
      'grant fetch, to TARGET[:PORTS] only (default deny plus these rules: a host name, *.example.com, an address, a CIDR, or * for all) (repeatable)',
      collect,
      [] as string[],
    )
    .option('--sandbox <id>', 'a microVM sandbox (name or id) it may run commands in (repeatable)', collect, [] as string[])
    .option('--fuel <n>', 'fuel per message (metered instructions; default 100000000)', int('--fuel'))
    .option('--memory <size>', 'linear memory, e.g. 16m (default 16 MiB, at most 256 MiB)')
    .option('--timeout <ms>', 'wall time per message (default 5000)', int('--timeout'))
    .option('--mailbox <n>', 'messages that may wait before sends are refused (default 10000)', int('--mailbox'))
    .option('--max-state <size>', 'bytes of keys and values in its state, e.g. 64m (the default)')
    .option('--keep-versions <n>', 'state versions kept (older ones are pruned, snapshots excepted; default 64)', int('--keep-versions'))
    .option('--json', 'print the actor as JSON')
    .action(async (name: string | undefined, flags: CreateFlags) => {
      const options = createOptions(name, flags);
      const info = await withFace('actor create', async (face) => {
        const module = flags.module === undefined ? undefined : await moduleDigestOf(face.runtime.actors, flags.module);
        return face.runtime.actors.create({ ...options, ...(module !== undefined ? { module } : {}) });
      });
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : `${info.id}\n`);
    });

  actor
    .command('send')
    .description(
      "put a message in an actor's mailbox; prints its sequence number. It is handled by the runtime that owns the home: " +
        'the daemon, else the next `roost` command (this one returns once the message is stored)',
    )
    .argument('<actor>', 'name, id or unique id prefix')
    .argument('<message>', 'the message (UTF-8 text); - reads it from stdin')
    .option('--json', 'print JSON')
    .action(async (name: string, message: string, flags: { json?: boolean }) => {
      const body = await messageBytes(message);
      const result = await withFace('actor send', async (face) => {
        const sent = await face.runtime.actors.send(name, body);
        if (face.kind === 'embedded') process.stderr.write(`roost: note: ${EMBEDDED_NOTE}\n`);
        return sent;
      });
      process.stdout.write(flags.json ? JSON.stringify(result) + '\n' : `${result.seq}\n`);
    });

  actor
    .command('call')
    .description(
      'send a message and wait for the handler: prints its reply (exit status 1, and the reason on stderr, when the handler failed). ' +
        'Without a daemon, this command handles it (and the messages waiting before it)',
    )
    .argument('<actor>', 'name, id or unique id prefix')
    .argument('<message>', 'the message (UTF-8 text); - reads it from stdin')
    .option('--timeout <ms>', 'how long to wait for the reply (default 60000; the message stays in the mailbox after)', int('--timeout'))
    .option('--json', 'print the outcome as JSON: seq, version, ticks, reply (or replyBase64)')
    .action(async (name: string, message: string, flags: { timeout?: number; json?: boolean }) => {
      const body = await messageBytes(message);
      let reply: ActorReply;
      try {
        reply = await withFace('actor call', (face) => face.runtime.actors.call(name, body, flags.timeout !== undefined ? { timeoutMs: flags.timeout } : {}));
      } catch (e) {
        if (!isRoostError(e, 'ACTOR')) throw e;
        // The handler's own failure (trap, out of fuel, non-zero return...): the command failed, not Roost.
        process.stderr.write(`roost: ${e.message}\n`);
        setExitCode(1);
        return;
      }
      if (flags.json) {
        process.stdout.write(JSON.stringify(actorCallResult(reply)) + '\n');
        return;
      }
      writeReply(reply.reply);
    });

  actor
    .command('state')
    .description("print an actor's state: its version, root hash and each key and value (text, or base64 when not UTF-8)")
    .argument('<actor>', 'name, id or unique id prefix')
    .option('--version <n>', 'a kept version (see `roost actor versions`) instead of the newest', int('--version'))
    .option('--json', 'print JSON')
    .action(async (name: string, flags: { version?: number; json?: boolean }) => {
      const state = await withFace('actor state', (face) => face.runtime.actors.state(name, flags.version !== undefined ? { version: flags.version } : {}));
      process.stdout.write(flags.json ? JSON.stringify(state, null, 2) + '\n' : describeActorState(state));
    });

  actor
    .command('ls', { isDefault: true })
    .description('list actors: module, version, mailbox, messages handled and failed, last error')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only ids')
    .action(async (flags: { json?: boolean; quiet?: boolean }) => {
      const all = await withFace('actor ls', (face) => face.runtime.actors.list());
      if (flags.json) process.stdout.write(JSON.stringify(all, null, 2) + '\n');
      else if (flags.quiet) process.stdout.write(all.map((a) => `${a.id}\n`).join(''));
      else process.stdout.write(actorTable(all));
    });

  actor
    .command('inspect')
    .description('print an actor as JSON: module, version and root, counters, refs, grants, limits, last error')
    .argument('<actor>', 'name, id or unique id prefix')
    .action(async (name: string) => {
      const info = await withFace('actor inspect', (face) => face.runtime.actors.get(name));
      process.stdout.write(JSON.stringify(info, null, 2) + '\n');
    });

  actor
    .command('versions')
    .description("list an actor's kept state versions: root hash, the message that made each, pinned (snapshots)")
    .argument('<actor>', 'name, id or unique id prefix')
    .option('--json', 'print JSON')
    .action(async (name: string, flags: { json?: boolean }) => {
      const versions = await withFace('actor versions', (face) => face.runtime.actors.versions(name));
      process.stdout.write(flags.json ? JSON.stringify(versions, null, 2) + '\n' : versionTable(versions));
    });

  actor
    .command('snapshot')
    .description("pin an actor's newest state version (kept from pruning); prints the version and its root hash")
    .argument('<actor>', 'name, id or unique id prefix')
    .option('--json', 'print JSON')
    .action(async (name: string, flags: { json?: boolean }) => {
      const v = await withFace('actor snapshot', (face) => face.runtime.actors.snapshot(name));
      process.stdout.write(flags.json ? JSON.stringify(v, null, 2) + '\n' : `${v.version}  ${v.root}\n`);
    });

  actor
    .command('logs')
    .description(
      'print the messages an actor handled: seq, ok or the error, the reply, then the log lines of each; with -f, then new ones as they are handled (until Ctrl-C)',
    )
    .argument('<actor>', 'name, id or unique id prefix')
    .option('-f, --follow', 'keep printing messages as they are handled')
    .option('--after <seq>', 'only messages after this sequence number', int('--after'))
    .option('-n, --tail <n>', 'the last N messages, without --after (default 100)', int('--tail'))
    .option('--json', 'print one JSON object per message')
    .action(async (name: string, flags: { follow?: boolean; after?: number; tail?: number; json?: boolean }) => {
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        await withFace('actor logs', async (face) => {
          await printRecords(face, name, flags, stop.signal);
        });
      } catch (e) {
        if (!stop.signal.aborted) throw e;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });

  actor
    .command('rm')
    .description('remove actors: their state versions and mailbox (messages waiting are dropped)')
    .argument('<actor...>', 'names, ids or unique id prefixes')
    .action(async (names: string[]) => {
      await withFace('actor rm', async (face) => {
        for (const name of names) {
          await face.runtime.actors.remove(name);
          process.stdout.write(`${name}\n`);
        }
      });
    });

  actor
    .command('modules')
    .description('list the deployed modules: digest, size, the grants their imports need, actors using each')
    .option('--json', 'print JSON')
    .action(async (flags: { json?: boolean }) => {
      const all = await withFace('actor modules', (face) => face.runtime.actors.modules());
      process.stdout.write(flags.json ? JSON.stringify(all, null, 2) + '\n' : moduleTable(all));
    });

  actor
    .command('rm-module')
    .description('remove deployed modules no actor uses')
    .argument('<digest...>', 'module digests (sha256:...)')
    .action(async (digests: string[]) => {
      await withFace('actor rm-module', async (face) => {
        for (const digest of digests) {
          if (!DIGEST_RE.test(digest)) throw new RoostError('INVALID_ARGUMENT', `${digest}: a module digest is sha256: and 64 lowercase hex digits`);
          await face.runtime.actors.removeModule(digest);
          process.stdout.write(`${digest}\n`);
        }
      });
    });
}

/** The create options the flags give (the module aside: a file is deployed through the face first). */
export function createOptions(name: string | undefined, flags: CreateFlags): Omit<CreateActorOptions, 'module'> {
  if ((flags.module === undefined) === (flags.from === undefined)) {
    throw new RoostError('INVALID_ARGUMENT', 'give what the actor runs: --module FILE.wasm|sha256:DIGEST, or --from ACTOR[@VERSION] (a fork)');
  }
  const options: Omit<CreateActorOptions, 'module'> = {};
  if (name !== undefined) options.name = name;
  if (flags.from !== undefined) options.from = parseFrom(flags.from);
  if (flags.ref.length > 0) options.refs = flags.ref;
  if (flags.init !== undefined) options.init = flags.init;
  const grants = grantsOf(flags);
  if (grants) options.grants = grants;
  const limits: ActorLimits = {};
  if (flags.fuel !== undefined) limits.fuel = flags.fuel;
  if (flags.memory !== undefined) limits.memoryBytes = parseSize(flags.memory, '--memory');
  if (flags.timeout !== undefined) limits.timeoutMs = flags.timeout;
  if (flags.mailbox !== undefined) limits.mailbox = flags.mailbox;
  if (flags.maxState !== undefined) limits.stateBytes = parseSize(flags.maxState, '--max-state');
  if (Object.keys(limits).length > 0) options.limits = limits;
  if (flags.keepVersions !== undefined) options.keepVersions = flags.keepVersions;
  return options;
}

/** `--grant`, `--fetch-allow` and `--sandbox` as grants (undefined: none given). */
function grantsOf(flags: Pick<CreateFlags, 'grant' | 'fetchAllow' | 'sandbox'>): ActorGrants | undefined {
  const grants: ActorGrants = {};
  for (const g of flags.grant) {
    if (g === 'random' || g === 'clock') grants[g] = true;
    else if (g === 'fetch')
      throw new RoostError('INVALID_ARGUMENT', `--grant fetch: give what it may reach with --fetch-allow RULE (--fetch-allow '*' for all)`);
    else if (g === 'sandbox' || g === 'sandboxes') throw new RoostError('INVALID_ARGUMENT', `--grant ${g}: name the sandboxes it may use with --sandbox ID`);
    else throw new RoostError('INVALID_ARGUMENT', `--grant ${g}: unknown grant (known: ${SIMPLE_GRANTS.join(', ')}; and --fetch-allow, --sandbox)`);
  }
  if (flags.fetchAllow.length > 0) {
    for (const rule of flags.fetchAllow) {
      try {
        parseEgressRule(rule);
      } catch (e) {
        if (isRoostError(e, 'INVALID_ARGUMENT')) throw new RoostError('INVALID_ARGUMENT', `--fetch-allow ${rule}: ${e.message}`, { cause: e });
        throw e;
      }
    }
    grants.fetch = { default: 'deny', allow: flags.fetchAllow };
  }
  if (flags.sandbox.length > 0) grants.sandboxes = flags.sandbox;
  return Object.keys(grants).length > 0 ? grants : undefined;
}

/** `ACTOR` or `ACTOR@VERSION`. */
export function parseFrom(text: string): { actor: string; version?: number } {
  const m = /^(.+)@(\d+)$/.exec(text);
  if (!m) return { actor: text };
  const version = Number(m[2]);
  if (!Number.isSafeInteger(version)) throw new RoostError('INVALID_ARGUMENT', `--from ${text}: the version is out of range`);
  return { actor: m[1]!, version };
}

/** `--module`: a digest as it is, or a file deployed (through the face) for its digest. */
async function moduleDigestOf(actors: ActorsApi, module: string): Promise<string> {
  if (DIGEST_RE.test(module)) return module;
  if (module.startsWith('sha256:')) throw new RoostError('INVALID_ARGUMENT', `--module ${module}: a module digest is sha256: and 64 lowercase hex digits`);
  return (await deployFile(actors, module, '--module')).digest;
}

/** Reads a module file and deploys it; errors name the file. */
async function deployFile(actors: ActorsApi, file: string, flag: string): Promise<ActorModuleInfo> {
  const bytes = await readModuleFile(file, flag);
  try {
    return await actors.deploy(bytes);
  } catch (e) {
    if (isRoostError(e, 'INVALID_ARGUMENT')) throw new RoostError('INVALID_ARGUMENT', `${file}: ${e.message}`, { cause: e, details: e.details });
    throw e;
  }
}

/** A module file's bytes, refusing one over the module limit before reading it all. */
async function readModuleFile(file: string, flag: string): Promise<Uint8Array> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new RoostError('NOT_FOUND', `${flag} ${file}: no such file`, { cause: e, details: { path: file } });
    if (code === 'EISDIR') throw new RoostError('INVALID_ARGUMENT', `${flag} ${file}: a directory, not a .wasm file`, { cause: e });
    throw e;
  }
  try {
    const info = await handle.stat();
    if (info.isDirectory()) throw new RoostError('INVALID_ARGUMENT', `${flag} ${file}: a directory, not a .wasm file`);
    if (info.size > MAX_ACTOR_MODULE_BYTES) {
      throw new RoostError('INVALID_ARGUMENT', `${flag} ${file}: ${info.size} bytes, over the module limit of ${MAX_ACTOR_MODULE_BYTES}`, {
        details: { maxBytes: MAX_ACTOR_MODULE_BYTES },
      });
    }
    return new Uint8Array(await handle.readFile());
  } finally {
    await handle.close();
  }
}

/** A message argument: its UTF-8 bytes, or stdin's for `-` (at most a message's limit). */
async function messageBytes(message: string): Promise<Uint8Array> {
  if (message !== '-') return new TextEncoder().encode(message);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).byteLength;
    if (size > MAX_ACTOR_MESSAGE_BYTES) {
      throw new RoostError('INVALID_ARGUMENT', `stdin: a message is at most ${MAX_ACTOR_MESSAGE_BYTES} bytes`, {
        details: { maxBytes: MAX_ACTOR_MESSAGE_BYTES },
      });
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** A reply as it is (bytes), a newline added only for a terminal when it does not end with one. */
function writeReply(reply: Uint8Array | null): void {
  if (reply === null || reply.length === 0) return;
  process.stdout.write(reply);
  if (process.stdout.isTTY === true && reply[reply.length - 1] !== 0x0a) process.stdout.write('\n');
}

/** Records a page of history holds, when `logs --after` reads all that follow. */
const PAGE = 1000;

/**
 * `roost actor logs`: the last `tail` records (or every one after `after`),
 * then, following, new ones until `signal` aborts.
 */
async function printRecords(face: Face, name: string, flags: { follow?: boolean; after?: number; tail?: number; json?: boolean }, signal: AbortSignal) {
  const actors = face.runtime.actors;
  const print = (r: ActorMessageRecord) => process.stdout.write(flags.json ? JSON.stringify(r) + '\n' : describeRecord(r));
  let after = flags.after ?? 0;
  if (flags.after === undefined) {
    for await (const r of actors.messages(name, { limit: flags.tail ?? 100, signal })) {
      print(r);
      after = r.seq;
    }
  } else {
    for (let n = PAGE; n === PAGE;) {
      n = 0;
      for await (const r of actors.messages(name, { after, limit: PAGE, signal })) {
        print(r);
        after = r.seq;
        n++;
      }
    }
  }
  if (!flags.follow) return;
  // What was handled since is in the history the stream starts with, then each new record as it is handled.
  for await (const r of actors.messages(name, { after, follow: true, signal })) print(r);
}
