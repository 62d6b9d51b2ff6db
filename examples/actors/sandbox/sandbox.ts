// An actor that runs shell commands in a microVM sandbox through its
// `sandbox` grant. Its init bytes are the sandbox's name (kept in the state
// key `sandbox`); each message is a shell command, run as `sh -c MESSAGE`,
// and the reply is the result JSON as the engine returns it:
// {"exitCode": 0, "stdout": "...", "stderr": "..."}.
import { jsonString, log, messageText, replyText, sandboxExec, stateGetText, stateSetText } from '../../../packages/actors/sdk/roost';

const E_NO_SANDBOX: i32 = 1;

export function init(len: i32): i32 {
  const name = messageText(len);
  if (name.length == 0) return E_NO_SANDBOX;
  stateSetText('sandbox', name);
  return 0;
}

export function handle(len: i32): i32 {
  const name = stateGetText('sandbox');
  if (name === null) return E_NO_SANDBOX;
  const command = messageText(len);
  log('exec in ' + name + ': ' + command);
  // Aborts the message (E_FAILED / E_DENIED in the error) if the call fails.
  const result = sandboxExec('{"sandbox":' + jsonString(name) + ',"cmd":["sh","-c",' + jsonString(command) + ']}');
  replyText(result);
  return 0;
}
