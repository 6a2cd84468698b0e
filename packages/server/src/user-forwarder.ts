/**
 * Carries one user connection of a byte-forwarding mode (passthrough, tcp) to its route: a
 * stream from openRouteStream, then bytes both ways with half-close and resets kept, counted
 * and reported once the connection closes. A connection no agent takes is refused the mode's
 * way (a TLS alert, a TCP reset). Every outcome is reported as a UserConnectionEvent and as an
 * audit line (audit.ts).
 */
import type { Socket } from 'node:net';
import { TunnelError, spliceBytes, type ErrorCode } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import { auditConnection } from './audit.js';
import type { ServerMetrics } from './metrics.js';
import type { RouteStream, RouteStreamRequest } from './open-route-stream.js';

/** What happened to one user connection; TunnelServer emits these as 'user-connection'. */
export type UserConnectionEvent =
  | { type: 'forwarded'; mode: string; route: string; agentId: string; remoteAddress: string }
  | { type: 'refused'; mode: string; route: string; remoteAddress: string; code: ErrorCode }
  | {
      type: 'closed';
      mode: string;
      route: string;
      agentId: string;
      remoteAddress: string;
      /** Payload from the user, past what the mode read to pick the route. */
      bytesIn: number;
      bytesOut: number;
      durationMs: number;
      /** 'reset' when either side or the tunnel cut it; then `code` says who or why. */
      outcome: 'closed' | 'reset';
      code: string | null;
    };

export interface UserForwarderOptions {
  /** This replica, for the audit lines. */
  serverId: string;
  openRouteStream: (request: RouteStreamRequest) => Promise<RouteStream>;
  metrics: ServerMetrics;
  log: Logger;
  onEvent: (event: UserConnectionEvent) => void;
}

export interface ForwardRequest {
  mode: string;
  route: string;
  /** Bytes already read from the user (a ClientHello); the agent gets them first. */
  firstBytes?: Buffer | undefined;
  /** Stream header metadata for the agent (RouteStreamRequest). */
  metadata?: Readonly<Record<string, string>>;
  /** Only agents that registered the route in this mode (RouteStreamRequest). */
  registeredAs?: string;
  /** Ends a connection no agent took, in the way the mode's clients understand. */
  refuse: (socket: Socket, code: ErrorCode) => void;
}

export class UserForwarder {
  constructor(private readonly o: UserForwarderOptions) {}

  /**
   * Takes over `socket` (paused, nothing consumed but `firstBytes`) until it closes. Resolves once
   * the connection is spliced to an agent or refused.
   */
  async forward(socket: Socket, request: ForwardRequest): Promise<void> {
    const { o } = this;
    const { mode, route } = request;
    const remoteAddress = `${socket.remoteAddress}:${socket.remotePort}`;
    const startedAt = Date.now();
    let routed: RouteStream;
    try {
      routed = await o.openRouteStream({
        mode,
        route,
        remoteAddress,
        firstBytes: request.firstBytes,
        registeredAs: request.registeredAs,
        ...(request.metadata === undefined ? {} : { metadata: request.metadata }),
      });
    } catch (err) {
      const e = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_DIAL_FAILED', String(err));
      o.metrics.connections.inc({ mode, outcome: 'no-agent' });
      o.metrics.refusals.inc({ mode, code: e.code });
      auditConnection(o.log, {
        mode,
        route,
        agentId: null,
        serverId: o.serverId,
        remoteAddress,
        bytesIn: 0,
        bytesOut: 0,
        durationMs: Date.now() - startedAt,
        code: e.code,
        outcome: 'refused',
      });
      o.onEvent({ type: 'refused', mode, route, remoteAddress, code: e.code });
      request.refuse(socket, e.code);
      return;
    }
    if (socket.destroyed) {
      routed.stream.destroy();
      return;
    }
    const agentId = routed.agent.identity.agentId;
    o.onEvent({ type: 'forwarded', mode, route, agentId, remoteAddress });
    this.splice(socket, routed, { mode, route, agentId, remoteAddress, startedAt });
  }

  /**
   * Forwards both ways with half-close kept (FIN ↔ end, spliceBytes) and resets propagated
   * (RST ↔ destroy), and reports the connection's bytes once it has closed.
   */
  private splice(
    socket: Socket,
    { stream }: RouteStream,
    info: { mode: string; route: string; agentId: string; remoteAddress: string; startedAt: number },
  ): void {
    const { o } = this;
    o.metrics.userStreams.inc({ mode: info.mode });
    o.metrics.connections.inc({ mode: info.mode, outcome: 'forwarded' });
    // Bytes the mode read to pick the route (a ClientHello) were counted by the socket already.
    const firstBytes = socket.bytesRead;
    let bytesOut = 0;
    spliceBytes(socket, stream, (chunk) => {
      bytesOut += chunk.length;
    });
    // Why it ended, for the audit line: the first cut wins (the user's, or the agent's side).
    let code: string | null = null;
    socket.on('error', (err: NodeJS.ErrnoException) => {
      code ??= err.code ?? 'ECONNRESET';
      stream.destroy();
    });
    // A reset stream resets the user connection too (a raw TCP client must not take a cut
    // exchange for a complete one); a finished one has already ended it ('end').
    const resetUser = (): void => {
      code ??= stream.resetReason?.code ?? 'TUN_ERR_STREAM_RESET';
      if (!socket.destroyed) socket.resetAndDestroy();
    };
    stream.on('error', resetUser);
    stream.on('close', () => {
      if (!stream.readableEnded || !stream.writableFinished) resetUser();
    });
    let done = false;
    socket.once('close', () => {
      if (done) return;
      done = true;
      // A user gone before the stream finished cut it (no error event for a plain close).
      if (!stream.destroyed && !(stream.readableEnded && stream.writableFinished)) {
        code ??= 'ECONNRESET';
        stream.destroy();
      }
      o.metrics.userStreams.dec({ mode: info.mode });
      const bytesIn = socket.bytesRead - firstBytes;
      o.metrics.userBytes(info.mode, info.route, bytesIn, bytesOut);
      const { startedAt, ...rest } = info;
      const outcome = code === null ? ('closed' as const) : ('reset' as const);
      const closed = { ...rest, bytesIn, bytesOut, durationMs: Date.now() - startedAt, outcome, code };
      auditConnection(o.log, { ...closed, serverId: o.serverId });
      o.onEvent({ type: 'closed', ...closed });
    });
    // Both were left paused (the route peek, the reply read): start the flow.
    socket.resume();
    stream.resume();
  }
}
