import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  CAPABILITIES,
  CONTROL_PROTOCOL_VERSION,
  ControlChannel,
  MIN_PROTOCOL_VERSION,
  SUPPORTED_CAPABILITIES,
  TokenBucket,
  TunnelError,
  WEBSOCKET_VERSION,
  YamuxSession,
  checkUpgradeRequest,
  clusterOfLabel,
  createWebSocketDuplex,
  negotiateCapabilities,
  upgradeResponseHead,
  type CertificateRequestMessage,
  type ControlMessage,
  type ErrorCode,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { MAX_TIMER_MS, type Logger } from '@cluster-tunnel/config';
import { RegisteredAgent, type AgentIdentity } from './registered-agent.js';
import type { AgentRegistry } from './agent-registry.js';
import type { ServerMetrics } from './metrics.js';
import { requestPath } from './request-path.js';
import type { RouteCertificateAuthority } from './route-ca.js';
import type { TokenVerifier, VerifiedToken } from './token-verifier.js';

export const AGENT_PATH = '/connect';
/** How long a new agent has to open its control stream and register. */
const REGISTER_TIMEOUT_MS = 10_000;
/**
 * Route certificate requests one session may make: a burst of 5, then one a minute. An agent
 * asks once per registration without a valid certificate and once per renewal (docs/SECURITY.md).
 */
const CERTIFICATE_REQUEST_BURST = 5;
const CERTIFICATE_REQUESTS_PER_SECOND = 1 / 60;
/**
 * Requests refused for the rate (or for one being signed already) after which the session ends:
 * our agent backs off for seconds to minutes between tries and never comes near; one that keeps
 * asking is flooding, and would otherwise cost a log line each.
 */
const MAX_CERTIFICATE_REQUESTS_OVER_LIMIT = 16;

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  TUN_ERR_AUTH_REQUIRED: 401,
  TUN_ERR_TOKEN_INVALID: 401,
  TUN_ERR_TOKEN_EXPIRED: 401,
  TUN_ERR_UNKNOWN_KEY: 401,
  TUN_ERR_TOKEN_REVOKED: 403,
  TUN_ERR_LIMIT_EXCEEDED: 429,
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
  /** Sessions one cluster's agents may hold on this server (registered or registering). */
  maxAgentsPerCluster: number;
  /** Each agent session's memory budget (the yamux session's maxBufferedBytes). */
  maxSessionBufferedBytes: number;
  /** The verifier's clock tolerance: a session ends this long after its token's `exp`, as verify() would. */
  tokenClockToleranceMs: number;
  verifier: TokenVerifier;
  registry: AgentRegistry;
  metrics: ServerMetrics;
  log: Logger;
  /** Route modes an agent may name for its routes on the public port (`routeModes` in register). */
  routeModes: ReadonlySet<string>;
  /** Called for every agent refused or ended for a reason of its own (also counted in metrics). */
  onRefusal?: (refusal: AgentRefusal) => void;
  /** Signing agents' agent-tls route certificates (route-ca.ts). */
  routeCertificates: RouteCertificateSigning;
}

export interface RouteCertificateSigning {
  /** undefined: this server signs none, and `unavailable` says why. */
  ca: RouteCertificateAuthority | undefined;
  unavailable: string;
  lifetimeMs: number;
}

/** An agent refused at the upgrade or at registration, or whose session was ended (its token). */
export interface AgentRefusal {
  code: ErrorCode;
  remoteAddress: string;
  /** From the verified token, once there is one. */
  clusterId?: string | undefined;
}

/** A session from its accepted upgrade on: who it is, and the timer that ends it at token expiry. */
interface Connected {
  token: VerifiedToken;
  remoteAddress: string;
  expiryTimer: NodeJS.Timeout | undefined;
  /** Set once the agent opened its control stream. */
  control: ControlChannel | undefined;
  /** Set once registered. */
  agent: RegisteredAgent | undefined;
  /** Route certificate requests: the rate limit, whether one is being signed now, refusals for either. */
  certificateRequests: TokenBucket;
  signing: boolean;
  certificateRequestsOverLimit: number;
}

