import { describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { DEFAULT_JAIL_IDS } from './ids.js';
import { JAIL_MEMORY_OVERHEAD_MIB, JAIL_PIDS, jailSettings, jailUnavailable, vmLimits } from './policy.js';

describe('jail settings', () => {
  it('is on by default, off with ROOST_JAIL=off or jail: false', () => {
    expect(jailSettings(undefined, {})).toEqual({ enabled: true, ids: DEFAULT_JAIL_IDS, memoryOverheadMiB: JAIL_MEMORY_OVERHEAD_MIB });
    expect(jailSettings(undefined, { ROOST_JAIL: 'off' }).enabled).toBe(false);
    expect(jailSettings(undefined, { ROOST_JAIL: '0' }).enabled).toBe(false);
    expect(jailSettings(false, { ROOST_JAIL: 'on' }).enabled).toBe(false);
    // An explicit option wins over the environment.
    expect(jailSettings(true, { ROOST_JAIL: 'off' }).enabled).toBe(true);
    expect(jailSettings({ memoryOverheadMiB: 0 }, { ROOST_JAIL: 'off' })).toMatchObject({ enabled: true, memoryOverheadMiB: 0 });
  });

  it('reads the uid range and the memory overhead from the environment', () => {
    const s = jailSettings(undefined, { ROOST_JAIL_IDS: '3000000-3000999', ROOST_JAIL_MEMORY_OVERHEAD_MIB: '64' });
    expect(s.ids).toEqual({ start: 3_000_000, count: 1000 });
    expect(s.memoryOverheadMiB).toBe(64);
  });

  it('refuses bad values with INVALID_ARGUMENT', () => {
    for (const env of [
      { ROOST_JAIL: 'maybe' },
      { ROOST_JAIL_IDS: 'lots' },
      { ROOST_JAIL_MEMORY_OVERHEAD_MIB: '-5' },
      { ROOST_JAIL_MEMORY_OVERHEAD_MIB: 'x' },
    ]) {
      let err: unknown;
      try {
        jailSettings(undefined, env);
      } catch (e) {
        err = e;
      }
      expect(isRoostError(err, 'INVALID_ARGUMENT')).toBe(true);
    }
  });

  it('says why a non-root process cannot build the jail', () => {
    expect(jailUnavailable(0)).toBeNull();
    expect(jailUnavailable(1000)).toMatch(/not running as root/);
  });

  it('limits a VMM to its cpus, its RAM plus the overhead, and JAIL_PIDS threads', () => {
    expect(vmLimits(2, 512, 96)).toEqual({ cpus: 2, memoryBytes: 608 * 2 ** 20, pids: JAIL_PIDS });
  });
});
