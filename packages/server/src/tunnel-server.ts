/**
 * The public tunnel server, composed: one TLS port where the ClientHello's SNI decides between
 * the server's own name (own-name-server.ts: the agent endpoint and probes) and route hostnames,
 * which go to the route mode that claims them; modes with ports of their own listen there. The
 * modes come from one table (modes/route-modes.ts) and reach agents through openRouteStream.
 *
 * Events: 'user-connection' (UserConnectionEvent) for every user connection forwarded, refused
 * and closed, and 'agent' (AgentEvent) as agents register and leave, so callers and tests
 * observe routing without reading logs.
 */
import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdir, readFile, access } from 'node:fs/promises';
import net, { type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { TunnelError, routeLabelOfHost, systemClock } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import { AdminServer } from './admin-server.js';
import { AgentEndpoint, type AgentRefusal } from './agent-endpoint.js';
import { AgentRegistry } from './agent-registry.js';
import { CA_FILES, CertificateAuthority } from './certificate-authority.js';
import { readClientHello } from './client-hello.js';
import type { ServerConfig } from './config.js';
import { tightenPermissions } from './data-file.js';
import { ServerMetrics } from './metrics.js';
import type { RouteMode, RouteModeContext } from './modes/route-mode.js';
import { ROUTE_MODES } from './modes/route-modes.js';
import { openRouteStream, type RouteStream, type RouteStreamRequest } from './open-route-stream.js';
import { OwnNameServer } from './own-name-server.js';
import type { RegisteredAgent } from './registered-agent.js';
import { PendingConnections, type PendingConnection, type PendingPhase } from './pending-connections.js';
import { TLS_ALERT } from './tls-alert.js';
import { SIGNING_KEY_FILES, loadOrCreateSigningKeyPair } from './token-issuer.js';
import { TokenVerifier } from './token-verifier.js';
import { UserForwarder, type UserConnectionEvent } from './user-forwarder.js';
import { RouteProber, type ProbeResult } from './route-prober.js';
import { ROUTE_CA_FILES, RouteCertificateAuthority } from './route-ca.js';

/** `start --print-next-steps` writes a demo agent token here, in the data directory (mode 0600). */
export const DEMO_TOKEN_FILE = 'demo.token';

export interface TunnelServerDeps {
  log: Logger;
  /** Epoch milliseconds for the route certificates this server signs; injectable for tests. */
  now?: () => number;
}

/** What /status shows: this replica, its agents and each route mode's own status. */
export interface ServerStatus {
  serverId: string;
  /** Public-port connections not yet routed (handshaking, or waiting for their cluster's agent). */
  pendingConnections: number;
  routes: string[];
  agents: {
    agentId: string;
    clusterId: string;
    agentVersion: string;
    remoteAddress: string;
    routes: readonly string[];
    connectedAt: string;
    activeStreams: number;
    rttMs: number | undefined;
  }[];
  modes: Record<string, unknown>;
  /** The last data-path probe of each agent route (route-prober.ts). */
  probes: ProbeResult[];
  /** The route mode of each label held here. */
  routeModes: Record<string, string>;
  /** User payload bytes per cluster with agents here (in = from users). */
  traffic: Record<string, { in: number; out: number }>;
}

/**
 * An agent's routes became routable here ('registered') or stopped being ('left'), or an agent
 * was refused (at the upgrade, at registration) or ended for a reason of its own ('refused').
 */
export type AgentEvent =
  | { type: 'registered' | 'left'; agentId: string; clusterId: string; routes: readonly string[] }
  | ({ type: 'refused' } & AgentRefusal);

/** The events a TunnelServer emits, with their arguments. */
export interface TunnelServerEvents {
  'user-connection': [event: UserConnectionEvent];
  agent: [event: AgentEvent];
}

export class TunnelServer extends EventEmitter<TunnelServerEvents> {
  readonly registry = new AgentRegistry();
  readonly metrics = new ServerMetrics();
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly publicServer: net.Server;
  private readonly modes: readonly RouteMode[];
  readonly prober: RouteProber;
  private readonly pending: PendingConnections;
  private readonly ownNames: ReadonlySet<string>;
  private readonly sockets = new Set<Socket>();
  private readonly refusalLog = new Map<string, number>();
  private endpoint: AgentEndpoint | undefined;
  private secureContext: tls.SecureContext | undefined;
  private ownNameServer: OwnNameServer | undefined;
  private verifier: TokenVerifier | undefined;
  private admin: AdminServer | undefined;
  private draining = false;
  private closing: Promise<void> | undefined;

  constructor(
    readonly config: Readonly<ServerConfig>,
    deps: TunnelServerDeps,
  ) {
    super();
    this.log = deps.log;
    this.now = deps.now ?? Date.now;
    this.ownNames = new Set([config.domain, 'localhost']);
    const forwarder = new UserForwarder({
      serverId: config.serverId,
      openRouteStream: (request) => this.openRouteStream(request),
      metrics: this.metrics,
      log: this.log,
      onEvent: (event) => this.emit('user-connection', event),
    });
    const context: RouteModeContext = {
      config,
      registry: this.registry,
      metrics: this.metrics,
      log: this.log,
      forwarder,
      openRouteStream: (request) => this.openRouteStream(request),
      serverSecureContext: () => {
        if (!this.secureContext) throw new Error('the server certificate is not loaded yet');
        return this.secureContext;
      },
      tokenPublicKeyPems: () => {
        if (!this.verifier) throw new Error('the token keys are not loaded yet');
        return this.verifier.publicKeyPems;
      },
    };
    this.modes = Object.values(ROUTE_MODES).map((create) => create(context));
    const agentEvent = (type: 'registered' | 'left', a: RegisteredAgent): AgentEvent => ({
      type,
      agentId: a.identity.agentId,
      clusterId: a.identity.clusterId,
      routes: a.labels,
    });
    this.registry.on('added', (a) => this.emit('agent', agentEvent('registered', a)));
    this.registry.on('removed', (a) => {
      this.emit('agent', agentEvent('left', a));
      if (!this.registry.holdsCluster(a.identity.clusterId)) this.metrics.forgetCluster(a.identity.clusterId);
    });
    this.metrics.attach({
      sessions: () =>
        this.registry.all().map((a) => ({
          clusterId: a.identity.clusterId,
          stats: a.session.stats,
          receiveWindows: () => a.session.receiveWindows(),
        })),
      clusterLabelLimit: config.metricsClusterLabelLimit,
      probes: () => this.prober.latest(),
    });
    this.prober = new RouteProber({
      registry: this.registry,
      intervalMs: config.probeIntervalMs,
      replyTimeoutMs: config.agentReplyTimeoutMs,
      serverId: config.serverId,
      metrics: this.metrics,
      log: this.log,
    });
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
  }

  async start(): Promise<void> {
    const c = this.config;
    const secureContext = await this.loadServerCertificate();
    this.secureContext = secureContext;
    this.verifier = await this.loadTokenVerifier();
    const routeCa = await this.loadRouteCa();
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
      onRefusal: (refusal) => this.emit('agent', { type: 'refused', ...refusal }),
      // The modes that serve route hostnames on the public port.
      routeModes: new Set(this.modes.filter((m) => m.accept !== undefined).map((m) => m.name)),
      routeCertificates: {
        ca: routeCa,
        unavailable: `${c.serverCount} replicas need one shared route CA to sign agent-tls certificates: set routeCaCert and routeCaKey`,
        lifetimeMs: c.routeCertLifetimeMs,
      },
    });
    this.ownNameServer = new OwnNameServer({
      secureContext,
      endpoint: this.endpoint,
      isDraining: () => this.draining,
      log: this.log,
    });
    // A token revoked while its agent is connected ends that session within the check interval;
    // so does a link's id for the user sessions it opened.
    this.verifier.watchRevocations(
      (revoked) => {
        this.endpoint?.onRevocations(revoked);
        for (const mode of this.modes) mode.onRevocations?.(revoked);
      },
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
    // All or nothing: a mode's port that cannot be bound fails the start, as the public port does.
    await Promise.all(this.modes.map((m) => m.start()));
    if (c.adminListen) {
      this.admin = new AdminServer({
        listen: c.adminListen,
        metrics: this.metrics,
        log: this.log,
        status: () => this.status(),
        probe: (route) => this.prober.probeAll(route),
        isReady: () => !this.draining && this.publicServer.listening,
      });
      await this.admin.listen();
    }
    this.prober.start();
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

  /** A stream to an agent holding `request.route`, tried across its agents (open-route-stream.ts). */
  async openRouteStream(request: RouteStreamRequest): Promise<RouteStream> {
    const startedAt = performance.now();
    const routed = await openRouteStream(
      { registry: this.registry, replyTimeoutMs: this.config.agentReplyTimeoutMs, log: this.log },
      request,
    );
    this.metrics.streamOpenSeconds.observe(
      { mode: request.mode ?? 'other' },
      (performance.now() - startedAt) / 1000,
    );
    return routed;
  }

  status(): ServerStatus {
    return {
      serverId: this.config.serverId,
      pendingConnections: this.pending.size,
      routes: this.registry.labels(),
      agents: this.registry.all().map((a) => ({
        agentId: a.identity.agentId,
        clusterId: a.identity.clusterId,
        agentVersion: a.identity.agentVersion,
        remoteAddress: a.identity.remoteAddress,
        routes: a.labels,
        connectedAt: new Date(a.connectedAt).toISOString(),
        activeStreams: a.streams,
        rttMs: a.session.stats.rttMs,
      })),
      routeModes: Object.fromEntries(
        this.registry.labels().map((l) => [l, this.registry.modeOf(l) ?? 'passthrough']),
      ),
      modes: Object.fromEntries(this.modes.map((m) => [m.name, m.status()])),
      traffic: this.metrics.trafficByCluster(),
      probes: this.prober.latest(),
    };
  }

  /**
   * Graceful: not ready at once (/readyz 503), still in service for drainDelayMs while the load
   * balancer notices; then stop accepting, GoAway to every agent (they re-dial elsewhere at
   * once), let open streams finish up to drainTimeoutMs, and cut what is left. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      if (this.config.drainDelayMs > 0) {
        this.log.info({ drainDelayMs: this.config.drainDelayMs }, 'not ready; closing after the drain delay');
        await new Promise<void>((r) => setTimeout(r, this.config.drainDelayMs).unref());
      }
      this.publicServer.close();
      for (const mode of this.modes) mode.close();
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
    this.prober.close();
    this.publicServer.close();
    for (const mode of this.modes) mode.destroy();
    this.endpoint?.destroy();
    this.verifier?.close();
    for (const s of this.sockets) s.destroy();
    this.ownNameServer?.destroy();
    void this.admin?.close();
  }

  /** The server certificate: the configured files, or one from the local CA made on first start. */
  private async loadServerCertificate(): Promise<tls.SecureContext> {
    const c = this.config;
    await mkdir(c.dataDir, { recursive: true, mode: 0o700 });
    const secrets = [
      CA_FILES.caKey,
      CA_FILES.serverKey,
      ROUTE_CA_FILES.key,
      SIGNING_KEY_FILES.privateKey,
      DEMO_TOKEN_FILE,
    ];
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
    // The leaf's expiry, for the alert long before users see it (the first PEM block is the leaf).
    this.metrics.certificateExpiry.set(Date.parse(new X509Certificate(cert).validTo) / 1000);
    return tls.createSecureContext({ cert, key });
  }

  /**
   * The route CA: the configured files; else, for a lone replica, the data directory's (made on
   * first start). Several replicas without configured files sign nothing: each would make its own
   * CA, and a kubeconfig trusts one.
   */
  private async loadRouteCa(): Promise<RouteCertificateAuthority | undefined> {
    const c = this.config;
    let ca: RouteCertificateAuthority;
    if (c.routeCaCert !== undefined && c.routeCaKey !== undefined) {
      ca = await RouteCertificateAuthority.load(
        { cert: c.routeCaCert, key: c.routeCaKey },
        { create: false, now: this.now },
      );
    } else if (c.serverCount === 1) {
      const files = await RouteCertificateAuthority.dataDirFiles(c.dataDir);
      ca = await RouteCertificateAuthority.load(files, { create: true, now: this.now });
    } else {
      this.log.info(
        { serverCount: c.serverCount },
        'no routeCaCert: agent-tls route certificates are not signed here',
      );
      return undefined;
    }
    this.metrics.routeCaExpiry.set(ca.notAfter.getTime() / 1000);
    return ca;
  }

  private async loadTokenVerifier(): Promise<TokenVerifier> {
    const c = this.config;
    const defaultPublicKey = join(c.dataDir, SIGNING_KEY_FILES.publicKey);
    if (c.tokenPublicKey.includes(defaultPublicKey) && !(await exists(defaultPublicKey))) {
      // First start on the defaults: make the signing pair `token create` uses.
      await loadOrCreateSigningKeyPair(c.dataDir);
      this.log.info({ dataDir: c.dataDir }, 'token signing key created');
    }
    const publicKeyPems = await Promise.all(c.tokenPublicKey.map((f) => readFile(f, 'utf8')));
    return new TokenVerifier({
      publicKeyPems,
      audience: c.domain,
      maxLifetimeMs: c.maxTokenLifetimeMs,
      clockToleranceMs: c.tokenClockToleranceMs,
      revocationFile: c.revokedFile,
    });
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

  /** Reads the ClientHello and hands the connection to the own-name server or a route mode. */
  private async route(socket: Socket, pending: PendingConnection): Promise<void> {
    const remoteAddress = `${socket.remoteAddress}:${socket.remotePort}`;
    let hello;
    const helloStartedAt = performance.now();
    try {
      // The pending deadline ends a slow hello; this one only backs it up.
      hello = await readClientHello(socket, { handshakeTimeoutMs: pending.remainingMs + 1_000 });
      this.metrics.clientHelloSeconds.observe((performance.now() - helloStartedAt) / 1000);
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
      this.ownNameServer!.serve(socket, hello.bytes, pending);
      return;
    }
    const route = routeLabelOfHost(sni, this.config.domain);
    if (route !== undefined && !this.registry.has(route) && !this.draining) {
      // No agent here for this cluster yet: this replica has just started, or its agents are
      // moving in from a draining one. Wait for one (bounded, still pending) rather than refuse.
      pending.phase = 'agent-wait';
      const gone = new AbortController();
      const onClose = (): void => gone.abort();
      socket.once('close', onClose);
      const waitMs = Math.min(this.config.agentWaitMs, pending.remainingMs);
      const held = await this.registry.whenHeld(route, waitMs, gone.signal);
      socket.off('close', onClose);
      if (socket.destroyed) return;
      if (held) this.log.debug({ route, remoteAddress }, 'agent arrived for a waiting connection');
    }
    // A route is named: from here the route's own bounds apply (the agent's reply deadline).
    pending.settle();
    const mode = route === undefined ? undefined : this.modes.find((m) => m.claims?.(route));
    if (route === undefined || mode?.accept === undefined) {
      this.metrics.connections.inc({ outcome: 'unknown-host' });
      this.log.info(
        { remoteAddress, serverName: sni, code: 'TUN_ERR_UNKNOWN_HOST' },
        'connection refused: unknown host',
      );
      socket.end(TLS_ALERT.unrecognizedName);
      return;
    }
    mode.accept(socket, route, hello.bytes, hello.alpn);
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
