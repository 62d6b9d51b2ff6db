import { SandboxStatusSchema, type RuntimeMetrics } from '@roost/api';

/** The Content-Type of the Prometheus text exposition format. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

type Labels = Record<string, string>;

/** Escapes a label value as the exposition format requires (backslash, quote, newline). */
function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function sample(name: string, labels: Labels, value: number): string {
  const l = Object.entries(labels);
  const rendered = l.length ? `{${l.map(([k, v]) => `${k}="${labelValue(v)}"`).join(',')}}` : '';
  return `${name}${rendered} ${Number.isFinite(value) ? value : 0}`;
}

/** Renders runtime metrics in the Prometheus text exposition format (version 0.0.4). */
export function prometheusText(m: RuntimeMetrics): string {
  const out: string[] = [];
  const family = (name: string, type: 'counter' | 'gauge', help: string, samples: [Labels, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) out.push(sample(name, labels, value));
  };
  family('roost_sandboxes_created_total', 'counter', 'Sandboxes created since the runtime started.', [[{}, m.sandboxesCreated]]);
  family('roost_sandboxes_destroyed_total', 'counter', 'Sandboxes removed since the runtime started.', [[{}, m.sandboxesDestroyed]]);
  family('roost_execs_total', 'counter', 'Commands started since the runtime started.', [[{}, m.execs]]);
  family('roost_exec_bytes_total', 'counter', 'Bytes of command input and output since the runtime started.', [
    [{ stream: 'stdin' }, m.execBytes.stdin],
    [{ stream: 'stdout' }, m.execBytes.stdout],
    [{ stream: 'stderr' }, m.execBytes.stderr],
  ]);
  family(
    'roost_sandboxes',
    'gauge',
    'Sandboxes by status.',
    SandboxStatusSchema.options.map((status) => [{ status }, m.sandboxes[status] ?? 0]),
  );
  family('roost_uptime_seconds', 'gauge', 'Seconds since the runtime started.', [[{}, m.uptimeSeconds]]);
  const per = m.perSandbox;
  family(
    'roost_sandbox_cpu_seconds_total',
    'counter',
    'CPU seconds used by the sandbox VM (user + system).',
    per.map((s) => [{ sandbox: s.id }, s.cpuSeconds]),
  );
  family(
    'roost_sandbox_memory_rss_bytes',
    'gauge',
    'Resident memory of the sandbox VM.',
    per.map((s) => [{ sandbox: s.id }, s.memoryRssBytes]),
  );
  family(
    'roost_sandbox_memory_pss_bytes',
    'gauge',
    'Proportional memory of the sandbox VM (shared pages split between the processes sharing them).',
    per.filter((s) => s.memoryPssBytes !== null).map((s) => [{ sandbox: s.id }, s.memoryPssBytes!]),
  );
  family(
    'roost_sandbox_jailed',
    'gauge',
    "1 when the sandbox's VMM runs in Roost's jail, 0 when it runs unconfined.",
    per.map((s) => [{ sandbox: s.id }, s.jailed ? 1 : 0]),
  );
  family(
    'roost_sandbox_memory_limit_bytes',
    'gauge',
    "The memory limit of the sandbox's VMM (guest RAM and its own), when confined.",
    per.filter((s) => s.memoryLimitBytes !== null).map((s) => [{ sandbox: s.id }, s.memoryLimitBytes!]),
  );
  family(
    'roost_sandbox_execs_total',
    'counter',
    'Commands started in the sandbox.',
    per.map((s) => [{ sandbox: s.id }, s.execs]),
  );
  return out.join('\n') + '\n';
}
