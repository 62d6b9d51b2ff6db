import type { Command } from 'commander';
import type { McpSettings } from '@roost/api';
import { serveMcpStdio, VERSION } from '@roost/server';
import { int } from './args.js';
import type { WithFace } from './connect.js';
import { Lifetime } from './lifetime.js';

interface McpFlags {
  outputLimit?: number;
  readLimit?: number;
  maxSandboxes?: number;
}

/**
 * Registers `roost mcp`: an MCP server on stdio for one client (what Claude
 * Desktop, Cursor or an agent framework starts), on the runtime every
 * command uses (the home's daemon when one runs, else embedded). It ends
 * when the client closes stdin or on SIGINT/SIGTERM, removing the sandboxes
 * its session made (those made with `keep` stay). An embedded runtime here
 * reconciles while it runs (deployments, warm pools), as the home's owner.
 */
export function addMcpCommand(program: Command, withFace: WithFace): Command {
  return program
    .command('mcp')
    .description('serve the Model Context Protocol on stdio: sandboxes as tools for an AI agent (see docs/mcp.md)')
    .option(
      '--output-limit <bytes>',
      'bytes of stdout and of stderr a sandbox_exec result keeps (default 65536, or $ROOST_MCP_OUTPUT_LIMIT)',
      int('--output-limit'),
    )
    .option('--read-limit <bytes>', 'bytes a file read returns at most (default 1048576, or $ROOST_MCP_READ_LIMIT)', int('--read-limit'))
    .option('--max-sandboxes <n>', 'sandboxes the session may have at once, kept ones aside (default 8, or $ROOST_MCP_MAX_SANDBOXES)', int('--max-sandboxes'))
    .action(async (flags: McpFlags) => {
      const settings: McpSettings = {};
      if (flags.outputLimit !== undefined) settings.outputBytes = flags.outputLimit;
      if (flags.readLimit !== undefined) settings.readBytes = flags.readLimit;
      if (flags.maxSandboxes !== undefined) settings.maxSandboxes = flags.maxSandboxes;
      using life = new Lifetime();
      // Embedded, it is the home's owner while it runs: it keeps the deployments an agent applies (and the warm pools) going.
      await withFace('mcp', (face) => serveMcpStdio(face.runtime, { version: VERSION, settings }, life.signal), { reconcile: true });
    });
}
