/**
 * The one way any route mode reaches an agent: open a stream to an agent holding the route,
 * write the stream header and the bytes the mode already read (a ClientHello) at once, and
 * wait for the agent's reply. Agents are tried in the registry's order (rotated per call), so
 * a leaving, failing or refusing agent is skipped; only when every one failed does the caller
 * get an error, the last agent's (or TUN_ERR_NO_ROUTE when none holds the route).
 *
 * An agent silent past its hedge deadline (a few of its round trips, at least HEDGE_FLOOR_MS)
 * does not hold the user up: the next agent is tried beside it, the first to accept wins, and
 * the silent one is pinged at once; no answer within its liveness timeout ends its session, so
 * later users never meet it (docs/ARCHITECTURE.md, "Many replicas"). A slow target on a live
 * agent costs one extra dial on another agent, never a failure.
 */
import {
  LIVENESS_RTT_FACTOR,
  TunnelError,
  readStreamReply,
  type StreamType,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { AgentRegistry } from './agent-registry.js';
import type { RegisteredAgent } from './registered-agent.js';

/** An agent may take at least this long to answer before another is tried beside it. */
export const HEDGE_FLOOR_MS = 1_000;

export interface RouteStreamRequest {
  /** The route mode asking, for the metrics (tunnel_stream_open_seconds). */
  mode?: string;
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
  /**
   * Only agents that registered the route in this mode (the public-port modes: what the user's
   * bytes are depends on it). Agents of one cluster may differ for a while, during a rollout
   * from one mode to another: a passthrough user must never reach an agent that ends TLS.
   */
  registeredAs?: string | undefined;
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

/** When to try the next agent beside this one: a few of its round trips, within the bounds. */
function hedgeAfterMs(agent: RegisteredAgent, replyTimeoutMs: number): number {
  const rttMs = agent.session.rttMs();
  const byRtt = rttMs === undefined ? HEDGE_FLOOR_MS : Math.ceil(LIVENESS_RTT_FACTOR * rttMs);
  return Math.min(replyTimeoutMs, Math.max(HEDGE_FLOOR_MS, byRtt));
}

export function openRouteStream(
  o: OpenRouteStreamOptions,
  request: RouteStreamRequest,
): Promise<RouteStream> {
  const { route, remoteAddress, firstBytes } = request;
  const header = { type: request.type ?? 'route', route, remoteAddress, metadata: request.metadata };
  const candidates = o.registry.candidates(route, request.registeredAs);
  return new Promise((resolve, reject) => {
    let next = 0;
    let waiting = 0;
    let done = false;
    let lastError: TunnelError | undefined;

    /** After an attempt ended without a stream: the next agent, or the caller's error. */
    const onFailure = (): void => {
      if (done || waiting > 0) return;
      if (next < candidates.length) tryNext();
      else {
        done = true;
        reject(lastError ?? new TunnelError('TUN_ERR_NO_ROUTE', `no agent holds ${route}`));
      }
    };

    const tryNext = (): void => {
      const agent = candidates[next++]!;
      let stream: YamuxStream;
      try {
        stream = agent.openStream(header);
      } catch (err) {
        lastError = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_SESSION_CLOSED', String(err));
        onFailure();
        return;
      }
      waiting++;
      // A refusal ends in RST: its reason is the reply, the reset is expected.
      stream.on('error', () => undefined);
      if (firstBytes && firstBytes.length > 0) stream.write(firstBytes);
      const hedge = setTimeout(
        () => {
          if (done) return;
          o.log.warn(
            { route, agentId: agent.identity.agentId, silentMs: hedgeAfterMs(agent, o.replyTimeoutMs) },
            'agent slow to answer a stream: checking it, trying another',
          );
          void agent.session.checkLiveness().then((alive) => {
            if (!alive) {
              o.log.warn({ route, agentId: agent.identity.agentId }, 'agent silent: session dropped');
            }
          });
          if (next < candidates.length) tryNext();
        },
        hedgeAfterMs(agent, o.replyTimeoutMs),
      );
      readStreamReply(stream, o.replyTimeoutMs).then(
        (reply) => {
          clearTimeout(hedge);
          waiting--;
          if (reply.ok && !done) {
            done = true;
            resolve({ stream, agent });
            return;
          }
          stream.destroy();
          if (!reply.ok) {
            lastError = new TunnelError(reply.code, reply.message);
            o.log.warn(
              { route, agentId: agent.identity.agentId, code: reply.code, err: reply.message },
              'agent refused stream',
            );
          }
          onFailure();
        },
        (err: unknown) => {
          clearTimeout(hedge);
          waiting--;
          stream.destroy();
          lastError = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_DIAL_FAILED', String(err));
          onFailure();
        },
      );
    };

    onFailure();
  });
}
