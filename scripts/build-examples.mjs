#!/usr/bin/env node
/**
 * Builds the example actors (`npm run build:examples`): each directory
 * examples/actors/NAME holds NAME.ts (AssemblyScript, compiled with asc
 * against packages/actors/sdk/roost.ts) or NAME.wat (WebAssembly text,
 * assembled with wabt), built to examples/actors/NAME/NAME.wasm.
 *
 * An example whose .wasm is newer than its sources (and the SDK, for
 * AssemblyScript) is skipped. Each built module is checked against the
 * actor ABI (docs/actors.md): it exports `memory` and `handle` and imports
 * nothing but the "roost" functions and AssemblyScript's `env.abort`.
 * Prints one line per example built; exits 1 with the compiler's message
 * on a failure. Works from any directory.
 *
 * Usage: node scripts/build-examples.mjs [--force] [NAME ...]
 */
/* global WebAssembly */
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const examplesDir = join(root, 'examples', 'actors');
const sdkDir = join(root, 'packages', 'actors', 'sdk');

/** The imports the ABI allows (docs/actors.md): module -> names. */
const ABI_IMPORTS = new Map([
  [
    'roost',
    new Set([
      'msg_read',
      'state_get',
      'state_set',
      'state_delete',
      'reply',
      'sender',
      'send',
      'create',
      'timer',
      'time',
      'log',
      'result_read',
      'random',
      'clock',
      'fetch',
      'sandbox_exec',
    ]),
  ],
  ['env', new Set(['abort'])],
]);

/** asc options: no GC (a fresh instance per message), optimized for speed and size (-O3z: about a third smaller than -O3). Assertions stay: a failed one aborts the message. */
const ASC_OPTIONS = ['--runtime', 'stub', '-O3z', '--noColors'];

const args = process.argv.slice(2);
const force = args.includes('--force');
const only = args.filter((a) => !a.startsWith('--'));
const show = (path) => relative(root, path) || '.';

/** The newest modification time among `files` (ms). */
function newest(files) {
  return Math.max(...files.map((f) => statSync(f).mtimeMs));
}

/** Source files (.ts/.wat) under `dir`, recursively. */
function sources(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sources(path));
    else if (/\.(ts|wat)$/.test(entry.name)) out.push(path);
  }
  return out;
}

/** Throws unless `binary` has the ABI's exports and only its imports. */
function checkAbi(binary) {
  const module = new WebAssembly.Module(binary);
  const problems = [];
  for (const { module: from, name, kind } of WebAssembly.Module.imports(module)) {
    if (kind !== 'function' || !ABI_IMPORTS.get(from)?.has(name)) problems.push(`imports ${kind} ${from}.${name}, which is not in the actor ABI`);
  }
  const exports = new Map(WebAssembly.Module.exports(module).map((e) => [e.name, e.kind]));
  if (exports.get('memory') !== 'memory') problems.push('does not export its memory as `memory`');
  if (exports.get('handle') !== 'function') problems.push('does not export `handle`');
  if (problems.length > 0) throw new Error(problems.join('; '));
}

async function buildAssemblyScript(entry) {
  const { default: asc } = await import('assemblyscript/asc');
  let binary = null;
  const result = await asc.main([relative(root, entry), '--outFile', 'out.wasm', '--baseDir', root, ...ASC_OPTIONS], {
    writeFile: (_name, contents) => {
      binary = contents;
    },
  });
  if (result.error) throw new Error(`${result.stderr.toString().trim() || result.error.message}`);
  if (binary === null) throw new Error('asc wrote no binary');
  return binary;
}

let wabt = null;
async function buildWat(entry) {
  if (wabt === null) wabt = await (await import('wabt')).default();
  let module;
  try {
    module = wabt.parseWat(relative(root, entry), readFileSync(entry, 'utf8'));
  } catch (err) {
    throw new Error(err instanceof Error ? err.message : String(err));
  }
  try {
    module.resolveNames();
    module.validate();
    return module.toBinary({}).buffer;
  } finally {
    module.destroy();
  }
}

let built = 0;
let upToDate = 0;
let failed = 0;
const names = readdirSync(examplesDir, { withFileTypes: true })
  .filter((e) => e.isDirectory() && (only.length === 0 || only.includes(e.name)))
  .map((e) => e.name)
  .sort();
for (const name of only) {
  if (names.includes(name)) continue;
  console.error(`build-examples: no example ${name} in ${show(examplesDir)}`);
  failed++;
}

for (const name of names) {
  const dir = join(examplesDir, name);
  const ts = join(dir, `${name}.ts`);
  const wat = join(dir, `${name}.wat`);
  const kind = statSync(ts, { throwIfNoEntry: false }) ? 'ts' : statSync(wat, { throwIfNoEntry: false }) ? 'wat' : null;
  if (kind === null) {
    console.error(`build-examples: ${show(dir)} has neither ${name}.ts nor ${name}.wat`);
    failed++;
    continue;
  }
  const out = join(dir, `${name}.wasm`);
  const inputs = kind === 'ts' ? [...sources(dir), ...sources(sdkDir)] : sources(dir);
  const outTime = statSync(out, { throwIfNoEntry: false })?.mtimeMs ?? -1;
  if (!force && outTime > newest(inputs)) {
    upToDate++;
    continue;
  }
  const started = performance.now();
  try {
    const binary = kind === 'ts' ? await buildAssemblyScript(ts) : await buildWat(wat);
    checkAbi(binary);
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${out}.tmp`, binary);
    renameSync(`${out}.tmp`, out);
    const ms = Math.round(performance.now() - started);
    console.log(`build-examples: ${show(out)} (${kind === 'ts' ? 'AssemblyScript' : 'WAT'}, ${binary.length} bytes, ${ms} ms)`);
    built++;
  } catch (err) {
    console.error(`build-examples: ${name} failed:\n${err instanceof Error ? err.message : String(err)}`);
    failed++;
  }
}

if (built === 0 && failed === 0) console.log(`build-examples: ${upToDate} example(s) up to date`);
process.exit(failed > 0 ? 1 : 0);
