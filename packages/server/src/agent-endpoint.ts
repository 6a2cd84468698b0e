import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  CONTROL_PROTOCOL_VERSION,
  ControlChannel,
  TunnelError,
  WEBSOCKET_VERSION,
  YamuxSession,
  checkUpgradeRequest,
  clusterOfLabel,
  createWebSocketDuplex,
  upgradeResponseHead,
  type ErrorCode,
  type Logger,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { AgentSession, type AgentIdentity } from './agent-session.js';
import type { AgentRegistry } from './agent-registry.js';
import type { ServerMetrics } from './metrics.js';
import type { TokenVerifier, VerifiedToken } from './token-verifier.js';

export const AGENT_PATH = '/connect';
/** How long a new agent has to open its control stream and register. */
const REGISTER_TIMEOUT_MS = 10_000;

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  TUN_ERR_AUTH_REQUIRED: 401,
  TUN_ERR_TOKEN_INVALID: 401,
  TUN_ERR_TOKEN_EXPIRED: 401,
  TUN_ERR_UNKNOWN_KEY: 401,
  TUN_ERR_TOKEN_REVOKED: 403,
  TUN_ERR_SERVER_FULL: 503,
};

export interface AgentEndpointOptions {
  serverId: string;
  /** Replicas behind the load balancer: the agent dials until it holds a session to each. */
  serverCount: number;
  domain: string;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  maxAgents: number;
  verifier: TokenVerifier;
  registry: AgentRegistry;
  metrics: ServerMetrics;
  log: Logger;
}

/**
 * The agent side of the public port: checks and authenticates the WebSocket upgrade (a refused
 * agent costs one HTTP response, no WebSocket), answers the RFC 6455 handshake itself
 * (ws-handshake.ts), runs the yamux session and the register handshake, and puts the agent's
 * routes into the registry.
 */
export class AgentEndpoint {
  private readonly pending = new Set<YamuxSession>();

