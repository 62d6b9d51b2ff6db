import type { Command } from 'commander';
import { DEFAULT_TCP_PORT, RoostError } from '@roost/api';
import { roostHome } from '@roost/core';
import { E2bKeys, parseE2bDomain } from '@roost/server';
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
    .option('--domain <domain>', "the daemon's --e2b-domain, when it was given one (default: localhost:<the port of --url>)")
    .description(
      "print the export lines that point E2B's SDK at `roost serve --tcp` (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY, and E2B_DOMAIN for sandbox.getHost)",
    )
    .action((flags: { url: string; key?: string; domain?: string }) => {
      const url = flags.url.replace(/\/+$/, '');
      const domain = parseE2bDomain(flags.domain ?? `localhost:${tcpPortOf(url)}`);
      const apiKey = flags.key ?? new E2bKeys(roostHome()).create('env').key;
      process.stdout.write(`export E2B_API_URL=${url}\nexport E2B_SANDBOX_URL=${url}\nexport E2B_API_KEY=${apiKey}\nexport E2B_DOMAIN=${domain}\n`);
    });
  return e2b;
}

/** The TCP port of an http(s) URL (its scheme's default when it names none). */
function tcpPortOf(url: string): number {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new RoostError('INVALID_ARGUMENT', `--url: not a URL: '${url}' (for example http://127.0.0.1:${DEFAULT_TCP_PORT})`);
  }
  return parsed.port ? Number(parsed.port) : parsed.protocol === 'https:' ? 443 : 80;
}
