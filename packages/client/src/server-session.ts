/**
 * One agent session: a yamux session (client role) over an upgraded WebSocket to one server
 * replica. Its first stream is the control stream (register → registered | error), kept open
 * for the session's life; every stream the server opens afterwards is a user connection.
 *
 * Events: 'goaway' (the server is draining: no new streams will come), 'close' (err?) once.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import {
  CAPABILITIES,
  CONTROL_PROTOCOL_VERSION,
  ControlChannel,
  MAX_REQUEST_ID,
  SUPPORTED_CAPABILITIES,
  TunnelError,
  YamuxSession,
  createWebSocketDuplex,
  negotiateCapabilities,
  systemClock,
} from '@cluster-tunnel/protocol';
import type { Capability, ControlMessage, RegisteredMessage, YamuxStream } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import { forwardStream } from './forward.js';
import type { RouteTable } from './route-table.js';
import { TargetDialer } from './target-dialer.js';
import type { AgentMetrics } from './metrics.js';
import type { RouteCertificate } from './route-certificate.js';

export interface ServerSessionOptions {
  /** The socket the dialer upgraded to a WebSocket (DialedServer). */
  socket: Duplex;
  /** Bytes the server sent behind its 101. */
  head?: Buffer;
  routes: RouteTable;
  agentId: string;
  agentVersion: string;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  /** How long the server may take to answer `register`. */
  registerTimeoutMs: number;
  streamHeaderTimeoutMs: number;
  targetDialTimeoutMs: number;
  /**
   * Connects to targets; the agent shares one over its sessions, so spares are bounded per
   * agent. Default: a dialer of this session's own, without spares.
   */
  targetDialer?: TargetDialer;
  logger: Logger;
  /** The agent's metrics: streams, bytes and round trips of this session are counted there. */
  metrics?: AgentMetrics;
  /** The agent's route certificate, which agent-tls streams are served with (route-certificate.ts). */
  routeCertificate?: RouteCertificate;
}

interface PendingRequest {
  resolve: (pem: string) => void;
  reject: (err: TunnelError) => void;
  timer: NodeJS.Timeout;
}

export class ServerSession extends EventEmitter {
  readonly session: YamuxSession;
  private readonly control: ControlChannel;
  private readonly options: ServerSessionOptions;
  private readonly dialer: TargetDialer;
  private log: Logger;
  private registration: RegisteredMessage | undefined;
  private negotiated: ReadonlySet<Capability> = new Set();
  /** The routes this server may be given streams for (all of them, unless it cannot route by mode). */
  private served: RouteTable;
  private closePromise: Promise<void> | undefined;
  private activeStreams = 0;
  /** Set once the session is gone; why, if it failed. */
  private ended: { err: TunnelError | undefined } | undefined;
  /** `certificate-request`s waiting for their answer, by requestId. */
  private readonly certificateRequests = new Map<number, PendingRequest>();
  private nextRequestId = 1;

  constructor(options: ServerSessionOptions) {
    super();
    this.options = options;
    this.served = options.routes;
    this.log = options.logger;
    this.dialer =
      options.targetDialer ??
      new TargetDialer({
        spareConnections: 0,
        spareIdleMs: 1,
        dialTimeoutMs: options.targetDialTimeoutMs,
        clock: systemClock,
        logger: options.logger,
      });
    this.session = new YamuxSession(
      createWebSocketDuplex(options.socket, { role: 'client', head: options.head }),
      {
        role: 'client',
        keepaliveIntervalMs: options.keepaliveIntervalMs,
        keepaliveTimeoutMs: options.keepaliveTimeoutMs,
      },
    );
    this.session.on('goaway', this.onGoAway);
    this.session.once('close', this.onSessionClose);
    const metrics = options.metrics;
    if (metrics) {
      this.session.on('rtt', (ms: number) => metrics.rttSeconds.observe(ms / 1000));
      this.session.once('close', () => metrics.sessionEnded(this.session.stats));
    }
    // The first stream we open is the control stream (the server expects it to be id 1).
    this.control = new ControlChannel(this.session.open());
    this.control.on('message', this.onLateControlMessage);
    this.control.on('close', this.onControlClose);
  }

  get serverId(): string | undefined {
    return this.registration?.serverId;
  }

