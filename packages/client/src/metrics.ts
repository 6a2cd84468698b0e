/**
 * The agent's Prometheus metrics, served on its health port at /metrics (docs/OPERATIONS.md,
 * "Agent metrics"). The same conventions as the server's: `tunnel_` prefix, base units, `_total`
 * counters, bounded labels (never a route target or an address). Sessions, streams and
 * backpressure are read from the live sessions when scraped (attach()).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SessionStats } from '@cluster-tunnel/protocol';

const LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** What the metrics read from the agent when scraped. */
export interface AgentMetricsSource {
  /** Sessions registered and serving, with their figures. */
  sessions(): Iterable<{ serving: boolean; streams: number; stats: SessionStats }>;
  /** Sessions the agent wants: serverCount, capped. */
  wantedSessions(): number;
}

export class AgentMetrics {
  readonly registry = new Registry();
  private source: AgentMetricsSource | undefined;
  private blockedSecondsOfEnded = 0;

  readonly connects = new Counter({
    name: 'tunnel_agent_connects_total',
    help: 'Dials to the server by outcome: registered, duplicate (a replica already held), failed (network, TLS, timeouts), refused (credentials or configuration)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly sessionEnds = new Counter({
    name: 'tunnel_agent_session_ends_total',
    help: 'Registered sessions that ended, by cause: goaway (the server drained), clean, or the error code',
    labelNames: ['cause'] as const,
    registers: [this.registry],
  });
  readonly rttSeconds = new Histogram({
    name: 'tunnel_session_rtt_seconds',
    help: 'Round trips of pings to the servers',
    buckets: LATENCY_BUCKETS_S,
    registers: [this.registry],
  });
  readonly streams = new Counter({
    name: 'tunnel_agent_streams_total',
    help: 'Streams the servers opened, by outcome: closed, reset, refused, bad-header',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly bytes = new Counter({
    name: 'tunnel_agent_bytes_total',
    help: 'Payload bytes carried for users, by direction (in = from users, toward the targets)',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });
  readonly routeCertificateExpiry = new Gauge({
    name: 'tunnel_agent_route_certificate_expiry_timestamp_seconds',
    help: 'When the route certificate served on agent-tls routes expires, as a Unix time (0: none held yet); renewed at two thirds of its life',
    registers: [this.registry],
  });
  readonly routeCertificateRequests = new Counter({
    name: 'tunnel_agent_route_certificate_requests_total',
    help: 'Route certificate requests to the servers, by outcome: issued, failed',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly agentTlsHandshakeFailures = new Counter({
    name: 'tunnel_agent_tls_handshake_failures_total',
    help: "Users' TLS handshakes on agent-tls routes that failed (the user refused the certificate, or went away)",
    registers: [this.registry],
  });
  readonly targetDialSeconds = new Histogram({
    name: 'tunnel_agent_target_dial_seconds',
    help: 'Connects to route targets (TCP, and the TLS handshake for https targets), spares included',
    buckets: LATENCY_BUCKETS_S,
    registers: [this.registry],
  });
  readonly targetDialFailures = new Counter({
    name: 'tunnel_agent_target_dial_failures_total',
    help: 'Connects to route targets that failed, by errno (ECONNREFUSED, ETIMEDOUT, a TLS verification error …)',
    labelNames: ['errno'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    const serverSessions: Gauge<string> = new Gauge({
      name: 'tunnel_agent_server_sessions',
      help: 'Sessions to server replicas, registered and serving',
      registers: [this.registry],
      collect: () => serverSessions.set(this.count((s) => (s.serving ? 1 : 0))),
    });
    const wanted: Gauge<string> = new Gauge({
      name: 'tunnel_agent_server_sessions_wanted',
      help: 'Sessions the agent wants: one per replica (serverCount, at most 16)',
      registers: [this.registry],
      collect: () => wanted.set(this.source?.wantedSessions() ?? 0),
    });
    const active: Gauge<string> = new Gauge({
      name: 'tunnel_agent_streams_active',
      help: 'Streams being forwarded right now, over all sessions',
      registers: [this.registry],
      collect: () => active.set(this.count((s) => s.streams)),
    });
    const blocked: Gauge<string> = new Gauge({
      name: 'tunnel_streams_blocked',
      help: "Streams whose writer waits for the server's window right now (a slow user on the other side)",
      registers: [this.registry],
      collect: () => blocked.set(this.count((s) => s.stats.blockedStreams)),
    });
    const blockedSeconds: Counter<string> = new Counter({
      name: 'tunnel_stream_blocked_seconds_total',
      help: "Stream-seconds spent waiting for the server's window",
      registers: [this.registry],
      collect: () => {
        blockedSeconds.reset();
        blockedSeconds.inc(this.blockedSecondsOfEnded + this.count((s) => s.stats.blockedSeconds));
      },
    });
    const buffered: Gauge<string> = new Gauge({
      name: 'tunnel_session_buffered_bytes',
      help: 'Bytes held in memory by the sessions: unread, unsent, and queued for the transport',
      registers: [this.registry],
      collect: () => buffered.set(this.count((s) => s.stats.bufferedBytes)),
    });
  }

  attach(source: AgentMetricsSource): void {
    this.source = source;
  }

  /** A session ended: its blocked time stays counted. */
  sessionEnded(stats: SessionStats): void {
    this.blockedSecondsOfEnded += stats.blockedSeconds;
  }

  private count(pick: (s: { serving: boolean; streams: number; stats: SessionStats }) => number): number {
    let total = 0;
    for (const s of this.source?.sessions() ?? []) total += pick(s);
    return total;
  }
}