  constructor(private readonly o: AgentEndpointOptions) {}

  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const remoteAddress = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    socket.on('error', () => undefined);
    if (new URL(req.url ?? '/', 'http://x').pathname !== AGENT_PATH) {
      refuse(socket, 404, 'TUN_ERR_PROTOCOL', 'no such endpoint');
      return;
    }
    let key: string;
    try {
      // Cheap checks first: a request that is no WebSocket upgrade costs no token verification.
      key = checkUpgradeRequest(req);
    } catch (err) {
      const e = err as TunnelError;
      const status = e.details?.status as number;
      this.o.metrics.agentRefusals.inc({ code: e.code });
      this.o.log.warn({ code: e.code, status, remoteAddress, err: e.message }, 'agent refused');
      // RFC 6455 §4.4: a 426 names the version the server speaks.
      refuse(
        socket,
        status,
        e.code,
        e.message,
        status === 426 ? { 'Sec-WebSocket-Version': WEBSOCKET_VERSION } : {},
      );
      return;
    }
    let token: VerifiedToken;
    try {
      token = await this.authenticate(req);
      if (this.o.registry.size + this.pending.size >= this.o.maxAgents) {
        throw new TunnelError('TUN_ERR_SERVER_FULL', `server holds ${this.o.maxAgents} agents`);
      }
    } catch (err) {
      const e =
        err instanceof TunnelError ? err : new TunnelError('TUN_ERR_TOKEN_INVALID', 'token check failed');
      this.o.metrics.agentRefusals.inc({ code: e.code });
      this.o.log.warn({ code: e.code, remoteAddress, err: e.message }, 'agent refused');
      refuse(socket, HTTP_STATUS[e.code] ?? 401, e.code, e.message);
      return;
    }
    // The agent may have left while its token was verified.
    if (socket.destroyed || !socket.writable) return;
    socket.write(upgradeResponseHead(key));
    this.onWebSocket(socket, head, token, remoteAddress);
  }

  /** Sends GoAway to every agent and waits for their streams (bounded by the caller). */
  async close(): Promise<void> {
    for (const s of this.pending) s.destroy();
    await Promise.all(this.o.registry.all().map((a) => a.close()));
  }

  destroy(): void {
    for (const s of this.pending) s.destroy();
    for (const a of this.o.registry.all()) a.destroy();
  }

  private async authenticate(req: IncomingMessage): Promise<VerifiedToken> {
    const header = req.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match) throw new TunnelError('TUN_ERR_AUTH_REQUIRED', 'send Authorization: Bearer <agent token>');
    return this.o.verifier.verify(match[1]!);
  }

  private onWebSocket(socket: Duplex, head: Buffer, token: VerifiedToken, remoteAddress: string): void {
    const session = new YamuxSession(createWebSocketDuplex(socket, { role: 'server', head }), {
      role: 'server',
      keepaliveIntervalMs: this.o.keepaliveIntervalMs,
      keepaliveTimeoutMs: this.o.keepaliveTimeoutMs,
    });
    this.pending.add(session);
    session.once('close', () => this.pending.delete(session));
    this.register(session, token, remoteAddress).catch((err: unknown) => {
      const e = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_PROTOCOL', String(err));
      this.o.metrics.agentRefusals.inc({ code: e.code });
      this.o.log.warn(
        { clusterId: token.clusterId, remoteAddress, code: e.code, err: e.message },
        'agent registration failed',
      );
      session.close().catch(() => undefined);
      setTimeout(() => session.destroy(), 2_000).unref();
    });
  }

  private async register(session: YamuxSession, token: VerifiedToken, remoteAddress: string): Promise<void> {
    const controlStream = await firstStream(session, REGISTER_TIMEOUT_MS);
    const control = new ControlChannel(controlStream);
    const message = await control.next(REGISTER_TIMEOUT_MS);
    const fail = (code: ErrorCode, text: string): never => {
      control.send({ type: 'error', code, message: text });
      throw new TunnelError(code, text);
    };
    if (message.type !== 'register')
      fail('TUN_ERR_BAD_CONTROL_MESSAGE', `expected register, got ${message.type}`);
    if (message.type !== 'register') return; // narrowing only
    if (message.protocolVersion !== CONTROL_PROTOCOL_VERSION) {
      fail(
        'TUN_ERR_UNSUPPORTED_VERSION',
        `protocol version ${message.protocolVersion} is not ${CONTROL_PROTOCOL_VERSION}`,
      );
    }
    const labels = [...new Set(message.routes.map((r) => r.toLowerCase()))];
    const foreign = labels.filter((label) => clusterOfLabel(label) !== token.clusterId);
    if (foreign.length > 0) {
      fail(
        'TUN_ERR_ROUTE_FORBIDDEN',
        `cluster ${token.clusterId} may hold only cluster-${token.clusterId} and cluster-${token.clusterId}-<name>; refused ${foreign.join(', ')}`,
      );
    }
    if (session.isClosed) throw new TunnelError('TUN_ERR_SESSION_CLOSED', 'agent left during registration');
    const identity: AgentIdentity = {
      agentId: message.agentId,
      agentVersion: message.agentVersion,
      clusterId: token.clusterId,
      tokenId: token.tokenId,
      remoteAddress,
    };
    const agent = new AgentSession(identity, session, control, labels);
    // Agents never open more streams: anything after the control stream is refused.
    session.on('stream', (extra: YamuxStream) => extra.destroy());
    this.pending.delete(session);
    this.o.registry.add(agent);
    this.o.metrics.agentsConnected.inc();
    const hostnames = labels.map((l) => `${l}.${this.o.domain}`);
    control.send({
      type: 'registered',
      serverId: this.o.serverId,
      hostnames,
      serverCount: this.o.serverCount,
    });
    const log = this.o.log.child({ agentId: identity.agentId, clusterId: identity.clusterId });
    log.info({ hostnames, remoteAddress, agentVersion: identity.agentVersion }, 'agent connected');
    session.once('close', (err?: TunnelError) => {
      this.o.registry.remove(agent);
      this.o.metrics.agentsConnected.dec();
      log.info({ durationMs: Date.now() - agent.connectedAt, code: err?.code }, 'agent disconnected');
    });
  }
}

function firstStream(session: YamuxSession, timeoutMs: number): Promise<YamuxStream> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      session.off('stream', onStream);
      reject(new TunnelError('TUN_ERR_TIMEOUT', `no control stream within ${timeoutMs} ms`));
    }, timeoutMs);
    const onStream = (stream: YamuxStream): void => {
      clearTimeout(timer);
      session.off('close', onClose);
      resolve(stream);
    };
    const onClose = (): void => {
      clearTimeout(timer);
      session.off('stream', onStream);
      reject(new TunnelError('TUN_ERR_SESSION_CLOSED', 'agent left before registering'));
    };
    session.once('stream', onStream);
    session.once('close', onClose);
  });
}

/** A refused upgrade: a plain HTTP response with the coded reason, then the socket closes. */
function refuse(
  socket: Duplex,
  status: number,
  code: ErrorCode,
  message: string,
  headers: Record<string, string> = {},
): void {
  const body = JSON.stringify({ code, message });
  const extra = Object.entries(headers)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n${extra}Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}
