import { accessSync, constants, readFileSync } from 'node:fs';
import { RoostError } from '../errors.js';

export type Accel = 'kvm' | 'tcg';

/** Host CPU facts the boot command line needs. */
export interface HostCpu {
  /** The CPU advertises hardware virtualisation (vmx or svm). */
  hwVirt: boolean;
  /** TSC frequency in kHz, for `tsc_early_khz` under TCG. */
  tscKhz: number;
}

let cachedCpu: HostCpu | undefined;

export function hostCpu(): HostCpu {
  if (cachedCpu) return cachedCpu;
  let info = '';
  try {
    info = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    // Not Linux, or /proc is not mounted: no KVM, and a generic TSC figure.
  }
  const flags = /^flags\s*:(.*)$/m.exec(info)?.[1] ?? '';
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(info)?.[1] ?? '2000');
  cachedCpu = { hwVirt: /\b(vmx|svm)\b/.test(flags), tscKhz: Math.round(mhz * 1000) };
  return cachedCpu;
}

/**
 * Picks the accelerator: KVM only when /dev/kvm opens and the CPU has vmx or
 * svm (a nested, software-based KVM without them is slower than TCG and
 * mis-emulates boots), TCG otherwise. `ROOST_ACCEL=kvm|tcg` overrides.
 */
export function chooseAccel(env: NodeJS.ProcessEnv = process.env): Accel {
  const forced = env.ROOST_ACCEL;
  if (forced !== undefined && forced !== '') {
    if (forced !== 'kvm' && forced !== 'tcg') {
      throw new RoostError('INVALID_ARGUMENT', `ROOST_ACCEL must be "kvm" or "tcg", not "${forced}"`);
    }
    return forced;
  }
  if (!hostCpu().hwVirt) return 'tcg';
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return 'kvm';
  } catch {
    return 'tcg';
  }
}
