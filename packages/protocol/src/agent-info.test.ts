import { describe, expect, it } from 'vitest';
import { agentInfo, capabilityNames } from './agent-info.js';
import { Capability, MAX_PAYLOAD, Tag } from './constants.js';
import { decodeAgentHello, encodeAgentHello } from './messages.js';
import { TlvReader } from './tlv.js';

const nonce = Buffer.from('0123456789abcdef');
const payload = (frame: Buffer) => frame.subarray(9);

describe('the agent HELLO carries version and capabilities', () => {
  it('round-trips CAPABILITIES as a u32 and leaves it out when undefined', () => {
    const all = Capability.FREEZE | Capability.CALL | Capability.NET;
    const withCaps = payload(encodeAgentHello({ version: 1, agentVersion: 'roost-agent 0.2.0', maxPayload: MAX_PAYLOAD, nonce, capabilities: all }));
    expect(new TlvReader(withCaps).u32(Tag.CAPABILITIES)).toBe(7);
    expect(decodeAgentHello(withCaps).capabilities).toBe(all);
    const old = payload(encodeAgentHello({ version: 1, agentVersion: 'roost-agent 0.1.0', maxPayload: MAX_PAYLOAD, nonce }));
    expect(new TlvReader(old).u32(Tag.CAPABILITIES)).toBeUndefined();
    expect(decodeAgentHello(old).capabilities).toBeUndefined();
  });

  it('names the capabilities, ignoring bits this host does not know', () => {
    expect(capabilityNames(0)).toEqual([]);
    expect(capabilityNames(Capability.NET | Capability.FREEZE)).toEqual(['FREEZE', 'NET']);
    expect(capabilityNames(0xffffffff)).toEqual(['FREEZE', 'CALL', 'NET', 'LAYERS', 'P9_RELAY']);
  });

  it('summarises a HELLO as AgentInfo; an older agent announces nothing', () => {
    const hello = decodeAgentHello(
      payload(encodeAgentHello({ version: 1, agentVersion: 'roost-agent 0.2.0', maxPayload: MAX_PAYLOAD, nonce, capabilities: Capability.CALL })),
    );
    expect(agentInfo(hello)).toEqual({ protocolVersion: 1, version: 'roost-agent 0.2.0', capabilities: ['CALL'] });
    const old = decodeAgentHello(payload(encodeAgentHello({ version: 1, agentVersion: 'roost-agent 0.1.0', maxPayload: MAX_PAYLOAD, nonce })));
    expect(agentInfo(old)).toEqual({ protocolVersion: 1, version: 'roost-agent 0.1.0', capabilities: [] });
  });
});
