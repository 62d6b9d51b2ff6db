/**
 * A VM's file server process (see server.ts): lives as long as the VM (it
 * ends when QEMU closes the port), so a detached sandbox's volumes need no
 * Roost process, and does its path work with synchronous calls on a thread
 * of its own. Run as `node main.js CONFIG` (process.ts starts it).
 */
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { FileServerConfig } from './config.js';
import { FileServer, log, serveControl } from './server.js';

async function main(): Promise<void> {
  const configPath = process.argv[2];
  if (!configPath) throw new Error('usage: main.js CONFIG');
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as FileServerConfig;
  process.on('SIGPIPE', () => {});
  process.on('SIGTERM', () => process.exit(0));
  const fs = await FileServer.create(config);
  if (config.restore) await fs.restore(config.restore);
  await rm(config.control, { force: true });
  process.umask(0o077);
  await serveControl(fs, config.control);
  process.umask(0o022);
  await fs.connect();
  log(`serving ${config.exports.length} volume(s)`);
}

main().catch((err: unknown) => {
  // The stack first; the last line is the reason (the runtime quotes it in the boot error).
  if (err instanceof Error && err.stack) log(err.stack);
  log(`failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
