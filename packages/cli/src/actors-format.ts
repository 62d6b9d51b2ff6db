import type { ActorInfo, ActorMessageRecord, ActorModuleInfo, ActorState, ActorVersion } from '@roost/api';
import { ago, bytes, formatTable } from './format.js';

/*
 * How `roost actor ...` prints actors, states, versions, modules and
 * handled messages (./actors.ts): tables and lines; `--json` prints the
 * contract's objects instead.
 */

/** `sha256:0123456789ab` (the digest's first 12 hex digits). */
export function shortDigest(digest: string): string {
  return digest.replace(/^sha256:/, '').slice(0, 12);
}

/** True when the text has a control character (C0 or DEL). */
function hasControl(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

/** A text for one table cell or line: as it is, or JSON-quoted when it has control characters (a newline, a tab) or is empty. */
function cell(text: string, max = 0): string {
  const shown = text === '' || hasControl(text) ? JSON.stringify(text) : text;
  return max > 0 && shown.length > max ? `${shown.slice(0, max - 1)}…` : shown;
}

/** `roost actor ls`. */
export function actorTable(all: ActorInfo[]): string {
  return formatTable(
    ['ID', 'NAME', 'MODULE', 'VERSION', 'MAILBOX', 'HANDLED', 'FAILED', 'CREATED', 'LAST ERROR'],
    all.map((a) => [
      a.id,
      a.name ?? '-',
      shortDigest(a.module),
      String(a.version),
      String(a.mailbox),
      String(a.handled),
      String(a.failed),
      ago(a.createdAt),
      a.lastError ? `${a.lastError.reason} ${ago(a.lastError.at)}: ${cell(a.lastError.message, 60)}` : '-',
    ]),
  );
}

/** `roost actor state`: a head of version, root and size, then the keys and values (base64 ones marked). */
export function describeActorState(s: ActorState): string {
  const head =
    `actor ${s.actor}  version ${s.version}  root ${s.root}\n` + `${s.size.entries} ${s.size.entries === 1 ? 'entry' : 'entries'}, ${bytes(s.size.bytes)}\n`;
  if (s.entries.length === 0) return head;
  const body = formatTable(
    ['KEY', 'VALUE'],
    s.entries.map((e) => [
      e.keyEncoding === 'base64' ? `(base64) ${e.key}` : cell(e.key),
      e.valueEncoding === 'base64' ? `(base64) ${e.value}` : cell(e.value, 200),
    ]),
  );
  return `${head}\n${body}`;
}

/** `roost actor versions`. */
export function versionTable(all: ActorVersion[]): string {
  return formatTable(
    ['VERSION', 'ROOT', 'MESSAGE', 'PINNED', 'AT'],
    all.map((v) => [String(v.version), v.root, v.message === null ? '-' : String(v.message), v.pinned ? 'yes' : 'no', v.at]),
  );
}

/** `roost actor modules`. */
export function moduleTable(all: ActorModuleInfo[]): string {
  return formatTable(
    ['DIGEST', 'SIZE', 'ACTORS', 'GRANTS NEEDED', 'CREATED'],
    all.map((m) => [m.digest, bytes(m.size), String(m.actors), m.grantsNeeded.join(',') || '-', ago(m.createdAt)]),
  );
}

/**
 * One handled message, as `roost actor logs` prints it: a line with its
 * seq, kind, sender, outcome and reply, then its log lines indented.
 */
export function describeRecord(r: ActorMessageRecord): string {
  const parts = [`#${r.seq}`, r.at, r.kind === 'message' ? `from ${r.from ?? 'outside'}` : r.kind];
  if (r.ok) {
    parts.push(`ok v${r.version ?? '?'}`, `${r.ticks} ticks`);
    if (r.replySize !== null) {
      const shown = r.reply !== undefined ? cell(r.reply, 200) : `(base64) ${r.replyBase64 ?? ''}`;
      const cut = r.replySize > 4096 ? ` (${r.replySize} bytes)` : '';
      parts.push(`reply ${shown}${cut}`);
    }
  } else {
    parts.push(`error ${r.error ? `(${r.error.reason}): ${cell(r.error.message, 200)}` : ''}`.trimEnd(), `${r.ticks} ticks`);
  }
  return parts.join('  ') + '\n' + r.logs.map((l) => `    ${cell(l)}\n`).join('');
}
