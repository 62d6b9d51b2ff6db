import { CommanderError } from 'commander';
import { describe, expect, it } from 'vitest';
import { RoostError } from '@roost/api';
import { z } from 'zod';
import { asExpectedError, namingFlag, reportError } from './errors.js';

function report(e: unknown, env: NodeJS.ProcessEnv = {}): { code: number; out: string } {
  let out = '';
  const code = reportError(e, (s) => (out += s), env);
  return { code, out };
}

const STACK_FRAME = /^\s+at /m;

describe('reportError', () => {
  it('prints a RoostError as one line, exit 125', () => {
    const { code, out } = report(new RoostError('NOT_FOUND', 'no sandbox abc'));
    expect(code).toBe(125);
    expect(out).toBe('roost: no sandbox abc\n');
  });

  it('prints system errors (ENOENT, EACCES, ECONNREFUSED) as one line without a stack', () => {
    for (const [errno, syscall] of [
      ['ENOENT', 'open'],
      ['EACCES', 'mkdir'],
      ['ECONNREFUSED', 'connect'],
      ['EPERM', 'kill'],
    ]) {
      const e = Object.assign(new Error(`${errno}: something failed, ${syscall} '/x'`), { code: errno, syscall, errno: -1, path: '/x' });
      const { code, out } = report(e);
      expect(code).toBe(125);
      expect(out).toBe(`roost: ${errno}: something failed, ${syscall} '/x'\n`);
      expect(out).not.toMatch(STACK_FRAME);
    }
  });

  it('prints a zod error as the field and its problem', () => {
    const r = z.object({ cpus: z.number() }).safeParse({ cpus: 'x' });
    expect(r.success).toBe(false);
    const { code, out } = report(r.error);
    expect(code).toBe(125);
    expect(out).toMatch(/^roost: cpus: /);
    expect(out.split('\n')).toHaveLength(2);
  });

  it('reports a bug in one line naming ROOST_DEBUG, and its stack only with ROOST_DEBUG=1', () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'x')");
    const quiet = report(bug);
    expect(quiet.code).toBe(125);
    expect(quiet.out).toMatch(/^roost: internal error: TypeError: Cannot read .*ROOST_DEBUG=1/);
    expect(quiet.out).not.toMatch(STACK_FRAME);
    const loud = report(new RoostError('INTERNAL', 'wrapped', { cause: bug }), { ROOST_DEBUG: '1' });
    expect(loud.out).toMatch(STACK_FRAME);
    expect(loud.out).toMatch(/caused by: TypeError/);
    expect(report(bug, { ROOST_DEBUG: '0' }).out).not.toMatch(STACK_FRAME);
  });

  it("leaves commander's errors (already printed) as usage errors, help and version as success", () => {
    expect(report(new CommanderError(1, 'commander.unknownCommand', 'unknown command')).code).toBe(2);
    expect(report(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)')).code).toBe(0);
    expect(report(new CommanderError(1, 'commander.unknownCommand', 'x')).out).toBe('');
  });

  it('does not take an arbitrary error with a code for a system error', () => {
    expect(asExpectedError(Object.assign(new Error('x'), { code: 'ERR_SOMETHING' }))).toBeUndefined();
  });
});

describe('namingFlag', () => {
  it("replaces the SDK option a message names with the CLI's flag", async () => {
    const err = new RoostError('BOOT_FAILED', 'the guest did not boot within 1 ms: raise the boot timeout (timeoutMs) on a loaded machine', {
      details: { option: 'timeoutMs', timeoutMs: 1 },
    });
    await expect(
      namingFlag('--boot-timeout', () => {
        throw err;
      }),
    ).rejects.toMatchObject({ code: 'BOOT_FAILED', message: expect.stringMatching(/raise the boot timeout \(--boot-timeout\)/) });
    await expect(namingFlag('--timeout', () => Promise.resolve(7))).resolves.toBe(7);
    const other = new RoostError('NOT_FOUND', 'no such sandbox');
    await expect(namingFlag('--timeout', () => Promise.reject(other))).rejects.toBe(other);
  });
});