  /** Labels this agent registered that the server left out of `registered` (a mode it does not run). */
  get unpublished(): string[] {
    const hostnames = this.registration?.hostnames ?? [];
    return this.options.routes.labels.filter(
      (label) => this.served.lookup(label) === undefined || !hostnames.some((h) => h.startsWith(`${label}.`)),
    );
  }

  /** Labels of the agent-tls routes this server may be given streams for. */
  get agentTlsLabels(): string[] {
    return this.served.agentTlsLabels;
  }

  get hostnames(): readonly string[] {
    return this.registration?.hostnames ?? [];
  }

  /**
   * The capabilities both sides speak: ours that the server's `registered` announced (none from
   * an older server, none before registration). Streams are read whatever was negotiated: the
   * stream header says its own version.
   */
  get capabilities(): ReadonlySet<Capability> {
    return this.negotiated;
  }

  /** Registered, and neither side has said GoAway: the server may route new streams here. */
  get isServing(): boolean {
    return this.registration !== undefined && this.ended === undefined && !this.session.isGoingAway;
  }

  /** Either side sent GoAway: no new streams on this session. */
  get isGoingAway(): boolean {
    return this.session.isGoingAway;
  }

  get streams(): number {
    return this.activeStreams;
  }

  /**
   * Sends `register` and waits for the answer. Rejects with the server's coded error (e.g.
   * TUN_ERR_ROUTE_FORBIDDEN, TUN_ERR_UNSUPPORTED_VERSION), a timeout, or the session's failure.
   */
  async register(): Promise<RegisteredMessage> {
    const { routes, agentId, agentVersion, registerTimeoutMs } = this.options;
    const answer = this.control.next(registerTimeoutMs);
    this.control.send({
      type: 'register',
      protocolVersion: CONTROL_PROTOCOL_VERSION,
      agentId,
      agentVersion,
      routes: routes.labels,
      capabilities: [...SUPPORTED_CAPABILITIES],
      // Only when some route is not passthrough: an older server ignores the key anyway.
      ...(Object.keys(routes.modes).length > 0 ? { routeModes: routes.modes } : {}),
      ...(Object.keys(routes.hostHeaders).length > 0 ? { hostHeaders: routes.hostHeaders } : {}),
    });
    let message;
    try {
      message = await answer;
    } catch (err) {
      // The control stream closed because the session died: report the session's reason.
      throw this.ended?.err ?? err;
    }
    if (message.type === 'error') {
      throw new TunnelError(message.code, `the server refused the registration: ${message.message}`, {
        details: { serverCode: message.code },
      });
    }
    if (message.type !== 'registered') {
      throw new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', `expected registered, got ${message.type}`);
    }
    this.registration = message;
    // Names this agent does not know are ignored: that is how newer servers work with it.
    this.negotiated = negotiateCapabilities(message.capabilities);
    // A server that cannot route by mode would send passthrough TLS to http routes: serve it none.
    this.served = this.negotiated.has(CAPABILITIES.routeModes)
      ? this.options.routes
      : this.options.routes.passthroughOnly();
    this.log = this.log.child({ serverId: message.serverId });
    this.session.on('stream', this.onStream);
    return message;
  }

