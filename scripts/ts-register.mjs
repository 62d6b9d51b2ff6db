/**
 * `node --import ./scripts/ts-register.mjs file.ts` (or `await import()` of
 * this file in a worker thread) runs workspace TypeScript sources unbuilt:
 * see ts-hooks.mjs.
 */
import { register } from 'node:module';

register('./ts-hooks.mjs', import.meta.url);
