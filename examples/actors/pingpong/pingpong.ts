// Ping-pong between two actors of this one module. Messages (UTF-8 text):
//
//   start N        -> sends `ping 1` to ref 1 (the other player) and plays
//                     until N pongs came back; replies `started`
//   start-child N  -> the same with the child made by `spawn`
//   spawn DIGEST   -> creates a child actor from the module DIGEST (this
//                     module's digest) with empty init bytes, keeps its ref
//                     in the state key `child` and replies with the ref
//   ping I         -> sends `pong I` back to the sender
//   pong I         -> counts it in the state key `pongs`; if I < N (the state
//                     key `target`), sends `ping I+1` back to the sender
//   pongs          -> replies with the number of pongs received
//
// A child's ref 1 is its parent, so `spawn` then `start-child N` on one actor
// makes a pair without wiring refs from outside. A malformed message returns
// 1, which aborts its transaction.
import { createChild, messageText, parseDecimal, replyText, sendText, sender, stateGetText, stateSetText } from '../../../packages/actors/sdk/roost';

const E_BAD_MESSAGE: i32 = 1;

/** The number after `prefix` in `msg`, or -1 if there is none. */
function argument(msg: string, prefix: string): i64 {
  return parseDecimal(msg.substring(prefix.length), -1);
}

function start(ref: i32, target: i64): i32 {
  if (target < 1 || ref <= 0) return E_BAD_MESSAGE;
  stateSetText('target', target.toString());
  stateSetText('pongs', '0');
  sendText(ref, 'ping 1');
  replyText('started');
  return 0;
}

export function handle(len: i32): i32 {
  const msg = messageText(len);

  if (msg.startsWith('ping ')) {
    const i = argument(msg, 'ping ');
    if (i < 0) return E_BAD_MESSAGE;
    sendText(sender(), 'pong ' + i.toString());
    return 0;
  }
  if (msg.startsWith('pong ')) {
    const i = argument(msg, 'pong ');
    if (i < 0) return E_BAD_MESSAGE;
    stateSetText('pongs', (parseDecimal(stateGetText('pongs')) + 1).toString());
    if (i < parseDecimal(stateGetText('target'))) sendText(sender(), 'ping ' + (i + 1).toString());
    return 0;
  }
  if (msg == 'pongs') {
    replyText(parseDecimal(stateGetText('pongs')).toString());
    return 0;
  }
  if (msg.startsWith('start ')) return start(1, argument(msg, 'start '));
  if (msg.startsWith('start-child ')) return start(<i32>parseDecimal(stateGetText('child'), -1), argument(msg, 'start-child '));
  if (msg.startsWith('spawn ')) {
    const ref = createChild(msg.substring(6), new Uint8Array(0));
    stateSetText('child', ref.toString());
    replyText(ref.toString());
    return 0;
  }
  return E_BAD_MESSAGE;
}
