import { mkdir, readFile, access } from 'node:fs/promises';
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { join } from 'node:path';
import tls from 'node:tls';
import { TunnelError, systemClock } from '@cluster-tunnel/protocol';
import { formatHostPort, type Logger } from '@cluster-tunnel/config';
import { AdminServer } from './admin-server.js';
import { AgentEndpoint } from './agent-endpoint.js';
import { AgentRegistry } from './agent-registry.js';
import { CA_FILES, CertificateAuthority } from './certificate-authority.js';
import { tightenPermissions } from './data-file.js';
import { readClientHello } from './client-hello.js';
import type { ServerConfig } from './config.js';
import { ServerMetrics } from './metrics.js';
import { routeLabelOf } from './passthrough.js';
import { PendingConnections, type PendingConnection, type PendingPhase } from './pending-connections.js';
import { requestPath } from './request-path.js';
import { TcpRouteListener, type TcpRouteStatus } from './tcp-route.js';
import { TLS_ALERT } from './tls-alert.js';
import { SIGNING_KEY_FILES, loadOrCreateSigningKeyPair } from './token-issuer.js';
import { TokenVerifier } from './token-verifier.js';
import { UserForwarder } from './user-forwarder.js';

/** `start --print-next-steps` writes a demo agent token here, in the data directory (mode 0600). */
export const DEMO_TOKEN_FILE = 'demo.token';

/** Request headers of the own-name endpoints (agent upgrade, probes); larger ones get 431. */
export const MAX_REQUEST_HEADER_BYTES = 16 * 1024;

export interface TunnelServerDeps {
  log: Logger;
}

/**
 * The public tunnel server: one TLS port where the ClientHello's SNI decides between the
 * server's own endpoints (agent WebSocket, health) and user routes forwarded to agents.
 */
export class TunnelServer {
  readonly registry = new AgentRegistry();
  readonly metrics = new ServerMetrics();
  private readonly log: Logger;
  private readonly publicServer: net.Server;
  private readonly httpServer: http.Server;
  private readonly forwarder: UserForwarder;
  private readonly tcpRoutes: TcpRouteListener[];
  private endpoint: AgentEndpoint | undefined;
  private verifier: TokenVerifier | undefined;
  private admin: AdminServer | undefined;
  private secureContext: tls.SecureContext | undefined;
  private ownNames: ReadonlySet<string>;
  private draining = false;
  private closing: Promise<void> | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly pending: PendingConnections;
  /** The pending entry of each TLS socket handed to the own-name HTTP server. */
  private readonly pendingOf = new WeakMap<Duplex, PendingConnection>();
  private readonly refusalLog = new Map<string, number>();

