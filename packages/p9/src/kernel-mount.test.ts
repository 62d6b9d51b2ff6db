import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend } from './local.js';
import { P9Server } from './server.js';

/**
 * The host's own Linux 9P client on the server, over TCP on 127.0.0.1:
 * needs root and a kernel with 9P (`9p` in /proc/filesystems, or modules
 * to load). Skipped, saying why, where the host cannot mount 9P; the same
 * workload runs in a guest kernel in test/p9-kernel-client.test.ts.
 */

const fixtures = fileURLToPath(new URL('../../../test/fixtures/', import.meta.url));

/** Why this host cannot mount 9P, or null when it can. */
function cannotMount(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'mounting needs root';
  const has9p = () => /\b9p\b/.test(readFileSync('/proc/filesystems', 'utf8'));
  if (!has9p()) spawnSync('modprobe', ['-q', '9p'], { stdio: 'ignore' });
  if (!has9p()) {
    let config = '';
    try {
      config = execFileSync('sh', ['-c', 'zcat /proc/config.gz 2>/dev/null | grep -E "^(# )?CONFIG_(NET_)?9P"'], { encoding: 'utf8' }).trim();
    } catch {
      config = 'no /proc/config.gz';
    }
    return `the host kernel (${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}) has no 9P file system and none can be loaded (${config.replace(/\n/g, ', ')})`;
  }
  return null;
}

const reason = cannotMount();
if (reason !== null) process.stderr.write(`[p9] skipping the host-kernel 9P mount test: ${reason}\n`);

describe.skipIf(reason !== null)('the host kernel 9P client on @roost/p9 (trans=tcp, 127.0.0.1)', () => {
  let work: string;
  let mnt: string;
  let exportDir: string;
  let server: P9Server;
  let mounted = false;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'p9-host-mount-'));
    exportDir = join(work, 'export');
    mnt = join(work, 'mnt');
    mkdirSync(join(exportDir, 'host-made'), { recursive: true });
    mkdirSync(mnt);
    for (let i = 0; i < 10_000; i++) writeFileSync(join(exportDir, 'host-made', `entry-${i}`), '');
    server = new P9Server({ exports: { '': { backend: new LocalBackend(exportDir) } } });
    const port = await server.listen(0, '127.0.0.1');
    execFileSync('mount', ['-t', '9p', '-o', `trans=tcp,port=${port},version=9p2000.L,msize=262144,cache=none`, '127.0.0.1', mnt]);
    mounted = true;
  }, 120_000);

  afterAll(async () => {
    if (mounted) {
      const r = spawnSync('umount', [mnt]);
      if (r.status !== 0) spawnSync('umount', ['-l', mnt]);
    }
    await server?.close();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  });

  it('runs the POSIX workload on the mount', () => {
    const r = spawnSync('sh', [join(fixtures, 'p9-workload.sh'), mnt], { encoding: 'utf8', timeout: 300_000 });
    expect(r.stdout).toContain('WORKLOAD OK');
    expect(r.status).toBe(0);
    expect(existsSync(join(exportDir, 'log.txt'))).toBe(true);
  }, 300_000);
});
