/**
 * The one way any route mode reaches an agent: open a stream to an agent holding the route,
 * write the stream header and the bytes the mode already read (a ClientHello) at once, and
 * wait for the agent's reply. Agents are tried in the registry's order (rotated per call), so
 * a leaving, failing or refusing agent is skipped; only when every one failed does the caller
 * get an error, the last agent's (or TUN_ERR_NO_ROUTE when none holds the route).
 */
import { TunnelError, readStreamReply, type StreamType, type YamuxStream } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { AgentRegistry } from './agent-registry.js';
import type { RegisteredAgent } from './registered-agent.js';

export interface RouteStreamRequest {
  /** What the stream is for (the typed stream header); default `route`, raw bytes to the target. */
  type?: StreamType;
  /** Hostname label of the route, e.g. `cluster-u1`. */
  route: string;
  /** The user's `ip:port`, for the agent's logs. */
  remoteAddress: string;
  /** Small key/value facts for the agent (stream-header.ts limits); agents without the typed header get none. */
  metadata?: Readonly<Record<string, string>>;
  /** Bytes the mode read from the user before it knew the route; sent right behind the header. */
  firstBytes?: Buffer | undefined;
}

/** A stream the agent accepted: it reached the route's target and raw bytes follow. Paused. */
export interface RouteStream {
  stream: YamuxStream;
  agent: RegisteredAgent;
}

export interface OpenRouteStreamOptions {
  registry: AgentRegistry;
  /** How long one agent may take to reach its target and answer (agentReplyTimeoutMs). */
  replyTimeoutMs: number;
  log: Logger;
}

export async function openRouteStream(
  o: OpenRouteStreamOptions,
  request: RouteStreamRequest,
): Promise<RouteStream> {
  const { route, remoteAddress, firstBytes } = request;
  const header = { type: request.type ?? 'route', route, remoteAddress, metadata: request.metadata };
  let lastError: TunnelError | undefined;
  for (const agent of o.registry.candidates(route)) {
    let stream: YamuxStream;
    try {
      stream = agent.openStream(header);
    } catch (err) {
      lastError = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_SESSION_CLOSED', String(err));
      continue;
    }
    // A refusal ends in RST: its reason is the reply, the reset is expected.
    stream.on('error', () => undefined);
    if (firstBytes && firstBytes.length > 0) stream.write(firstBytes);
    try {
      const reply = await readStreamReply(stream, o.replyTimeoutMs);
      if (reply.ok) return { stream, agent };
      lastError = new TunnelError(reply.code, reply.message);
      o.log.warn(
        { route, agentId: agent.identity.agentId, code: reply.code, err: reply.message },
        'agent refused stream',
      );
    } catch (err) {
      lastError = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_DIAL_FAILED', String(err));
    }
    stream.destroy();
  }
  throw lastError ?? new TunnelError('TUN_ERR_NO_ROUTE', `no agent holds ${route}`);
}