/**
 * The agent side of the public port: checks and authenticates the WebSocket upgrade (a refused
 * agent costs one HTTP response, no WebSocket), answers the RFC 6455 handshake itself
 * (websocket/handshake.ts), runs the yamux session and the register handshake, and puts the agent's
 * routes into the registry. A session lives only as long as its token: it ends at the token's
 * expiry and as soon as the token is revoked (docs/SECURITY.md).
 */
export class AgentEndpoint {
  private readonly sessions = new Map<YamuxSession, Connected>();
  private readonly perCluster = new Map<string, number>();

  constructor(private readonly o: AgentEndpointOptions) {}

  /** Resolves true once the WebSocket is accepted (101 sent), false when the agent was refused. */
  async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<boolean> {
    const remoteAddress = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    socket.on('error', () => undefined);
    const path = requestPath(req);
    if (path !== AGENT_PATH) {
      if (path === undefined) refuse(socket, 400, 'TUN_ERR_PROTOCOL', 'malformed request target');
      else refuse(socket, 404, 'TUN_ERR_PROTOCOL', 'no such endpoint');
      return false;
    }
    let key: string;
    try {
      // Cheap checks first: a request that is no WebSocket upgrade costs no token verification.
      key = checkUpgradeRequest(req);
    } catch (err) {
      const e = err as TunnelError;
      const status = e.details?.status as number;
      this.refused({ code: e.code, remoteAddress });
      this.o.log.warn({ code: e.code, status, remoteAddress, err: e.message }, 'agent refused');
      // RFC 6455 §4.4: a 426 names the version the server speaks.
      refuse(
        socket,
        status,
        e.code,
        e.message,
        status === 426 ? { 'Sec-WebSocket-Version': WEBSOCKET_VERSION } : {},
      );
      return false;
    }
    let token: VerifiedToken;
    try {
      token = await this.authenticate(req);
      this.checkCapacity(token.clusterId);
    } catch (err) {
      const e =
        err instanceof TunnelError ? err : new TunnelError('TUN_ERR_TOKEN_INVALID', 'token check failed');
      this.refused({ code: e.code, remoteAddress });
      this.o.log.warn({ code: e.code, remoteAddress, err: e.message }, 'agent refused');
      refuse(socket, HTTP_STATUS[e.code] ?? 401, e.code, e.message);
      return false;
    }
    // The agent may have left (or run out of time) while its token was verified.
    if (socket.destroyed || !socket.writable) return false;
    socket.write(upgradeResponseHead(key));
    this.onWebSocket(socket, head, token, remoteAddress);
    return true;
  }

  /** Sends GoAway to every agent and waits for their streams (bounded by the caller). */
  async close(): Promise<void> {
    for (const [session, c] of this.sessions) if (!c.agent) session.destroy();
    await Promise.all(this.o.registry.all().map((a) => a.close()));
  }

  destroy(): void {
    for (const session of this.sessions.keys()) session.destroy();
  }

  /** The revocation list changed: every session whose token is on it ends now. */
  onRevocations(revoked: ReadonlySet<string>): void {
    for (const [session, c] of this.sessions) {
      if (revoked.has(c.token.tokenId)) {
        this.end(session, c, 'TUN_ERR_TOKEN_REVOKED', `token ${c.token.tokenId} was revoked`);
      }
    }
  }

  private refused(refusal: AgentRefusal): void {
    this.o.metrics.agentRefusals.inc({ code: refusal.code });
    this.o.onRefusal?.(refusal);
  }