  constructor(
    readonly config: Readonly<ServerConfig>,
    deps: TunnelServerDeps,
  ) {
    this.log = deps.log;
    this.ownNames = new Set([config.domain, 'localhost']);
    this.forwarder = new UserForwarder({
      registry: this.registry,
      metrics: this.metrics,
      log: this.log,
      dialTimeoutMs: config.agentReplyTimeoutMs,
    });
    this.tcpRoutes = config.tcpRoutes.map(
      (route) => new TcpRouteListener({ route, forwarder: this.forwarder, log: this.log }),
    );
    this.publicServer = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) =>
      this.onConnection(socket),
    );
    this.pending = new PendingConnections({
      deadlineMs: config.handshakeTimeoutMs,
      maxPending: config.maxPendingConnections,
      maxPendingPerAddress: config.maxPendingConnectionsPerAddress,
      clock: systemClock,
      onTimeout: (socket, phase) => this.onHandshakeTimeout(socket, phase),
      onSize: (size) => this.metrics.pendingConnections.set(size),
    });
    // Never listen()ed: connections come from serveOwn. Its own timeouts need listen(), so the
    // pending deadline bounds the headers instead; own-name responses close the connection.
    this.httpServer = http.createServer({ maxHeaderSize: MAX_REQUEST_HEADER_BYTES }, (req, res) =>
      this.onOwnRequest(req, res),
    );
    this.httpServer.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) =>
      this.onClientError(err, socket),
    );
    this.httpServer.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) =>
      this.onUpgrade(req, socket, head),
    );
  }

  async start(): Promise<void> {
    const c = this.config;
    await mkdir(c.dataDir, { recursive: true, mode: 0o700 });
    const secrets = [CA_FILES.caKey, CA_FILES.serverKey, SIGNING_KEY_FILES.privateKey, DEMO_TOKEN_FILE];
    const { tightened, stillLoose } = await tightenPermissions(c.dataDir, secrets);
    if (tightened.length > 0) this.log.warn({ paths: tightened }, 'data directory permissions tightened');
    if (stillLoose.length > 0) {
      this.log.warn({ paths: stillLoose }, 'data directory readable by others: cannot change its mode');
    }
    let cert: string;
    let key: string;
    if (c.tlsCert && c.tlsKey) {
      [cert, key] = await Promise.all([readFile(c.tlsCert, 'utf8'), readFile(c.tlsKey, 'utf8')]);
    } else {
      const ca = await CertificateAuthority.loadOrCreate({ dataDir: c.dataDir, domain: c.domain });
      [cert, key] = [ca.serverCertPem, ca.serverKeyPem];
    }
    this.secureContext = tls.createSecureContext({ cert, key });
    const defaultPublicKey = join(c.dataDir, SIGNING_KEY_FILES.publicKey);
    if (c.tokenPublicKey.includes(defaultPublicKey) && !(await exists(defaultPublicKey))) {
      // First start on the defaults: make the signing pair `token create` uses.
      await loadOrCreateSigningKeyPair(c.dataDir);
      this.log.info({ dataDir: c.dataDir }, 'token signing key created');
    }
    const publicKeyPems = await Promise.all(c.tokenPublicKey.map((f) => readFile(f, 'utf8')));
    this.verifier = new TokenVerifier({
      publicKeyPems,
      audience: c.domain,
      maxLifetimeMs: c.maxTokenLifetimeMs,
      clockToleranceMs: c.tokenClockToleranceMs,
      revocationFile: c.revokedFile,
    });
    this.endpoint = new AgentEndpoint({
      serverId: c.serverId,
      serverCount: c.serverCount,
      domain: c.domain,
      keepaliveIntervalMs: c.keepaliveIntervalMs,
      keepaliveTimeoutMs: c.keepaliveTimeoutMs,
      maxAgents: c.maxAgents,
      maxAgentsPerCluster: c.maxAgentsPerCluster,
      maxSessionBufferedBytes: c.maxSessionBufferedBytes,
      tokenClockToleranceMs: c.tokenClockToleranceMs,
      verifier: this.verifier,
      registry: this.registry,
      metrics: this.metrics,
      log: this.log,
    });
    // A token revoked while its agent is connected ends that session within the check interval.
    this.verifier.watchRevocations(
      (revoked) => this.endpoint?.onRevocations(revoked),
      (err) =>
        this.log.error(
          { err, revokedFile: c.revokedFile },
          'revocation file unreadable: refusing all agents',
        ),
    );
    await new Promise<void>((resolve, reject) => {
      this.publicServer.once('error', reject);
      this.publicServer.listen(c.listen.port, c.listen.host, () => {
        this.publicServer.off('error', reject);
        resolve();
      });
    });
    // All or nothing: a port that cannot be bound fails the start, as the public port does.
    await Promise.all(this.tcpRoutes.map((r) => r.listen()));
    if (c.adminListen) {
      this.admin = new AdminServer({
        listen: c.adminListen,
        serverId: c.serverId,
        registry: this.registry,
        metrics: this.metrics,
        log: this.log,
        tcpRoutes: () => this.tcpRouteStatus(),
        isReady: () => !this.draining && this.publicServer.listening,
      });
      await this.admin.listen();
    }
    this.log.info(
      {
        serverId: c.serverId,
        serverCount: c.serverCount,
        listen: this.address,
        admin: this.adminAddress,
        domain: c.domain,
      },
      'tunnel server listening',
    );
  }

  get address(): AddressInfo {
    return this.publicServer.address() as AddressInfo;
  }

  get adminAddress(): AddressInfo | undefined {
    return this.admin?.address;
  }

  private tcpRouteStatus(): TcpRouteStatus[] {
    return this.tcpRoutes.map((r) => ({
      route: r.label,
      listen: r.address ? formatHostPort({ host: r.address.address, port: r.address.port }) : 'closed',
      connections: r.connections,
      served: this.registry.has(r.label),
    }));
  }

  /**
   * Graceful: stop accepting, GoAway to every agent, let open streams finish up to
   * drainTimeoutMs, then cut what is left. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      this.publicServer.close();
      for (const r of this.tcpRoutes) r.close();
      const drained = this.endpoint?.close() ?? Promise.resolve();
      const deadline = new Promise<void>((r) => setTimeout(r, this.config.drainTimeoutMs).unref());
      await Promise.race([drained, deadline]);
      this.destroy();
      await this.admin?.close();
    })();
    return this.closing;
  }

  destroy(): void {
    this.draining = true;
    this.publicServer.close();
    for (const r of this.tcpRoutes) r.destroy();
    this.endpoint?.destroy();
    this.verifier?.close();
    for (const s of this.sockets) s.destroy();
    this.httpServer.closeAllConnections();
    void this.admin?.close();
  }

  private onConnection(socket: Socket): void {
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'public socket error'));
    const pending = this.pending.admit(socket);
    if (typeof pending === 'string') {
      this.refuseOverLimit(socket, pending);
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setNoDelay(true);
    this.route(socket, pending).catch((err: unknown) => {
      this.log.error({ err }, 'connection routing failed');
      socket.destroy();
    });
  }

  /** Over a pending-connection limit: a TCP reset, a metric, and a log line at most every 10 s. */
  private refuseOverLimit(socket: Socket, limit: string): void {
    this.metrics.connections.inc({ outcome: 'over-limit' });
    socket.resetAndDestroy();
    const now = Date.now();
    if ((this.refusalLog.get(limit) ?? 0) > now) return;
    this.refusalLog.set(limit, now + 10_000);
    this.log.warn(
      {
        remoteAddress: socket.remoteAddress,
        code: 'TUN_ERR_LIMIT_EXCEEDED',
        limit,
        pending: this.pending.size,
      },
      'connections refused: too many pending',
    );
  }

  private onHandshakeTimeout(socket: Socket, phase: PendingPhase): void {
    this.metrics.connections.inc({ outcome: 'timeout' });
    this.log.info(
      {
        remoteAddress: `${socket.remoteAddress}:${socket.remotePort}`,
        code: 'TUN_ERR_HANDSHAKE_TIMEOUT',
        phase,
        handshakeTimeoutMs: this.config.handshakeTimeoutMs,
      },
      'connection timed out before it was routed',
    );
  }

  private async route(socket: Socket, pending: PendingConnection): Promise<void> {
    const remoteAddress = `${socket.remoteAddress}:${socket.remotePort}`;
    let hello;
    try {
      // The pending deadline ends a slow hello; this one only backs it up.
      hello = await readClientHello(socket, { handshakeTimeoutMs: pending.remainingMs + 1_000 });
    } catch (err) {
      if (pending.timedOut) return; // logged and counted by onHandshakeTimeout
      const code = err instanceof TunnelError ? err.code : 'TUN_ERR_CLIENT_HELLO';
      this.metrics.connections.inc({
        outcome: code === 'TUN_ERR_HANDSHAKE_TIMEOUT' ? 'timeout' : 'bad-hello',
      });
      this.log.info({ remoteAddress, code }, 'connection refused before TLS');
      if (code === 'TUN_ERR_CLIENT_HELLO') socket.end(TLS_ALERT.handshakeFailure);
      else socket.end();
      return;
    }
    const sni = hello.serverName;
    if (sni === undefined || this.ownNames.has(sni)) {
      this.metrics.connections.inc({ outcome: 'own' });
      pending.phase = 'tls-handshake';
      this.serveOwn(socket, hello.bytes, pending);
      return;
    }
    // A route is named: from here the route's own bounds apply (the agent's reply deadline).
    pending.settle();
    const label = routeLabelOf(sni, this.config.domain);
    if (label === undefined) {
      this.metrics.connections.inc({ outcome: 'unknown-host' });
      this.log.info(
        { remoteAddress, serverName: sni, code: 'TUN_ERR_UNKNOWN_HOST' },
        'connection refused: unknown host',
      );
      socket.end(TLS_ALERT.unrecognizedName);
      return;
    }
    await this.forwarder.forward(socket, label, 'passthrough', hello.bytes);
  }

  /** Terminates TLS with the server certificate and hands the connection to the HTTP server. */
  private serveOwn(socket: Socket, helloBytes: Buffer, pending: PendingConnection): void {
    socket.unshift(helloBytes);
    const tlsSocket = new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: this.secureContext!,
      ALPNProtocols: ['http/1.1'],
    });
    tlsSocket.on('error', (err) => {
      this.log.debug({ err: err.message }, 'tls error on own endpoint');
      socket.destroy();
    });
    tlsSocket.once('secure', () => {
      pending.phase = 'request-headers';
    });
    this.pendingOf.set(tlsSocket, pending);
    this.httpServer.emit('connection', tlsSocket);
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const pending = this.pendingOf.get(socket);
    if (!this.endpoint || this.draining || pending === undefined) {
      socket.destroy();
      return;
    }
    pending.phase = 'agent-upgrade';
    this.endpoint.handleUpgrade(req, socket, head).then(
      (accepted) => {
        // An agent with a verified token: its session's own bounds apply from here.
        if (accepted) pending.settle();
      },
      (err: unknown) => {
        this.log.error({ err }, 'agent upgrade failed');
        socket.destroy();
      },
    );
  }

  /**
   * A request node:http could not parse: an HTTP answer with a coded body where the socket can
   * still take one (431 for headers over MAX_REQUEST_HEADER_BYTES), then the connection closes.
   */
  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const code = status === 431 ? 'TUN_ERR_LIMIT_EXCEEDED' : 'TUN_ERR_PROTOCOL';
    this.log.debug({ err: err.message, httpCode: err.code, status }, 'bad request on own endpoint');
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const body = JSON.stringify({
      code,
      message:
        status === 431 ? `request headers over ${MAX_REQUEST_HEADER_BYTES} bytes` : 'malformed HTTP request',
    });
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }

  private onOwnRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    // Plain requests (probes) get one answer each: the connection stays bounded by the pending
    // deadline, never parked in keep-alive.
    res.shouldKeepAlive = false;
    const path = requestPath(req);
    if (path === undefined) {
      res
        .writeHead(400, { 'Content-Type': 'application/json' })
        .end(JSON.stringify({ code: 'TUN_ERR_PROTOCOL', message: 'malformed request target' }));
    } else if (path === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      res
        .writeHead(this.draining ? 503 : 200, { 'Content-Type': 'text/plain' })
        .end(this.draining ? 'draining\n' : 'ready\n');
    } else {
      res
        .writeHead(404, { 'Content-Type': 'application/json' })
        .end(JSON.stringify({ code: 'TUN_ERR_PROTOCOL', message: 'not found' }));
    }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
