import type { YamuxSession, YamuxStream } from '@cluster-tunnel/protocol';
import { encodeStreamHeader } from '@cluster-tunnel/protocol';

export interface AgentIdentity {
  /** Chosen by the agent (its pod name); several agents may share a cluster. */
  agentId: string;
  agentVersion: string;
  /** From the verified token: the only cluster whose routes this agent may hold. */
  clusterId: string;
  tokenId: string;
  /** The session ends then (agent-endpoint.ts). */
  tokenExpiresAt: Date;
  remoteAddress: string;
}

/** One connected agent whose registration the server accepted: its yamux session and routes. */
export class RegisteredAgent {
  readonly connectedAt = Date.now();
  private activeStreams = 0;

  constructor(
    readonly identity: AgentIdentity,
    readonly session: YamuxSession,
    /** Hostname labels this agent serves. */
    readonly labels: readonly string[],
  ) {}

  get streams(): number {
    return this.activeStreams;
  }

  get usable(): boolean {
    return !this.session.isClosed && !this.session.isGoingAway;
  }

  /**
   * Opens a user stream and writes its header; the caller writes user bytes next. Throws
   * TUN_ERR_SESSION_CLOSED when the agent is leaving, so the caller tries another agent.
   */
  openUserStream(route: string, remoteAddress: string): YamuxStream {
    const stream = this.session.open();
    this.activeStreams++;
    stream.once('close', () => this.activeStreams--);
    stream.write(encodeStreamHeader({ route, remoteAddress }));
    return stream;
  }

  close(): Promise<void> {
    return this.session.close();
  }

  destroy(): void {
    this.session.destroy();
  }
}
