import type {
  Capability,
  StreamHeader,
  StreamHeaderVersion,
  YamuxSession,
  YamuxStream,
} from '@cluster-tunnel/protocol';
import {
  CAPABILITIES,
  STREAM_HEADER_VERSIONS,
  TunnelError,
  encodeStreamHeader,
} from '@cluster-tunnel/protocol';

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
    /** What both sides speak, negotiated at registration (agent-endpoint.ts). */
    readonly capabilities: ReadonlySet<Capability>,
    /** Labels served by a mode other than passthrough, with that mode's name. */
    private readonly routeModes: ReadonlyMap<string, string> = new Map(),
    /** Labels of http routes whose target wants another Host header, with that header. */
    private readonly hostHeaders: ReadonlyMap<string, string> = new Map(),
  ) {}

  /** The Host header `label`'s target is to get, if not the user's. */
  hostHeaderOf(label: string): string | undefined {
    return this.hostHeaders.get(label);
  }

  /** The route mode that serves `label` on the public port. */
  modeOf(label: string): string {
    return this.routeModes.get(label) ?? 'passthrough';
  }

  /** v2 to agents that announced `typed-stream-header`, v1 to the others. */
  get streamHeaderVersion(): StreamHeaderVersion {
    return this.capabilities.has(CAPABILITIES.typedStreamHeader)
      ? STREAM_HEADER_VERSIONS.v2
      : STREAM_HEADER_VERSIONS.v1;
  }

  get streams(): number {
    return this.activeStreams;
  }

  get usable(): boolean {
    return !this.session.isClosed && !this.session.isGoingAway;
  }

  /**
   * Opens a stream and writes its header, in the version this agent reads; the caller writes
   * the stream's bytes next. An agent without `typed-stream-header` gets a v1 header: it can
   * take only `route` streams (another type throws TUN_ERR_UNKNOWN_STREAM_TYPE, before any
   * stream is opened) and it is not sent the metadata, which is advisory for route streams.
   * Throws TUN_ERR_SESSION_CLOSED when the agent is leaving, so the caller tries another agent.
   */
  openStream(header: StreamHeader): YamuxStream {
    const version = this.streamHeaderVersion;
    if (version === STREAM_HEADER_VERSIONS.v1 && header.type !== 'route') {
      throw new TunnelError(
        'TUN_ERR_UNKNOWN_STREAM_TYPE',
        `agent ${this.identity.agentId} takes only route streams (it lacks ${CAPABILITIES.typedStreamHeader})`,
      );
    }
    const { type, route, remoteAddress } = header;
    const bytes = encodeStreamHeader(
      version === STREAM_HEADER_VERSIONS.v1 ? { type, route, remoteAddress } : header,
      version,
    );
    const stream = this.session.open();
    this.activeStreams++;
    stream.once('close', () => this.activeStreams--);
    stream.write(bytes);
    return stream;
  }

  close(): Promise<void> {
    return this.session.close();
  }

  destroy(): void {
    this.session.destroy();
  }
}
