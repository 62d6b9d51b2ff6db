import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { openapiJson } from './openapi.js';

/*
 * Writes the OpenAPI document: `node packages/server/dist/write-openapi.js
 * [path]` (default docs/openapi.json under the current directory).
 */
const target = resolve(process.argv[2] ?? 'docs/openapi.json');
writeFileSync(target, openapiJson());
process.stdout.write(`wrote ${target}\n`);