  /**
   * Asks the server to sign `csr` (PEM) with its route CA; resolves with the certificate (PEM).
   * Rejects with the server's code (TUN_ERR_CERT_NAME_FORBIDDEN, TUN_ERR_CSR_INVALID,
   * TUN_ERR_CERT_SIGNING_REFUSED), TUN_ERR_TIMEOUT, or the session's end.
   */
  requestCertificate(csr: string, timeoutMs: number): Promise<string> {
    if (this.ended || this.registration === undefined) {
      return Promise.reject(new TunnelError('TUN_ERR_SESSION_CLOSED', 'the session is not registered'));
    }
    if (!this.negotiated.has(CAPABILITIES.routeCertificates)) {
      return Promise.reject(
        new TunnelError(
          'TUN_ERR_CERT_SIGNING_REFUSED',
          'this server does not sign route certificates (an older version)',
        ),
      );
    }
    const requestId = this.nextRequestId;
    this.nextRequestId = requestId >= MAX_REQUEST_ID ? 1 : requestId + 1;
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.certificateRequests.delete(requestId);
        reject(
          new TunnelError('TUN_ERR_TIMEOUT', `no answer to the certificate request within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      this.certificateRequests.set(requestId, { resolve, reject, timer });
      this.control.send({ type: 'certificate-request', requestId, csr });
    });
  }

  /** Resolves when the session has ended, with its failure (undefined after a clean close). */
  whenClosed(): Promise<TunnelError | undefined> {
    if (this.ended) return Promise.resolve(this.ended.err);
    return new Promise((resolve) => this.once('close', resolve));
  }

  /**
   * Graceful: GoAway, end the control stream, let user streams finish; after `deadlineMs` the
   * rest are reset. Idempotent; resolves when the session has closed.
   */
  close(deadlineMs: number): Promise<void> {
    this.closePromise ??= (async () => {
      if (this.ended) return;
      this.control.close();
      const timer = setTimeout(() => {
        if (this.activeStreams > 0) this.log.warn({ streams: this.activeStreams }, 'drain deadline passed');
        this.session.destroy();
      }, deadlineMs);
      try {
        await Promise.all([this.session.close(), this.whenClosed()]);
      } finally {
        clearTimeout(timer);
      }
    })();
    return this.closePromise;
  }

  destroy(err?: TunnelError): void {
    this.session.destroy(err);
  }

  private readonly onStream = (stream: YamuxStream): void => {
    this.activeStreams += 1;
    void forwardStream(stream, {
      routes: this.served,
      logger: this.log,
      headerTimeoutMs: this.options.streamHeaderTimeoutMs,
      dialer: this.dialer,
      routeCertificate: this.options.routeCertificate,
      metrics: this.options.metrics,
    })
      .then((done) => {
        const metrics = this.options.metrics;
        // Probes are the server's checks, not users' streams.
        if (done.type === 'probe') return;
        metrics?.streams.inc({ outcome: done.outcome });
        metrics?.bytes.inc({ direction: 'in' }, done.bytesIn);
        metrics?.bytes.inc({ direction: 'out' }, done.bytesOut);
      })
      .finally(() => {
        this.activeStreams -= 1;
      });
  };

  private readonly onGoAway = (code: number): void => {
    this.log.info({ goAwayCode: code }, 'server sent goaway');
    this.emit('goaway', code);
  };

  private readonly onLateControlMessage = (message: ControlMessage): void => {
    // Before registration the answer is taken by next(). After it the server answers our
    // certificate requests, and otherwise says nothing unless it ends the session (an `error`
    // with the reason: a revoked or expired token); any other message is a protocol violation,
    // and a server that sends one is not talked to.
    if (this.registration === undefined) return;
    if (message.type === 'certificate' || (message.type === 'error' && message.requestId !== undefined)) {
      const pending = this.certificateRequests.get(message.requestId!);
      // An answer after our timeout: nobody waits for it any more.
      if (pending === undefined) return;
      this.certificateRequests.delete(message.requestId!);
      clearTimeout(pending.timer);
      if (message.type === 'certificate') pending.resolve(message.certificate);
      else
        pending.reject(
          new TunnelError(message.code, message.message, { details: { serverCode: message.code } }),
        );
      return;
    }
    if (message.type === 'error') {
      this.log.warn({ code: message.code, err: message.message }, 'server ended the session');
      this.session.destroy(new TunnelError(message.code, `the server ended the session: ${message.message}`));
      return;
    }
    this.log.warn({ type: message.type, code: 'TUN_ERR_BAD_CONTROL_MESSAGE' }, 'unexpected control message');
    this.session.destroy(
      new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', `unexpected ${message.type} after registration`),
    );
  };

  private readonly onControlClose = (): void => {
    // The control stream lives as long as the session; a server that ends it is dropping us.
    if (this.ended || this.closePromise || this.session.isGoingAway) return;
    if (this.registration === undefined) return; // register() reports it
    this.log.warn('server closed the control stream');
    this.session.destroy(new TunnelError('TUN_ERR_SESSION_CLOSED', 'the server closed the control stream'));
  };

  private readonly onSessionClose = (err: TunnelError | undefined): void => {
    this.ended = { err };
    for (const pending of this.certificateRequests.values()) {
      clearTimeout(pending.timer);
      pending.reject(err ?? new TunnelError('TUN_ERR_SESSION_CLOSED', 'the session ended'));
    }
    this.certificateRequests.clear();
    this.session.off('goaway', this.onGoAway);
    this.session.off('stream', this.onStream);
    this.control.off('message', this.onLateControlMessage);
    this.control.off('close', this.onControlClose);
    this.emit('close', err);
  };
}
