import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SandboxApi } from '@roost/api';
import type { Runtime } from '@roost/core';
import { exampleModule, text } from './actor-modules.js';
import { expectCode, TestHome } from './helpers.js';

// The sandbox example: an actor that runs commands in a microVM through its capability. One VM.
const home = new TestHome();
let runtime: Runtime;
let sandbox: SandboxApi;

beforeAll(async () => {
  runtime = await home.runtime();
  sandbox = await home.create();
});
afterAll(() => home.cleanup());

describe('an actor calling into a microVM sandbox', () => {
  it('runs commands in the sandbox it was granted, and in no other', async () => {
    const mod = await runtime.actors.deploy(exampleModule('sandbox'));
    expect(mod.grantsNeeded).toEqual(['sandbox']);
    await expectCode(runtime.actors.create({ module: mod.digest, init: sandbox.id }), 'INVALID_ARGUMENT', /grant/);

    const a = await runtime.actors.create({ module: mod.digest, init: sandbox.id, grants: { sandboxes: [sandbox.id] } });
    const result = JSON.parse(text((await runtime.actors.call(a.id, 'echo "hi from $(uname -s)"; echo err >&2; exit 3')).reply)) as Record<string, unknown>;
    expect(result).toEqual({ exitCode: 3, stdout: 'hi from Linux\n', stderr: 'err\n' });
    expect((await runtime.actors.state(a.id)).entries).toEqual([{ key: 'sandbox', value: sandbox.id }]);

    // Granted another sandbox only: the call is denied, the message fails, the sandbox is untouched.
    const other = await runtime.actors.create({ module: mod.digest, init: sandbox.id, grants: { sandboxes: ['0123456789ab'] } });
    await expectCode(runtime.actors.call(other.id, 'touch /tmp/should-not-exist'), 'ACTOR', /E_DENIED|denied/i);
    expect((await sandbox.commands.run(['sh', '-c', 'test -e /tmp/should-not-exist; echo $?'])).stdout).toBe('1\n');
  });
});
