import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';

/*
 * The WASM modules actor tests use: the WAT fixtures, compiled here with
 * wabt, and the examples, built by `npm run build:examples` (`npm test`
 * builds them before the tests run).
 */

const wabt = await wabtInit();

/** test/fixtures/actors/NAME.wat as a binary. */
export function watModule(name: string): Uint8Array {
  const path = fileURLToPath(new URL(`./fixtures/actors/${name}.wat`, import.meta.url));
  const parsed = wabt.parseWat(path, readFileSync(path, 'utf8'));
  try {
    return new Uint8Array(parsed.toBinary({}).buffer);
  } finally {
    parsed.destroy();
  }
}

/** examples/actors/NAME/NAME.wasm (built by `npm run build:examples`). */
export function exampleModule(name: string): Uint8Array {
  return new Uint8Array(readFileSync(fileURLToPath(new URL(`../examples/actors/${name}/${name}.wasm`, import.meta.url))));
}

export const text = (b: Uint8Array | null): string => (b === null ? '<none>' : Buffer.from(b).toString('utf8'));
