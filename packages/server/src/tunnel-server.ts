import { mkdir, readFile, access } from 'node:fs/promises';
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { TunnelError, formatHostPort, type Logger } from '@cluster-tunnel/protocol';
import { AdminServer } from './admin-server.js';
import { AgentEndpoint } from './agent-endpoint.js';
import { AgentRegistry } from './agent-registry.js';
import { CertificateAuthority } from './certificate-authority.js';
import { readClientHello } from './client-hello.js';
import type { ServerConfig } from './config.js';
import { ServerMetrics } from './metrics.js';
import { routeLabelOf } from './passthrough.js';
import { TcpRouteListener, type TcpRouteStatus } from './tcp-route.js';
import { TLS_ALERT } from './tls-alert.js';
import { SIGNING_KEY_FILES, generateSigningKeyPair } from './token-issuer.js';
import { TokenVerifier } from './token-verifier.js';
import { UserForwarder } from './user-forwarder.js';

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
  /** The CA that signed the server certificate, when the server made its own. */
  caCertPem: string | undefined;

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
      dialTimeoutMs: config.handshakeTimeoutMs,
    });
    this.tcpRoutes = config.tcpRoutes.map(
      (route) => new TcpRouteListener({ route, forwarder: this.forwarder, log: this.log }),
    );
    this.publicServer = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) =>
      this.onConnection(socket),
    );
    this.httpServer = http.createServer((req, res) => this.onOwnRequest(req, res));
    this.httpServer.on('upgrade', (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
      if (!this.endpoint || this.draining) {
        socket.destroy();
        return;
      }
      this.endpoint.handleUpgrade(req, socket, head).catch((err: unknown) => {
        this.log.error({ err }, 'agent upgrade failed');
        socket.destroy();
      });
    });
  }

  async start(): Promise<void> {
    const c = this.config;
    await mkdir(c.dataDir, { recursive: true, mode: 0o700 });
    let cert: string;
    let key: string;
    if (c.tlsCert && c.tlsKey) {
      [cert, key] = await Promise.all([readFile(c.tlsCert, 'utf8'), readFile(c.tlsKey, 'utf8')]);
    } else {
      const ca = await CertificateAuthority.loadOrCreate({ dataDir: c.dataDir, domain: c.domain });
      [cert, key, this.caCertPem] = [ca.serverCertPem, ca.serverKeyPem, ca.caCertPem];
    }
    this.secureContext = tls.createSecureContext({ cert, key });
    const defaultPublicKey = join(c.dataDir, SIGNING_KEY_FILES.publicKey);
    if (c.tokenPublicKey.includes(defaultPublicKey) && !(await exists(defaultPublicKey))) {
      // First start on the defaults: make the signing pair `token create` uses.
      await generateSigningKeyPair(c.dataDir);
      this.log.info({ dataDir: c.dataDir }, 'token signing key created');
    }
    const publicKeyPems = await Promise.all(c.tokenPublicKey.map((f) => readFile(f, 'utf8')));
    this.verifier = new TokenVerifier({ publicKeyPems, audience: c.domain, revocationFile: c.revokedFile });
    this.endpoint = new AgentEndpoint({
      serverId: c.serverId,
      serverCount: c.serverCount,
      domain: c.domain,
      keepaliveIntervalMs: c.keepaliveIntervalMs,
      keepaliveTimeoutMs: c.keepaliveTimeoutMs,
      maxAgents: c.maxAgents,
      verifier: this.verifier,
      registry: this.registry,
      metrics: this.metrics,
      log: this.log,
    });
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
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'public socket error'));
    socket.setNoDelay(true);
    this.route(socket).catch((err: unknown) => {
      this.log.error({ err }, 'connection routing failed');
      socket.destroy();
    });
  }

  private async route(socket: Socket): Promise<void> {
    const remoteAddress = `${socket.remoteAddress}:${socket.remotePort}`;
    let hello;
    try {
      hello = await readClientHello(socket, { handshakeTimeoutMs: this.config.handshakeTimeoutMs });
    } catch (err) {
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
      this.serveOwn(socket, hello.bytes);
      return;
    }
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
  private serveOwn(socket: Socket, helloBytes: Buffer): void {
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
    this.httpServer.emit('connection', tlsSocket);
  }

  private onOwnRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = new URL(req.url ?? '/', 'https://own').pathname;
    if (path === '/healthz') {
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
