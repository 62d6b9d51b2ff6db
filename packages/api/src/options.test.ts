import { describe, expect, it } from 'vitest';
import { MAX_CPUS, MAX_DISK_MIB, MAX_PORTS, MIN_MEMORY_MIB } from './limits.js';
import { CreateOptionsSchema, parseInput, RunOptionsSchema } from './options.js';
import { CreateSandboxRequestSchema, ExecRequestSchema } from './schemas.js';

const fails = (schema: Parameters<typeof parseInput>[0], value: unknown, field: RegExp) => expect(() => parseInput(schema, value, 'options')).toThrow(field);

describe('the call schemas', () => {
  it('enforce the named limits, the same for the wire and the call', () => {
    for (const schema of [CreateSandboxRequestSchema, CreateOptionsSchema]) {
      fails(schema, { cpus: MAX_CPUS + 1 }, /cpus/);
      fails(schema, { memoryMiB: MIN_MEMORY_MIB - 1 }, /memoryMiB/);
      fails(schema, { diskSizeMiB: MAX_DISK_MIB + 1 }, /diskSizeMiB/);
      fails(schema, { ports: Array.from({ length: MAX_PORTS + 1 }, () => 80) }, /ports/);
      fails(schema, { colour: 'red' }, /colour/);
      expect(parseInput(schema, { cpus: MAX_CPUS, memoryMiB: MIN_MEMORY_MIB }, 'options')).toMatchObject({ cpus: MAX_CPUS });
    }
  });

  it('take what only a call carries: a signal, callbacks, streams', () => {
    const ac = new AbortController();
    expect(() => parseInput(CreateOptionsSchema, { signal: ac.signal, onPullProgress: () => {} }, 'options')).not.toThrow();
    fails(CreateSandboxRequestSchema, { signal: ac.signal }, /signal/);
    async function* chunks() {
      yield 'x';
    }
    for (const stdin of ['text', new Uint8Array(1), chunks(), true]) {
      expect(() => parseInput(RunOptionsSchema, { stdin, onStdout: () => {} }, 'command options')).not.toThrow();
    }
    fails(RunOptionsSchema, { stdin: 42 }, /stdin/);
    fails(RunOptionsSchema, { pty: { rows: 0 } }, /pty\.rows/);
    fails(ExecRequestSchema, { cmd: 'ls', onStdout: () => {} }, /onStdout/);
  });

  it('name every offending field in details', () => {
    try {
      parseInput(CreateOptionsSchema, { cpus: 0, memoryMiB: 1 }, 'sandbox options');
      expect.unreachable();
    } catch (e) {
      expect((e as { details: { fields: { path: string }[] } }).details.fields.map((f) => f.path).sort()).toEqual(['cpus', 'memoryMiB']);
    }
  });
});
