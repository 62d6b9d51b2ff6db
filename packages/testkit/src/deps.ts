import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { ensureDebianPackages, type ProgressFn } from '@roost/core/internal';

/** Debian packages the image tests use on the host. */
export const TEST_PACKAGES = [
  'docker-registry', // a real registry (github.com/docker/distribution), started per test on 127.0.0.1
  'skopeo', // pushes test images to it, and is the reference client in the benchmark
  'debootstrap', // builds the Debian minbase test image
  'apache2-utils', // htpasswd -B (bcrypt) for the registry's basic auth
  'openssl', // the token server's signing key and certificate
  'busybox-static', // the busybox test image
  'buildah', // the reference builder in the build benchmark (`buildah bud`, vfs storage, chroot isolation)
  'diod', // Debian's 9P server, a peer in the volumes benchmark (one connection on given fds: `diod -r 0 -w 1`)
] as const;

const POLICY_RC_D = '/usr/sbin/policy-rc.d';
const DENY_ALL = '#!/bin/sh\n# Written by roost test/support/deps.ts while installing packages: start no services.\nexit 101\n';

/**
 * Installs the missing test packages through apt-get (as root). Debian's
 * docker-registry package starts a registry on :5000 on every interface when
 * it is installed on a systemd machine; the tests start their own on
 * 127.0.0.1, so services are kept from starting during the install (a
 * policy-rc.d that answers 101), and a docker-registry service found running
 * afterwards is stopped and disabled.
 */
export async function ensureTestTools(progress: ProgressFn = () => {}): Promise<string[]> {
  let installed: string[] = [];
  // Touch policy-rc.d only when apt-get will run.
  if (!allInstalled(TEST_PACKAGES)) {
    const restore = await denyServiceStarts();
    try {
      installed = await ensureDebianPackages(TEST_PACKAGES, progress);
    } finally {
      await restore();
    }
  }
  stopRegistryService(progress);
  return installed;
}

/** True when dpkg knows every package as installed (or there is no dpkg: nothing apt-get could do). */
function allInstalled(pkgs: readonly string[]): boolean {
  const r = spawnSync('dpkg-query', ['-W', '-f=${db:Status-Abbrev}\n', ...pkgs], { encoding: 'utf8' });
  if (r.error) return true;
  if (r.status !== 0) return false;
  const lines = r.stdout.split('\n').filter(Boolean);
  return lines.length === pkgs.length && lines.every((l) => l.startsWith('ii'));
}

/**
 * Puts a policy-rc.d that forbids starting services in place, and returns a
 * function that puts back what was there before (or removes ours).
 */
async function denyServiceStarts(): Promise<() => Promise<void>> {
  // Not root: apt-get cannot run either, and ensureDebianPackages says so.
  if (process.getuid?.() !== 0) return async () => {};
  // An existing policy (Docker-built machines ship one) is moved aside and put back.
  const previous = await readFile(POLICY_RC_D, 'utf8').catch(() => null);
  const backup = `${POLICY_RC_D}.roost-backup-${process.pid}`;
  if (previous !== null) await rename(POLICY_RC_D, backup);
  await writeFile(POLICY_RC_D, DENY_ALL);
  await chmod(POLICY_RC_D, 0o755);
  return async () => {
    if (previous !== null) await rename(backup, POLICY_RC_D);
    else await rm(POLICY_RC_D, { force: true });
  };
}

/** Stops and disables Debian's docker-registry service if systemd runs it. */
function stopRegistryService(progress: ProgressFn): void {
  // systemctl may be installed without systemd being PID 1 (containers): then no unit runs.
  if (!existsSync('/run/systemd/system')) return;
  const active = spawnSync('systemctl', ['is-active', '--quiet', 'docker-registry.service'], { stdio: 'ignore' });
  const enabled = spawnSync('systemctl', ['is-enabled', '--quiet', 'docker-registry.service'], { stdio: 'ignore' });
  if (active.error || (active.status !== 0 && enabled.status !== 0)) return;
  progress('packages: stopping and disabling the docker-registry service (the tests start their own on 127.0.0.1)');
  const r = spawnSync('systemctl', ['disable', '--now', 'docker-registry.service'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`systemctl disable --now docker-registry failed: ${r.stderr || r.stdout}`);
}
