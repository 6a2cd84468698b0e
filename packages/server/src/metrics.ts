import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** Prometheus metrics of one server; a registry of its own so tests can run several servers. */
export class ServerMetrics {
  readonly registry = new Registry();
  readonly connections = new Counter({
    name: 'tunnel_connections_total',
    // mode (passthrough, tcp) is set once a connection has a route; refusals before that have none.
    help: 'User connections accepted, by route mode and outcome',
    labelNames: ['mode', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly agentsConnected = new Gauge({
    name: 'tunnel_agents_connected',
    help: 'Registered agent sessions',
    registers: [this.registry],
  });
  readonly agentRefusals = new Counter({
    name: 'tunnel_agent_refusals_total',
    help: 'Agent connections refused, by error code',
    labelNames: ['code'] as const,
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
  readonly pendingConnections = new Gauge({
    name: 'tunnel_pending_connections',
    help: 'Public-port connections not yet routed or authenticated',
    registers: [this.registry],
  });
  readonly userStreams = new Gauge({
    name: 'tunnel_user_streams_active',
    help: 'User connections currently forwarded to agents',
    registers: [this.registry],
  });
  readonly bytes = new Counter({
    name: 'tunnel_user_bytes_total',
    help: 'User payload bytes forwarded, by direction (in = from users)',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }
}
