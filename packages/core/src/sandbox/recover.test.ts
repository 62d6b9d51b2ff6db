import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { recoveryDecision, removeVmSockets } from './recover.js';

describe('recovery decisions', () => {
  it('keeps records without a VM', () => {
    for (const status of ['stopped', 'failed'] as const) {
      expect(recoveryDecision({ status, detached: true }, false)).toEqual({ action: 'keep' });
    }
  });

  it('re-attaches only to a running or paused detached VM', () => {
    expect(recoveryDecision({ status: 'running', detached: true }, true)).toEqual({ action: 'attach' });
    expect(recoveryDecision({ status: 'paused', detached: true }, true)).toEqual({ action: 'attach' });
  });

  it('kills a VM that cannot be trusted to be whole, and records why', () => {
    expect(recoveryDecision({ status: 'creating', detached: true }, true)).toEqual({
      action: 'record',
      kill: true,
      status: 'failed',
      reason: 'the runtime exited while it booted',
    });
    expect(recoveryDecision({ status: 'stopping', detached: false }, true)).toEqual({ action: 'record', kill: true, status: 'stopped', reason: 'stopped' });
    expect(recoveryDecision({ status: 'running', detached: false }, true)).toEqual({
      action: 'record',
      kill: true,
      status: 'stopped',
      reason: 'its runtime exited',
    });
  });

  it('records a VM that is gone', () => {
    expect(recoveryDecision({ status: 'running', detached: true }, false)).toEqual({
      action: 'record',
      kill: false,
      status: 'failed',
      reason: 'the VM process is gone (it crashed or was killed while no runtime watched it)',
    });
    expect(recoveryDecision({ status: 'paused', detached: false }, false)).toEqual({
      action: 'record',
      kill: false,
      status: 'stopped',
      reason: 'its runtime exited, and the VM with it',
    });
    expect(recoveryDecision({ status: 'creating', detached: false }, false)).toEqual({
      action: 'record',
      kill: false,
      status: 'failed',
      reason: 'its runtime exited, and the VM with it',
    });
  });
});

describe('sockets of a VM that is gone', () => {
  it('are removed from its directory; its disk and logs stay, a missing directory is no error', () => {
    const dir = mkdtempSync(join(tmpdir(), 'roost-sockets-'));
    try {
      for (const f of ['agent.sock', 'qmp.sock', 'net.sock', 'disk.qcow2', 'console.log']) writeFileSync(join(dir, f), '');
      removeVmSockets(dir);
      expect(readdirSync(dir).sort()).toEqual(['console.log', 'disk.qcow2']);
      expect(() => removeVmSockets(join(dir, 'gone'))).not.toThrow();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
