import { open, stat } from 'node:fs/promises';
import type { Command } from 'commander';
import {
  MAX_JSON_BODY,
  MAX_REPLICAS,
  parseDeploymentSpec,
  RoostError,
  sleep,
  type DeploymentInfo,
  type DeploymentSpec,
  type DeploymentsApi,
  type HealthCheck,
  type ReplicaInfo,
  type ServicePortBinding,
} from '@roost/api';
import { int } from './args.js';
import type { Face, WithFace } from './connect.js';
import { ago, describeEvent, formatTable } from './format.js';

/*
 * `roost deploy -f FILE` and `roost deployments ls|inspect|scale|rollback|rm`
 * (docs/deployments.md): thin over `runtime.deployments`. A deployment needs
 * a live owner that keeps its replicas running, so the commands that change
 * one make sure a daemon owns the home first (`ensureOwner`, as `pool
 * create` does); with ROOST_AUTO_DAEMON=0 they write the desired state
 * through an embedded runtime that does not reconcile, and say that nothing
 * runs it until an owner opens the home.
 */

/** How often a waiting command looks at the deployment. */
const POLL_MS = 200;
/** How long `--wait` waits for a rollout by default. */
const DEFAULT_WAIT_MS = 120_000;
/** Events `inspect` shows (the newest; the deployment keeps its last 10). */
const INSPECT_EVENTS = 10;

/** Flags of the commands that can wait for the rollout. */
interface WaitFlags {
  wait?: boolean;
  timeout: number;
  json?: boolean;
}

/**
 * @param ensureOwner makes sure a daemon owns the home (started in the
 * background when none runs; ROOST_AUTO_DAEMON=0 opts out), so that a
 * deployment keeps running after the command exits.
 */
export function addDeploymentCommands(program: Command, withFace: WithFace, ensureOwner: (reason: string, by: string) => Promise<void>): void {
  program
    .command('deploy')
    .description('create or change a deployment from a spec file (YAML or JSON): replicas kept running, health-checked, behind service ports')
    .requiredOption('-f, --file <file>', 'the spec (see docs/deployments.md); - reads it from stdin')
    .option('--wait', 'wait until the change has rolled out and every replica is healthy')
    .option('-t, --timeout <ms>', 'how long --wait waits', int('--timeout'), DEFAULT_WAIT_MS)
    .option('--json', 'print the deployment as JSON')
    .action(async (flags: WaitFlags & { file: string }) => {
      const source = flags.file === '-' ? 'stdin' : flags.file;
      const spec = parseDeploymentSpec(await readSpecText(flags.file), source);
      await ensureOwner(`deployment ${spec.name}`, 'roost deploy');
      const info = await withFace('deploy', (face) => change(face, spec.name, flags, (d) => d.apply(spec)));
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : summary(info));
    });

  const deployments = program
    .command('deployments')
    .alias('deployment')
    .description('manage deployments (`roost deploy -f FILE` makes them): list, inspect, scale, roll back, remove');

  deployments
    .command('ls', { isDefault: true })
    .description('list deployments with their replicas, rollout and service ports')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only names')
    .action(async (flags: { json?: boolean; quiet?: boolean }) => {
      const all = await withFace('deployments', (face) => face.runtime.deployments.list());
      if (flags.json) process.stdout.write(JSON.stringify(all, null, 2) + '\n');
      else if (flags.quiet) process.stdout.write(all.map((d) => `${d.name}\n`).join(''));
      else process.stdout.write(deploymentTable(all));
    });

  deployments
    .command('inspect')
    .description('show a deployment: its spec, each replica (state, restarts, last probe, last exit) and its last events')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(async (name: string, flags: { json?: boolean }) => {
      const info = await withFace('deployments', (face) => face.runtime.deployments.get(name));
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : describeDeployment(info));
    });

  deployments
    .command('scale')
    .description('set how many replicas a deployment keeps (extra ones are drained and removed, missing ones made)')
    .argument('<name>')
    .argument('<replicas>', `the new count (0-${MAX_REPLICAS})`, int('REPLICAS'))
    .option('--wait', 'wait until the deployment has that many healthy replicas')
    .option('-t, --timeout <ms>', 'how long --wait waits', int('--timeout'), DEFAULT_WAIT_MS)
    .option('--json', 'print the deployment as JSON')
    .action(async (name: string, replicas: number, flags: WaitFlags) => {
      await ensureOwner(`deployment ${name}`, 'roost deployments scale');
      const info = await withFace('deployments scale', (face) => change(face, name, flags, (d) => d.scale(name, replicas)));
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : summary(info));
    });

  deployments
    .command('rollback')
    .description('go back to the spec before the last change (keeping the replica count); a second rollback undoes it')
    .argument('<name>')
    .option('--wait', 'wait until the rollback has rolled out and every replica is healthy')
    .option('-t, --timeout <ms>', 'how long --wait waits', int('--timeout'), DEFAULT_WAIT_MS)
    .option('--json', 'print the deployment as JSON')
    .action(async (name: string, flags: WaitFlags) => {
      await ensureOwner(`deployment ${name}`, 'roost deployments rollback');
      const info = await withFace('deployments rollback', (face) => change(face, name, flags, (d) => d.rollback(name)));
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : summary(info));
    });

  deployments
    .command('rm')
    .description('remove deployments: their service ports close and their replicas are removed')
    .argument('<name...>')
    .action(async (names: string[]) => {
      await withFace('deployments rm', async (face) => {
        for (const name of names) {
          await face.runtime.deployments.remove(name);
          process.stdout.write(`${name}\n`);
        }
      });
    });
}

