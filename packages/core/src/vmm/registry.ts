import { RoostError } from '../errors.js';
import { QemuVmm } from './qemu/vmm.js';
import type { Vmm } from './types.js';

/** Makes a backend; called once per runtime that names it. */
export type VmmFactory = () => Vmm;

const factories = new Map<string, VmmFactory>([['qemu', () => new QemuVmm()]]);

/** The backend a runtime uses unless told otherwise. */
export const DEFAULT_VMM = 'qemu';

/**
 * Adds a VMM backend under `name`, for `Runtime.open({ vmm: name })`.
 * ALREADY_EXISTS if the name is taken: a backend is not replaced behind the
 * back of runtimes that use it.
 */
export function registerVmm(name: string, factory: VmmFactory): void {
  if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(name))
    throw new RoostError('INVALID_ARGUMENT', `VMM name "${name}": use 1-64 lowercase letters, digits, ".", "_" and "-"`);
  if (factories.has(name)) throw new RoostError('ALREADY_EXISTS', `a VMM backend named ${name} is registered already`);
  factories.set(name, factory);
}

/** The names of the registered backends. */
export function vmmNames(): string[] {
  return [...factories.keys()];
}

/** A backend by name (a fresh instance), or the object given. */
export function resolveVmm(vmm: string | Vmm = DEFAULT_VMM): Vmm {
  if (typeof vmm !== 'string') return vmm;
  const factory = factories.get(vmm);
  if (!factory) throw new RoostError('INVALID_ARGUMENT', `no VMM backend named ${vmm} (registered: ${vmmNames().join(', ')})`, { details: { field: 'vmm' } });
  return factory();
}
