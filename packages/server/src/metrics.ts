/**
 * Prometheus metrics of one server (docs/OPERATIONS.md, "Metrics"); a registry of its own so
 * tests can run several servers. Conventions: `tunnel_` prefix, base units in the name
 * (`_seconds`, `_bytes`), `_total` for counters, bounded label sets. Per-cluster series carry a
 * `cluster` label only while the server holds agents of at most `metricsClusterLabelLimit`
 * clusters, so a server with 10,000 clusters does not explode its series.
 *
 * Backpressure and per-cluster series are read from the live sessions when scraped (attach()).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { clusterOfLabel, type SessionStats } from '@cluster-tunnel/protocol';

/** Latency buckets from a local hop (1 ms) to a slow target dial (10 s). */
const LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** What the metrics read from the server when scraped. */
export interface MetricsSource {
  /** Every registered agent session: its cluster and its yamux session's figures. */
  sessions(): Iterable<{ clusterId: string; stats: SessionStats; receiveWindows: () => number[] }>;
  clusterLabelLimit: number;
  /** The last data-path probe of each agent route. */
  probes(): Iterable<{ clusterId: string; route: string; ok: boolean; dialMs?: number }>;
}

export class ServerMetrics {
  readonly registry = new Registry();
  private source: MetricsSource | undefined;
  /** Stream-seconds blocked in sessions that have ended (the live ones are read when scraped). */
  private blockedSecondsOfEnded = 0;
  /** Payload bytes per cluster with agents here (in = from users); forgotten when its last agent leaves. */
  private readonly clusterBytes = new Map<string, { in: number; out: number }>();