  private checkCapacity(clusterId: string): void {
    if (this.sessions.size >= this.o.maxAgents) {
      throw new TunnelError('TUN_ERR_SERVER_FULL', `server holds ${this.o.maxAgents} agents`);
    }
    if ((this.perCluster.get(clusterId) ?? 0) >= this.o.maxAgentsPerCluster) {
      throw new TunnelError(
        'TUN_ERR_LIMIT_EXCEEDED',
        `cluster ${clusterId} holds ${this.o.maxAgentsPerCluster} agent sessions on this server already`,
        { details: { limit: 'maxAgentsPerCluster' } },
      );
    }
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
      // An agent opens exactly one stream, the control stream; more are refused (RST).
      acceptBacklog: 1,
      maxInboundStreams: 1,
      maxBufferedBytes: this.o.maxSessionBufferedBytes,
    });
    const connected: Connected = {
      token,
      remoteAddress,
      expiryTimer: undefined,
      control: undefined,
      agent: undefined,
      certificateRequests: new TokenBucket(
        CERTIFICATE_REQUESTS_PER_SECOND,
        CERTIFICATE_REQUEST_BURST,
        Date.now,
      ),
      signing: false,
      certificateRequestsOverLimit: 0,
    };
    this.sessions.set(session, connected);
    const { clusterId } = token;
    this.perCluster.set(clusterId, (this.perCluster.get(clusterId) ?? 0) + 1);
    this.armExpiry(session, connected);
    session.on('pause', (limit: string) => this.o.metrics.sessionPauses.inc({ limit }));
    // From the session's first ping (sent at once) on: the early RTT counts too.
    session.on('rtt', (ms: number) => this.o.metrics.rttSeconds.observe(ms / 1000));
    // Once per session: a peer at the edge of a limit pauses and resumes many times.
    session.once('pause', (limit: string) => {
      this.o.log.warn({ clusterId, remoteAddress, limit }, 'agent over a session limit: not reading it');
    });
    session.once('close', () => {
      clearTimeout(connected.expiryTimer);
      this.sessions.delete(session);
      const left = (this.perCluster.get(clusterId) ?? 1) - 1;
      if (left > 0) this.perCluster.set(clusterId, left);
      else this.perCluster.delete(clusterId);
    });
    this.register(session, connected, remoteAddress).catch((err: unknown) => {
      // A session that failed (a flood, a protocol violation) also fails whatever waited on
      // it: its own reason is the one to report.
      const e =
        session.failureReason ??
        (err instanceof TunnelError ? err : new TunnelError('TUN_ERR_PROTOCOL', String(err)));
      this.refused({ code: e.code, remoteAddress, clusterId });
      this.o.log.warn(
        { clusterId, remoteAddress, code: e.code, err: e.message },
        'agent registration failed',
      );
      session.close().catch(() => undefined);
      setTimeout(() => session.destroy(), 2_000).unref();
    });
  }

  /** Ends the session when its token expires (a timer re-armed for expiries beyond setTimeout's range). */
  private armExpiry(session: YamuxSession, c: Connected): void {
    const leftMs = c.token.expiresAt.getTime() + this.o.tokenClockToleranceMs - Date.now();
    if (leftMs <= 0) {
      this.end(session, c, 'TUN_ERR_TOKEN_EXPIRED', 'the token has expired');
      return;
    }
    c.expiryTimer = setTimeout(() => this.armExpiry(session, c), Math.min(leftMs, MAX_TIMER_MS));
    c.expiryTimer.unref();
  }

  /**
   * Ends a session for a reason of its own (its token): the agent hears the code on the control
   * stream, then GoAway, then the connection closes.
   */
  private end(session: YamuxSession, c: Connected, code: ErrorCode, message: string): void {
    if (session.isClosed) return;
    this.refused({ code, remoteAddress: c.remoteAddress, clusterId: c.token.clusterId });
    this.o.log.warn(
      { clusterId: c.token.clusterId, tokenId: c.token.tokenId, agentId: c.agent?.identity.agentId, code },
      'agent session ended',
    );
    c.control?.send({ type: 'error', code, message });
    session.destroy(new TunnelError(code, message));
  }

  private async register(session: YamuxSession, c: Connected, remoteAddress: string): Promise<void> {
    const { token } = c;
    // Every wait below also ends when the session does, with the session's reason (a flood can
    // end it while the control stream is being handed over).
    const ended = new Promise<never>((_, reject) =>
      session.once('close', (err?: TunnelError) =>
        reject(err ?? new TunnelError('TUN_ERR_SESSION_CLOSED', 'agent left before registering')),
      ),
    );
    ended.catch(() => undefined);
    const controlStream = await Promise.race([firstStream(session, REGISTER_TIMEOUT_MS), ended]);
    const control = new ControlChannel(controlStream);
    c.control = control;
    // The agent says `register`, then only `certificate-request` once registered with the
    // capability: anything else, or a malformed message, is a protocol violation that ends the session.
    let messages = 0;
    control.on('message', (m: ControlMessage) => {
      if (++messages === 1) return; // next() takes it
      if (m.type === 'certificate-request' && c.agent?.capabilities.has(CAPABILITIES.routeCertificates)) {
        void this.signRouteCertificate(session, c, c.agent, m);
        return;
      }
      this.end(session, c, 'TUN_ERR_BAD_CONTROL_MESSAGE', `unexpected ${m.type} after register`);
    });
    control.on('error', (err: TunnelError) => this.end(session, c, err.code, err.message));
    const message = await Promise.race([control.next(REGISTER_TIMEOUT_MS), ended]);
    const fail = (code: ErrorCode, text: string): never => {
      control.send({ type: 'error', code, message: text });
      throw new TunnelError(code, text);
    };
    if (message.type !== 'register')
      fail('TUN_ERR_BAD_CONTROL_MESSAGE', `expected register, got ${message.type}`);
    if (message.type !== 'register') return; // narrowing only
    // A major version this server speaks; what differs within one is negotiated (capabilities).
    const { protocolVersion } = message;
    if (protocolVersion < MIN_PROTOCOL_VERSION || protocolVersion > CONTROL_PROTOCOL_VERSION) {
      fail(
        'TUN_ERR_UNSUPPORTED_VERSION',
        // An agent announces one version: its range is that version alone.
        `the agent speaks protocol versions ${protocolVersion}-${protocolVersion}, ` +
          `this server ${MIN_PROTOCOL_VERSION}-${CONTROL_PROTOCOL_VERSION}: ` +
          (protocolVersion > CONTROL_PROTOCOL_VERSION ? 'upgrade the server' : 'upgrade the agent'),
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
      tokenExpiresAt: token.expiresAt,
      remoteAddress,
    };
    // Names this server does not know are ignored: that is how newer agents work with it.
    const capabilities = negotiateCapabilities(message.capabilities);
    // A route whose mode this server does not run is left out (registered says which are in).
    const routeModes = new Map<string, string>();
    const unserved: string[] = [];
    for (const [label, mode] of Object.entries(message.routeModes ?? {})) {
      const key = label.toLowerCase();
      if (mode === 'passthrough') continue;
      if (this.o.routeModes.has(mode)) routeModes.set(key, mode);
      else unserved.push(key);
    }
    if (unserved.length > 0) {
      this.o.log.warn(
        {
          agentId: identity.agentId,
          clusterId: identity.clusterId,
          routes: unserved,
          code: 'TUN_ERR_UNKNOWN_ROUTE',
        },
        'routes in a mode this server does not run: not routed',
      );
    }
    const served = labels.filter((l) => !unserved.includes(l));
    const hostHeaders = new Map(
      Object.entries(message.hostHeaders ?? {}).map(([label, host]) => [label.toLowerCase(), host] as const),
    );
    const agent = new RegisteredAgent(identity, session, served, capabilities, routeModes, hostHeaders);
    c.agent = agent;
    const log = this.o.log.child({ agentId: identity.agentId, clusterId: identity.clusterId });
    // The control stream lives as long as the session: the agent ending it is leaving.
    control.once('close', () => {
      if (!session.isClosed && !session.isGoingAway) {
        log.info('agent closed its control stream');
        session.close().catch(() => undefined);
      }
    });
    // Agents never open more streams (maxInboundStreams refuses them): the fallback resets any.
    session.on('stream', (extra: YamuxStream) => extra.destroy());
    // An agent probing for a replica it has no session to lands here again: it leaves at once,
    // so its coming and going is debug, counted by a metric instead.
    const duplicate = this.o.registry.holdsAgent(identity.clusterId, identity.agentId);
    if (duplicate) this.o.metrics.duplicateSessions.inc();
    const level = duplicate ? 'debug' : 'info';
    this.o.registry.add(agent);
    this.o.metrics.agentsConnected.inc();
    const hostnames = served.map((l) => `${l}.${this.o.domain}`);
    control.send({
      type: 'registered',
      serverId: this.o.serverId,
      hostnames,
      serverCount: this.o.serverCount,
      capabilities: [...SUPPORTED_CAPABILITIES],
    });
    log[level](
      {
        hostnames,
        remoteAddress,
        agentVersion: identity.agentVersion,
        capabilities: [...capabilities],
        ...(duplicate ? { duplicate } : {}),
      },
      'agent connected',
    );
    session.once('close', (err?: TunnelError) => {
      this.o.registry.remove(agent);
      this.o.metrics.agentsConnected.dec();
      this.o.metrics.sessionsEnded.inc({ cause: err?.code ?? 'clean' });
      this.o.metrics.sessionEnded(session.stats);
      log[level]({ durationMs: Date.now() - agent.connectedAt, code: err?.code }, 'agent disconnected');
    });
    // Revoked while it registered: the list was checked when the token was verified.
    if (this.o.verifier.isRevoked(token.tokenId)) {
      this.end(session, c, 'TUN_ERR_TOKEN_REVOKED', `token ${token.tokenId} was revoked`);
    }
  }

  /**
   * Answers one `certificate-request`: a certificate for the agent's agent-tls route hostnames,
   * or a coded `error` with its requestId. A refused request ends nothing: the agent may retry.
   */
  private async signRouteCertificate(
    session: YamuxSession,
    c: Connected,
    agent: RegisteredAgent,
    m: CertificateRequestMessage,
  ): Promise<void> {
    const { agentId, clusterId } = agent.identity;
    const { requestId } = m;
    const refuse = (code: ErrorCode, message: string, quiet = false): void => {
      this.o.metrics.routeCertificateRequests.inc({ outcome: code });
      const fields = { agentId, clusterId, requestId, code, err: message };
      if (quiet) this.o.log.debug(fields, 'route certificate refused');
      else this.o.log.warn(fields, 'route certificate refused');
      c.control?.send({ type: 'error', code, message, requestId });
    };
    /** Too soon: refused, said once per session; far too often, the session ends. */
    const overLimit = (message: string): void => {
      const times = ++c.certificateRequestsOverLimit;
      if (times > MAX_CERTIFICATE_REQUESTS_OVER_LIMIT) {
        this.end(session, c, 'TUN_ERR_LIMIT_EXCEEDED', `certificate requests far over the limit: ${message}`);
        return;
      }
      refuse('TUN_ERR_CERT_SIGNING_REFUSED', message, times > 1);
    };
    const signing = this.o.routeCertificates;
    if (signing.ca === undefined) return refuse('TUN_ERR_CERT_SIGNING_REFUSED', signing.unavailable);
    if (c.signing) return overLimit('one request at a time per session');
    if (!c.certificateRequests.take()) {
      return overLimit(
        `more than ${CERTIFICATE_REQUEST_BURST} certificate requests, then one a minute, per session`,
      );
    }
    // Registration allowed only the token's cluster's labels; of those, the agent-tls ones.
    const allowed = new Set(
      agent.labels.filter((l) => agent.modeOf(l) === 'agent-tls').map((l) => `${l}.${this.o.domain}`),
    );
    c.signing = true;
    let pem: string;
    try {
      const issued = await signing.ca.sign(m.csr, allowed, signing.lifetimeMs);
      pem = issued.pem;
      this.o.log.info(
        {
          agentId,
          clusterId,
          requestId,
          hostnames: issued.hostnames,
          serialNumber: issued.serialNumber,
          notAfter: issued.notAfter.toISOString(),
        },
        'route certificate issued',
      );
    } catch (err) {
      const e = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_CSR_INVALID', String(err));
      return refuse(e.code, e.message);
    } finally {
      c.signing = false;
    }
    if (session.isClosed) return;
    this.o.metrics.routeCertificateRequests.inc({ outcome: 'issued' });
    c.control?.send({ type: 'certificate', requestId, certificate: pem });
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
