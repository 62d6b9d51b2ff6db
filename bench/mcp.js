// The MCP face's cost (issue 23), run by bench/run.js: `sandbox_exec` of
// `true` through MCP over Streamable HTTP, beside the REST exec through the
// same daemon and the embedded call, to the same sandbox, in the same run.
// The daemon serves this process's runtime (serve({ runtime })) on TCP
// loopback (MCP clients speak HTTP over TCP), and the three faces take turns
// so that drift in machine load hits them alike. Target: MCP within 2 ms of REST.
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Runtime } from '@roost/core';
import { RoostClient } from '@roost/client';
import { serve } from '@roost/server';
import { pct } from './stats.js';

const RUNS = Number(process.env.BENCH_MCP_RUNS ?? 100);

export async function benchMcp({ realHome, row, results }) {
  const home = mkdtempSync(join(tmpdir(), 'roost-bench-mcp-'));
  symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
  const runtime = await Runtime.open({ home, owner: 'bench mcp' });
  const daemon = await serve({ runtime, socket: join(home, 'mcp-bench.sock'), tcp: { host: '127.0.0.1', port: 0 } });
  const rest = new RoostClient({ host: daemon.url, token: daemon.token });
  const mcp = new Client({ name: 'roost-bench', version: '1.0.0' });
  try {
    await mcp.connect(
      new StreamableHTTPClientTransport(new URL('/mcp', daemon.url), { requestInit: { headers: { Authorization: `Bearer ${daemon.token}` } } }),
    );
    const created = await mcp.callTool({ name: 'sandbox_create', arguments: {} });
    if (created.isError) throw new Error(`sandbox_create: ${created.content[0].text}`);
    const id = created.structuredContent.id;
    const embedded = await runtime.get(id);
    const remote = await rest.get(id);
    const faces = {
      mcp: async () => {
        const r = await mcp.callTool({ name: 'sandbox_exec', arguments: { id, command: ['true'] } });
        if (r.isError || r.structuredContent.exitCode !== 0) throw new Error(`sandbox_exec: ${JSON.stringify(r.content)}`);
      },
      rest: () => remote.commands.run('true', { args: [] }),
      embedded: () => embedded.commands.run('true', { args: [] }),
    };
    const samples = { mcp: [], rest: [], embedded: [] };
    // Warm-up: connections, JIT, the guest's page cache.
    for (let i = 0; i < 10; i++) for (const face of Object.keys(faces)) await faces[face]();
    for (let i = 0; i < RUNS; i++) {
      for (const face of Object.keys(faces)) {
        const t0 = performance.now();
        await faces[face]();
        samples[face].push(performance.now() - t0);
      }
    }
    const p = (face, q) => pct(samples[face], q);
    const added = p('mcp', 50) - p('rest', 50);
    results.figures.mcpExec = {
      unit: 'ms',
      runs: RUNS,
      mcp: { p50: p('mcp', 50), p99: p('mcp', 99) },
      rest: { p50: p('rest', 50), p99: p('rest', 99) },
      embedded: { p50: p('embedded', 50), p99: p('embedded', 99) },
      addedOverRestP50: added,
      target: 'MCP within 2 ms of REST (p50)',
    };
    row(
      `MCP sandbox_exec(true) x${RUNS}, same VM`,
      `MCP p50 ${p('mcp', 50).toFixed(2)} ms p99 ${p('mcp', 99).toFixed(0)} ms`,
      `REST p50 ${p('rest', 50).toFixed(2)} ms, embedded ${p('embedded', 50).toFixed(2)} ms`,
      `+${added.toFixed(2)} ms over REST (target < 2 ms)`,
    );
  } finally {
    await mcp.close().catch(() => {});
    await rest.close().catch(() => {});
    await daemon.close().catch(() => {});
    await runtime.close().catch(() => {});
    rmSync(home, { recursive: true, force: true });
  }
}
