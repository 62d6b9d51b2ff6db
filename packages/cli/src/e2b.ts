import type { Command } from 'commander';
import { DEFAULT_TCP_PORT } from '@roost/api';
import { roostHome } from '@roost/core';
import { E2bKeys } from '@roost/server';
import { formatTable } from './format.js';

/**
 * Registers `roost e2b`: the keys of E2B's face of `roost serve` (issued
 * and revoked here, stored hashed in the home) and the environment E2B's
 * SDK needs to talk to it.
 */
export function addE2bCommands(program: Command): Command {
  const e2b = program.command('e2b').description("E2B's SDK against this Roost: its API keys and environment");
  const key = e2b.command('key').description('issue, list and revoke the API keys of the E2B face');
  key
    .command('create')
    .argument('[name]', 'a name to tell the key by', 'default')
    .description('issue a key (printed once; only its hash is kept)')
    .action((name: string) => {
      const { key: k } = new E2bKeys(roostHome()).create(name);
      process.stdout.write(`${k}\n`);
    });
  key
    .command('ls', { isDefault: true })
    .option('--json', 'as JSON')
    .description('list the issued keys (their ids and names; never the keys)')
    .action((flags: { json?: boolean }) => {
      const keys = new E2bKeys(roostHome()).list();
      if (flags.json) process.stdout.write(`${JSON.stringify(keys, null, 2)}\n`);
      else
        process.stdout.write(
          formatTable(
            ['ID', 'NAME', 'CREATED'],
            keys.map((k) => [k.id, k.name, k.createdAt]),
          ),
        );
    });
  key
    .command('rm')
    .argument('<id-or-name>')
    .description('revoke a key: requests with it are refused from now on')
    .action((idOrName: string) => {
      const gone = new E2bKeys(roostHome()).remove(idOrName);
      process.stdout.write(`${gone.id}\n`);
    });
  e2b
    .command('env')
    .option('--url <url>', "the daemon's TCP address", `http://127.0.0.1:${DEFAULT_TCP_PORT}`)
    .option('--key <key>', 'the API key to print (default: a new one, named "env")')
    .description("print the export lines that point E2B's SDK at `roost serve --tcp` (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY)")
    .action((flags: { url: string; key?: string }) => {
      const apiKey = flags.key ?? new E2bKeys(roostHome()).create('env').key;
      const url = flags.url.replace(/\/+$/, '');
      process.stdout.write(`export E2B_API_URL=${url}\nexport E2B_SANDBOX_URL=${url}\nexport E2B_API_KEY=${apiKey}\n`);
    });
  return e2b;
}
