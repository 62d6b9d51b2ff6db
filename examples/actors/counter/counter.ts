// A counter: each message increments the state key `count` (decimal text)
// and replies with the new value.
import { parseDecimal, replyText, stateGetText, stateSetText } from '../../../packages/actors/sdk/roost';

export function handle(_len: i32): i32 {
  const count = parseDecimal(stateGetText('count')) + 1;
  const value = count.toString();
  stateSetText('count', value);
  replyText(value);
  return 0;
}