/**
 * Makes a change through the face, then waits for it to roll out when
 * asked. Through an embedded runtime (no daemon, ROOST_AUTO_DAEMON=0) the
 * change is only written: that is said, and `--wait` is refused before
 * anything changes (nothing would ever roll it out).
 */
async function change(face: Face, name: string, flags: WaitFlags, act: (d: DeploymentsApi) => Promise<DeploymentInfo>): Promise<DeploymentInfo> {
  if (face.kind === 'embedded' && flags.wait) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `--wait: no daemon runs for the home, so nothing would roll deployment ${name} out while this command waits: start one with \`roost serve\` (or leave ROOST_AUTO_DAEMON unset)`,
    );
  }
  const since = Date.now();
  const info = await act(face.runtime.deployments);
  if (face.kind === 'embedded') process.stderr.write(ownerlessNote(info.name));
  return flags.wait ? waitForRollout(face.runtime.deployments, info.name, since, flags.timeout) : info;
}

/** The note of a change written without a live owner. */
export function ownerlessNote(name: string): string {
  return `roost: note: no daemon runs, so nothing runs deployment ${name} until a daemon (\`roost serve\`) or an embedded runtime opens the home\n`;
}

/** True when a deployment's replicas match its spec: the generation rolled out, every replica current and healthy. */
export function rolledOut(d: DeploymentInfo): boolean {
  return (
    d.observedGeneration >= d.generation &&
    d.replicas === d.spec.replicas &&
    d.updatedReplicas === d.spec.replicas &&
    d.healthyReplicas === d.spec.replicas &&
    d.members.length === d.spec.replicas
  );
}

/**
 * Waits until the deployment has rolled out (`rolledOut`). A reconcile
 * that failed since `since` ends the wait (INVALID_STATE with its error;
 * the daemon retries in the background), and so does `timeoutMs` (TIMEOUT).
 */
async function waitForRollout(deployments: DeploymentsApi, name: string, since: number, timeoutMs: number): Promise<DeploymentInfo> {
  for (;;) {
    const info = await deployments.get(name);
    if (rolledOut(info)) return info;
    const error = info.lastError;
    if (error && Date.parse(error.at) >= since - 1_000) {
      throw new RoostError(
        'INVALID_STATE',
        `deployment ${name} has ${progress(info)}: ${error.code}: ${error.message} (the daemon retries in the background; see \`roost deployments inspect ${name}\`)`,
        { details: { deployment: name, code: error.code } },
      );
    }
    if (Date.now() - since > timeoutMs) {
      throw new RoostError(
        'TIMEOUT',
        `deployment ${name} has ${progress(info)} after ${timeoutMs} ms (raise --timeout; see \`roost deployments inspect ${name}\`)`,
        { details: { deployment: name } },
      );
    }
    await sleep(POLL_MS);
  }
}

