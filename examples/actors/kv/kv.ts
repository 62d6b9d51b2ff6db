// A key-value store. Messages (UTF-8 text; VALUE is the rest of the message,
// spaces and all, kept as its bytes):
//
//   set KEY VALUE  -> `ok`
//   get KEY        -> the value, or `not found`
//   del KEY        -> `1` if the key was there, else `0`
//   count          -> the number of keys
//
// Each KEY is the state key of its value; the count is kept in the state key
// `#count`, so keys starting with `#` are refused. A malformed message
// returns 1, which aborts its transaction (no reply, no change).
import { message, parseDecimal, reply, replyText, stateDelete, stateGet, stateGetText, stateSet, stateSetText, text } from '../../../packages/actors/sdk/roost';

const COUNT_KEY = '#count';
const SPACE: u8 = 0x20;

/** Bad command or key: the transaction aborts with this code. */
const E_BAD_MESSAGE: i32 = 1;

function keyCount(): i64 {
  return parseDecimal(stateGetText(COUNT_KEY));
}

function addKeys(delta: i64): void {
  stateSetText(COUNT_KEY, (keyCount() + delta).toString());
}

function validKey(key: string): bool {
  return key.length > 0 && key.charCodeAt(0) != 0x23; // '#'
}

export function handle(len: i32): i32 {
  const msg = message(len);
  const space = msg.indexOf(SPACE);
  const command = text(space < 0 ? msg : msg.subarray(0, space));
  const rest = space < 0 ? new Uint8Array(0) : msg.subarray(space + 1);

  if (command == 'count' && space < 0) {
    replyText(keyCount().toString());
    return 0;
  }
  if (command == 'set') {
    const split = rest.indexOf(SPACE);
    if (split < 0) return E_BAD_MESSAGE;
    const key = text(rest.subarray(0, split));
    if (!validKey(key)) return E_BAD_MESSAGE;
    if (stateGet(key) === null) addKeys(1);
    stateSet(key, rest.subarray(split + 1));
    replyText('ok');
    return 0;
  }
  if (command == 'get' || command == 'del') {
    const key = text(rest);
    if (!validKey(key)) return E_BAD_MESSAGE;
    if (command == 'get') {
      const value = stateGet(key);
      if (value === null) replyText('not found');
      else reply(value);
    } else {
      const existed = stateDelete(key);
      if (existed) addKeys(-1);
      replyText(existed ? '1' : '0');
    }
    return 0;
  }
  return E_BAD_MESSAGE;
}
