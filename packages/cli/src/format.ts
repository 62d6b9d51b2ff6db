import { EVENT_TYPES, type RoostEvent } from '@roost/api';

/** A plain text table: a header row and left-aligned columns two spaces apart. */
export function formatTable(head: string[], body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => (r[i] ?? '').length)));
  return (
    [head, ...body]
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

/** "5s ago", "3m ago", "2h ago", "4d ago". */
export function ago(iso: string): string {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

/** Bytes in decimal units, as registries and docker report them: "5.2MB". */
export function bytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)}${units[u]}`;
}

/** The width of the type column of events: the longest type (`deployment.rolledback`). */
const EVENT_TYPE_WIDTH = Math.max(...EVENT_TYPES.map((t) => t.length));

/** One event as `roost events` prints it: time, id, type, its sandbox (or image), then its data as key=value. */
export function describeEvent(e: RoostEvent): string {
  const subject = e.sandboxId ?? e.imageId?.replace(/^sha256:/, '').slice(0, 12) ?? '-';
  const data = Object.entries(e.data ?? {})
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${e.time}  ${String(e.id).padStart(6)}  ${e.type.padEnd(EVENT_TYPE_WIDTH)}  ${subject}${data ? `  ${data}` : ''}\n`;
}