/** Reads a spec file (or stdin for `-`), refusing one larger than a request body may be. */
async function readSpecText(file: string): Promise<string> {
  const tooLarge = () =>
    new RoostError('INVALID_ARGUMENT', `${file === '-' ? 'stdin' : file}: a deployment spec is at most ${MAX_JSON_BODY} bytes`, {
      details: { maxBytes: MAX_JSON_BODY },
    });
  if (file !== '-') {
    if ((await stat(file)).size > MAX_JSON_BODY) throw tooLarge();
    const handle = await open(file, 'r');
    try {
      return await handle.readFile('utf8');
    } finally {
      await handle.close();
    }
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).byteLength;
    if (size > MAX_JSON_BODY) throw tooLarge();
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// ---- formatting ---------------------------------------------------------------------

/** `127.0.0.1:8080 -> 8000`; a port the owner has yet to choose shows as `127.0.0.1:(any free port) -> 8000`. */
export function formatServicePort(p: ServicePortBinding): string {
  return `${p.hostIp}:${p.hostPort === 0 ? '(any free port)' : p.hostPort} -> ${p.guestPort}`;
}

/** "1/2 healthy, 1 updating, 1 removing": where a deployment's replicas are. */
function progress(d: DeploymentInfo): string {
  const parts = [`${d.healthyReplicas}/${d.spec.replicas} replicas healthy`];
  if (d.updatedReplicas < d.replicas) parts.push(`${d.replicas - d.updatedReplicas} of an older revision`);
  if (d.observedGeneration < d.generation) parts.push(`generation ${d.generation} rolling out`);
  return parts.join(', ');
}

/** What `deploy`, `scale` and `rollback` print: the name, generation and replicas, then one line per service port. */
export function summary(d: DeploymentInfo): string {
  const head = `${d.name}: generation ${d.generation}, ${d.healthyReplicas}/${d.spec.replicas} replicas healthy${
    d.observedGeneration < d.generation ? ' (rolling out)' : ''
  }\n`;
  return head + d.ports.map((p) => `  ${formatServicePort(p)}\n`).join('');
}

/** `roost deployments ls`. */
export function deploymentTable(all: DeploymentInfo[]): string {
  return formatTable(
    ['NAME', 'REPLICAS', 'UP-TO-DATE', 'GENERATION', 'PORTS', 'AGE'],
    all.map((d) => [
      d.name,
      `${d.healthyReplicas}/${d.spec.replicas}`,
      String(d.updatedReplicas),
      `${d.observedGeneration}/${d.generation}`,
      d.ports.map((p) => formatServicePort(p).replace(' -> ', '->')).join(',') || '-',
      ago(d.createdAt).replace(/ ago$/, ''),
    ]),
  );
}

/** A spec's command as a user would type it. */
function commandText(command: DeploymentSpec['command']): string {
  if (typeof command === 'string') return command;
  return command.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** The sandbox options a spec sets, in a line: `image alpine:3.20, 2 cpus, 512 MiB`. */
function sandboxText(s: DeploymentSpec['sandbox']): string {
  const parts: string[] = [];
  if (s.image !== undefined) parts.push(`image ${s.image}`);
  if (s.template !== undefined) parts.push(`template ${s.template}`);
  if (s.snapshot !== undefined) parts.push(`snapshot ${s.snapshot}`);
  if (s.cpus !== undefined) parts.push(`${s.cpus} cpu${s.cpus === 1 ? '' : 's'}`);
  if (s.memoryMiB !== undefined) parts.push(`${s.memoryMiB} MiB`);
  if (s.diskSizeMiB !== undefined) parts.push(`disk ${s.diskSizeMiB} MiB`);
  if (s.network !== undefined) parts.push(`network ${s.network}`);
  if (s.egress !== undefined) parts.push('an egress policy');
  if (s.env !== undefined && Object.keys(s.env).length > 0) parts.push(`env ${Object.keys(s.env).join(',')}`);
  return parts.join(', ') || 'the defaults (Roost base filesystem)';
}

/** `http :8000/ every 5000 ms (timeout 2000 ms, unhealthy after 3 failures)`. */
function healthText(h: HealthCheck | undefined): string {
  if (!h) return '- (healthy once its workload starts)';
  const what = h.http ? `http :${h.http.port}${h.http.path}` : h.tcp ? `tcp :${h.tcp.port}` : `exec ${commandText(h.exec!)}`;
  const start = h.startPeriodMs > 0 ? `, start period ${h.startPeriodMs} ms` : '';
  return `${what} every ${h.intervalMs} ms (timeout ${h.timeoutMs} ms, unhealthy after ${h.retries} failures${start})`;
}

function replicaRows(members: ReplicaInfo[]): string {
  return formatTable(
    ['ID', 'REVISION', 'STATE', 'RESTARTS', 'STARTED', 'LAST PROBE', 'LAST EXIT'],
    members.map((r) => [
      r.id,
      `${r.revision}${r.current ? '' : ' (old)'}`,
      r.state,
      String(r.restarts),
      r.startedAt ? ago(r.startedAt) : '-',
      r.lastProbe ? `${r.lastProbe.ok ? 'ok' : `failed (${r.lastProbe.failures}x)`}: ${oneLine(r.lastProbe.detail)}` : '-',
      r.lastExit ? `${exitText(r.lastExit)} ${ago(r.lastExit.at)}` : '-',
    ]),
  );
}

function exitText(e: NonNullable<ReplicaInfo['lastExit']>): string {
  if (e.signal) return `signal ${e.signal}`;
  if (e.exitCode !== null) return `exit ${e.exitCode}`;
  return 'ended';
}

function oneLine(s: string, max = 60): string {
  const line = s.replace(/\s+/g, ' ').trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** `roost deployments inspect NAME`: the spec in short, the status, each replica, the last events. */
export function describeDeployment(d: DeploymentInfo): string {
  const s = d.spec;
  const when = (iso: string) => `${iso} (${ago(iso)})`;
  const labels = Object.entries(s.labels ?? {}).map(([k, v]) => `${k}=${v}`);
  const rows: [string, string][] = [
    ['Name', d.name],
    ['Generation', `${d.generation} (observed ${d.observedGeneration}${d.observedGeneration < d.generation ? ': rolling out' : ''})`],
    ['Revision', d.revision],
    [
      'Replicas',
      `${s.replicas} wanted: ${d.replicas} existing, ${d.healthyReplicas} healthy, ${d.updatedReplicas} up to date` +
        (d.members.length > d.replicas ? ` (${d.members.length - d.replicas} being made or removed)` : ''),
    ],
    ['Command', commandText(s.command)],
    ...(s.workingDir !== undefined ? [['Working dir', s.workingDir] as [string, string]] : []),
    ...(s.user !== undefined ? [['User', s.user] as [string, string]] : []),
    ['Sandbox', sandboxText(s.sandbox)],
    ['Ports', d.ports.length ? `${d.ports.map(formatServicePort).join(', ')} (${s.balance})` : '-'],
    ['Health', healthText(s.health)],
    ['Restart', s.restart],
    ['Update', `maxSurge ${s.update.maxSurge}, maxUnavailable ${s.update.maxUnavailable}`],
    ['Labels', labels.join(', ') || '-'],
    ['Rollback', d.canRollback ? 'possible (`roost deployments rollback`)' : '- (not changed since it was created)'],
    ['Created', when(d.createdAt)],
    ['Updated', when(d.updatedAt)],
    [
      'Last error',
      d.lastError
        ? `${d.lastError.code}: ${d.lastError.message} (${d.lastError.failures}x, ${ago(d.lastError.at)}${d.lastError.retryAt ? `; retried at ${d.lastError.retryAt}` : ''})`
        : '-',
    ],
  ];
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  let out = rows.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}\n`).join('');
  out += `\nReplicas:\n${d.members.length ? indent(replicaRows(d.members)) : '  (none)\n'}`;
  for (const r of d.members) {
    if (r.lastExit?.output) out += `\nLast output of ${r.id} (${exitText(r.lastExit)}):\n${indent(tail(r.lastExit.output, 5))}`;
  }
  const events = d.events.slice(-INSPECT_EVENTS);
  out += `\nEvents:\n${events.length ? indent(events.map(describeEvent).join('')) : '  (none)\n'}`;
  return out;
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => (l ? `  ${l}` : l))
    .join('\n');
}

/** The last `n` lines of a text, ending with a newline. */
function tail(text: string, n: number): string {
  const lines = text.replace(/\n$/, '').split('\n');
  return lines.slice(-n).join('\n') + '\n';
}
