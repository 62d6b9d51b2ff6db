import { Capability, type CapabilityName } from './constants.js';
import type { AgentHello } from './messages.js';

/** What an agent announced about itself in its HELLO answer. */
export interface AgentInfo {
  /** The protocol version it speaks (VERSION). */
  protocolVersion: number;
  /** Its AGENT_VERSION string, e.g. `roost-agent 0.2.0`. */
  version: string;
  /**
   * The capabilities it announced, in Capability order. Empty for an agent
   * that sent no CAPABILITIES; bits this host does not know are left out.
   */
  capabilities: readonly CapabilityName[];
}

/** The capability names set in `bits`, in Capability order (unknown bits are ignored). */
export function capabilityNames(bits: number): CapabilityName[] {
  return (Object.keys(Capability) as CapabilityName[]).filter((name) => (bits & Capability[name]) !== 0);
}

/** Reads the agent's version and capabilities out of its HELLO answer. */
export function agentInfo(hello: AgentHello): AgentInfo {
  return { protocolVersion: hello.version, version: hello.agentVersion, capabilities: capabilityNames(hello.capabilities ?? 0) };
}