  readonly connections = new Counter({
    name: 'tunnel_connections_total',
    // mode (passthrough, tcp, http) is set once a connection has a route; refusals before that have none.
    help: 'User connections accepted, by route mode and outcome',
    labelNames: ['mode', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly refusals = new Counter({
    name: 'tunnel_user_connections_refused_total',
    help: 'User connections and http requests no agent took, by route mode and error code',
    labelNames: ['mode', 'code'] as const,
    registers: [this.registry],
  });
  readonly agentsConnected = new Gauge({
    name: 'tunnel_agents_connected',
    help: 'Registered agent sessions on this replica',
    registers: [this.registry],
  });
  readonly agentRefusals = new Counter({
    name: 'tunnel_agent_refusals_total',
    help: 'Agent connections refused, by error code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly sessionsEnded = new Counter({
    name: 'tunnel_agent_sessions_ended_total',
    help: 'Agent sessions that ended, by cause: the error code, or clean (GoAway, a drain)',
    labelNames: ['cause'] as const,
    registers: [this.registry],
  });
  readonly sessionPauses = new Counter({
    name: 'tunnel_agent_session_pauses_total',
    help: 'Times the server stopped reading an agent over a session limit (docs/SECURITY.md), by limit',
    labelNames: ['limit'] as const,
    registers: [this.registry],
  });
  readonly duplicateSessions = new Counter({
    name: 'tunnel_agent_duplicate_sessions_total',
    help: 'Agent sessions registered while the same agent had one here already (it probes for a missing replica; a steady rate means serverCount is above the replicas)',
    registers: [this.registry],
  });
  readonly rttSeconds = new Histogram({
    name: 'tunnel_session_rtt_seconds',
    help: 'Round trips of keepalive and liveness pings to agents',
    buckets: LATENCY_BUCKETS_S,
    registers: [this.registry],
  });
  readonly pendingConnections = new Gauge({
    name: 'tunnel_pending_connections',
    help: 'Public-port connections not yet routed or authenticated',
    registers: [this.registry],
  });
  readonly clientHelloSeconds = new Histogram({
    name: 'tunnel_client_hello_seconds',
    help: 'Time from accepting a public-port connection to having its ClientHello (timeouts: tunnel_connections_total{outcome="timeout"})',
    buckets: LATENCY_BUCKETS_S,
    registers: [this.registry],
  });
  readonly streamOpenSeconds = new Histogram({
    name: 'tunnel_stream_open_seconds',
    help: "Time from a user connection's route being known to an agent's reply (its target reached), by route mode",
    labelNames: ['mode'] as const,
    buckets: LATENCY_BUCKETS_S,
    registers: [this.registry],
  });
  readonly userStreams = new Gauge({
    name: 'tunnel_user_streams_active',
    help: 'User connections currently forwarded to agents, by route mode',
    labelNames: ['mode'] as const,
    registers: [this.registry],
  });
  readonly bytes = new Counter({
    name: 'tunnel_user_bytes_total',
    help: 'User payload bytes forwarded, by direction (in = from users) and route mode',
    labelNames: ['direction', 'mode'] as const,
    registers: [this.registry],
  });
  readonly httpRequests = new Counter({
    name: 'tunnel_http_requests_total',
    help: 'Requests on http routes, by status class (2xx … 5xx)',
    labelNames: ['status_class'] as const,
    registers: [this.registry],
  });
  readonly httpRequestSeconds = new Histogram({
    name: 'tunnel_http_request_duration_seconds',
    help: 'Requests on http routes, from their arrival to the end of the answer',
    buckets: LATENCY_BUCKETS_S,
    registers: [this.registry],
  });

  readonly certificateExpiry = new Gauge({
    name: 'tunnel_server_certificate_expiry_timestamp_seconds',
    help: "When the server's TLS certificate (the public port's, for <domain> and *.<domain>) expires, as a Unix time",
    registers: [this.registry],
  });
  readonly routeCaExpiry = new Gauge({
    name: 'tunnel_route_ca_expiry_timestamp_seconds',
    help: 'When the route CA (it signs agent-tls route certificates) expires, as a Unix time; 0 when this server signs none',
    registers: [this.registry],
  });
  readonly routeCertificateRequests = new Counter({
    name: 'tunnel_route_certificate_requests_total',
    help: 'Route certificate requests from agents, by outcome (issued, or the refusal code)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly probes = new Counter({
    name: 'tunnel_probes_total',
    help: 'Data-path probes of agent routes, by outcome (ok, failed)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly probeSeconds = new Histogram({
    name: 'tunnel_probe_seconds',
    help: "Data-path probes as the server saw them: the tunnel's round trip plus the agent's connect to the target",
    buckets: LATENCY_BUCKETS_S,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    /** Per route: whether any agent's last probe succeeded, and the fastest dial among those. */
    const byRoute = (): Map<string, { cluster: string; ok: boolean; dialMs?: number }> => {
      const routes = new Map<string, { cluster: string; ok: boolean; dialMs?: number }>();
      for (const p of this.source?.probes() ?? []) {
        const r = routes.get(p.route) ?? { cluster: p.clusterId, ok: false };
        if (p.ok) {
          r.ok = true;
          if (p.dialMs !== undefined) r.dialMs = Math.min(r.dialMs ?? Infinity, p.dialMs);
        }
        routes.set(p.route, r);
      }
      return routes;
    };
    const unreachable: Gauge<string> = new Gauge({
      name: 'tunnel_routes_unreachable',
      help: 'Routes every one of whose agents failed its last data-path probe (its target is down, or the agent cannot reach it)',
      registers: [this.registry],
      collect: () => unreachable.set([...byRoute().values()].filter((r) => !r.ok).length),
    });
    const probeUp: Gauge<string> = new Gauge({
      name: 'tunnel_route_probe_success',
      help: 'Per route: 1 when an agent reached its target in the last data-path probe, else 0 (left out above metricsClusterLabelLimit clusters)',
      labelNames: ['cluster', 'route'] as const,
      registers: [this.registry],
      collect: () => {
        probeUp.reset();
        const routes = byRoute();
        if (new Set([...routes.values()].map((r) => r.cluster)).size > (this.source?.clusterLabelLimit ?? 0))
          return;
        for (const [route, r] of routes) probeUp.set({ cluster: r.cluster, route }, r.ok ? 1 : 0);
      },
    });
    const probeDial: Gauge<string> = new Gauge({
      name: 'tunnel_route_probe_dial_seconds',
      help: "Per route: the agent's connect to the target in the last successful probe (left out above metricsClusterLabelLimit clusters)",
      labelNames: ['cluster', 'route'] as const,
      registers: [this.registry],
      collect: () => {
        probeDial.reset();
        const routes = byRoute();
        if (new Set([...routes.values()].map((r) => r.cluster)).size > (this.source?.clusterLabelLimit ?? 0))
          return;
        for (const [route, r] of routes)
          if (r.dialMs !== undefined) probeDial.set({ cluster: r.cluster, route }, r.dialMs / 1000);
      },
    });
    const blocked: Gauge<string> = new Gauge({
      name: 'tunnel_streams_blocked',
      help: "Streams whose writer waits for the peer's window right now (a slow reader on the other side)",
      registers: [this.registry],
      collect: () => {
        blocked.set(this.sum((s) => s.blockedStreams));
      },
    });
    const blockedSeconds: Counter<string> = new Counter({
      name: 'tunnel_stream_blocked_seconds_total',
      help: "Stream-seconds spent waiting for a peer's window (two streams blocked for 1 s: 2)",
      registers: [this.registry],
      collect: () => {
        blockedSeconds.reset();
        blockedSeconds.inc(this.blockedSecondsOfEnded + this.sum((s) => s.blockedSeconds));
      },
    });
    const buffered: Gauge<string> = new Gauge({
      name: 'tunnel_session_buffered_bytes',
      help: 'Bytes held in memory by agent sessions: unread, unsent, and queued for the transport',
      registers: [this.registry],
      collect: () => {
        buffered.set(this.sum((s) => s.bufferedBytes));
      },
    });
    const receiveWindows: Gauge<string> = new Gauge({
      name: 'tunnel_stream_receive_window_bytes',
      help: 'Receive windows of the open streams right now (auto-tuned), as quantiles',
      labelNames: ['quantile'] as const,
      registers: [this.registry],
      collect: () => {
        receiveWindows.reset();
        const windows = [...(this.source?.sessions() ?? [])].flatMap((s) => s.receiveWindows());
        windows.sort((a, b) => a - b);
        if (windows.length === 0) return;
        for (const q of [0, 0.5, 0.9, 1]) {
          receiveWindows.set(
            { quantile: String(q) },
            windows[Math.min(windows.length - 1, Math.floor(q * windows.length))]!,
          );
        }
      },
    });
    const clusterAgents: Gauge<string> = new Gauge({
      name: 'tunnel_cluster_agents',
      help: 'Agent sessions per cluster (left out above metricsClusterLabelLimit clusters)',
      labelNames: ['cluster'] as const,
      registers: [this.registry],
      collect: () => {
        clusterAgents.reset();
        const counts = new Map<string, number>();
        for (const s of this.source?.sessions() ?? [])
          counts.set(s.clusterId, (counts.get(s.clusterId) ?? 0) + 1);
        if (counts.size > (this.source?.clusterLabelLimit ?? 0)) return;
        for (const [cluster, n] of counts) clusterAgents.set({ cluster }, n);
      },
    });
    const clusterBytesMetric: Counter<string> = new Counter({
      name: 'tunnel_cluster_bytes_total',
      help: 'User payload bytes per cluster, by direction (left out above metricsClusterLabelLimit clusters)',
      labelNames: ['cluster', 'direction'] as const,
      registers: [this.registry],
      collect: () => {
        clusterBytesMetric.reset();
        if (this.clusterBytes.size > (this.source?.clusterLabelLimit ?? 0)) return;
        for (const [cluster, b] of this.clusterBytes) {
          clusterBytesMetric.inc({ cluster, direction: 'in' }, b.in);
          clusterBytesMetric.inc({ cluster, direction: 'out' }, b.out);
        }
      },
    });
  }

  /** Where the scrape-time series read from (the server, once started). */
  attach(source: MetricsSource): void {
    this.source = source;
  }

  /** Counts a user connection's (or request's) payload, by mode and by cluster. */
  userBytes(mode: string, route: string, bytesIn: number, bytesOut: number): void {
    this.bytes.inc({ direction: 'in', mode }, bytesIn);
    this.bytes.inc({ direction: 'out', mode }, bytesOut);
    const cluster = clusterOfLabel(route);
    if (cluster === undefined) return;
    const b = this.clusterBytes.get(cluster) ?? { in: 0, out: 0 };
    b.in += bytesIn;
    b.out += bytesOut;
    this.clusterBytes.set(cluster, b);
  }

  /** User payload bytes per cluster with agents here, since it was first seen (the status page). */
  trafficByCluster(): Record<string, { in: number; out: number }> {
    return Object.fromEntries([...this.clusterBytes].map(([cluster, b]) => [cluster, { ...b }]));
  }

  /** A cluster's last agent left this replica: its per-cluster series go (a counter reset). */
  forgetCluster(cluster: string): void {
    this.clusterBytes.delete(cluster);
  }

  /** A session ended: its blocked time stays counted. */
  sessionEnded(stats: SessionStats): void {
    this.blockedSecondsOfEnded += stats.blockedSeconds;
  }

  private sum(pick: (s: SessionStats) => number): number {
    let total = 0;
    for (const s of this.source?.sessions() ?? []) total += pick(s.stats);
    return total;
  }
}
