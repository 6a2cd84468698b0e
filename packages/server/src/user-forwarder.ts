/**
 * Forwards one user connection to an agent holding its route, whatever the route mode: the
 * stream header names the route, the bytes already read from the user (a ClientHello) follow
 * at once, and agents are tried in turn until one reaches its target, so a leaving or failing
 * agent is skipped. The server never reads past what the mode needed to pick the route.
 */
import type { Socket } from 'node:net';
import { TunnelError, readStreamReply, spliceBytes, type YamuxStream } from '@cluster-tunnel/protocol';
import { type Logger } from '@cluster-tunnel/config';
import type { AgentRegistry } from './agent-registry.js';
import type { ServerMetrics } from './metrics.js';
import { ROUTE_MODES, type RouteModeName } from './route-modes.js';

export interface UserForwarderOptions {
  registry: AgentRegistry;
  metrics: ServerMetrics;
  log: Logger;
  /** How long an agent may take to dial its target and answer. */
  dialTimeoutMs: number;
}

interface SpliceInfo {
  mode: RouteModeName;
  route: string;
  agentId: string;
  remoteAddress: string;
  startedAt: number;
}

export class UserForwarder {
  constructor(private readonly o: UserForwarderOptions) {}

  /**
   * Takes over `socket` (paused, nothing consumed but `firstBytes`) until it closes. Resolves once
   * the connection is spliced to an agent or refused.
   */
  async forward(socket: Socket, label: string, mode: RouteModeName, firstBytes?: Buffer): Promise<void> {
    const { o } = this;
    const remoteAddress = `${socket.remoteAddress}:${socket.remotePort}`;
    const startedAt = Date.now();
    let lastError: TunnelError | undefined;
    for (const agent of o.registry.candidates(label)) {
      let stream: YamuxStream;
      try {
        stream = agent.openStream({ type: 'route', route: label, remoteAddress });
      } catch (err) {
        lastError = err as TunnelError;
        continue;
      }
      stream.on('error', () => undefined);
      if (firstBytes && firstBytes.length > 0) stream.write(firstBytes);
      let reply;
      try {
        reply = await readStreamReply(stream, o.dialTimeoutMs);
      } catch (err) {
        stream.destroy();
        lastError = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_DIAL_FAILED', String(err));
        continue;
      }
      if (!reply.ok) {
        stream.destroy();
        lastError = new TunnelError(reply.code, reply.message);
        o.log.warn(
          { route: label, agentId: agent.identity.agentId, code: reply.code, err: reply.message },
          'agent refused stream',
        );
        continue;
      }
      if (socket.destroyed) {
        stream.destroy();
        return;
      }
      this.splice(socket, stream, {
        mode,
        route: label,
        agentId: agent.identity.agentId,
        remoteAddress,
        startedAt,
      });
      return;
    }
    const code = lastError?.code ?? 'TUN_ERR_NO_ROUTE';
    o.metrics.connections.inc({ mode, outcome: 'no-agent' });
    o.log.info(
      { mode, route: label, remoteAddress, code, err: lastError?.message },
      'user connection refused',
    );
    ROUTE_MODES[mode].refuse(socket, code);
  }

  /**
   * Forwards both ways with half-close kept (FIN ↔ end, spliceBytes) and resets propagated
   * (RST ↔ destroy), and logs the connection's bytes once it has closed.
   */
  private splice(socket: Socket, stream: YamuxStream, info: SpliceInfo): void {
    const { o } = this;
    o.metrics.userStreams.inc();
    o.metrics.connections.inc({ mode: info.mode, outcome: 'forwarded' });
    // Bytes the mode read to pick the route (a ClientHello) were counted by the socket already.
    const firstBytes = socket.bytesRead;
    let bytesOut = 0;
    spliceBytes(socket, stream, (chunk) => {
      bytesOut += chunk.length;
    });
    socket.on('error', () => stream.destroy());
    // A reset stream resets the user connection too (a raw TCP client must not take a cut
    // exchange for a complete one); a finished one has already ended it ('end').
    const resetUser = (): void => {
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
      if (!stream.destroyed && !(stream.readableEnded && stream.writableFinished)) stream.destroy();
      o.metrics.userStreams.dec();
      const bytesIn = socket.bytesRead - firstBytes;
      o.metrics.bytes.inc({ direction: 'in' }, bytesIn);
      o.metrics.bytes.inc({ direction: 'out' }, bytesOut);
      o.log.info(
        {
          mode: info.mode,
          route: info.route,
          agentId: info.agentId,
          remoteAddress: info.remoteAddress,
          bytesIn,
          bytesOut,
          durationMs: Date.now() - info.startedAt,
        },
        'user connection closed',
      );
    });
    // Both were left paused (the route peek, the reply read): start the flow.
    socket.resume();
    stream.resume();
  }
}
