/**
 * Every route mode, one line each (docs/ARCHITECTURE.md, "Route modes"). TunnelServer builds
 * each from this table; a new mode is one file plus one line here. On the public TLS port a
 * route label goes to the mode that claims it: the one its agents registered it with
 * (`routeModes`), passthrough when they named none. A mode with `accept` may be named by agents.
 */
import { createAgentTlsMode } from './agent-tls.js';
import { createHttpMode } from './http.js';
import { createPassthroughMode } from './passthrough.js';
import type { RouteModeFactory } from './route-mode.js';
import { createTcpMode } from './tcp.js';

export const ROUTE_MODES = {
  /** A port of its own per route (`tcpRoutes`): raw bytes, any protocol. */
  tcp: createTcpMode,
  /** The public TLS port: the ClientHello's SNI names the route; TLS ends at the target. */
  passthrough: createPassthroughMode,
  /** The public TLS port, for routes agents registered as `http`: TLS ends here, HTTP is forwarded. */
  http: createHttpMode,
  /** The public TLS port, for routes agents registered as `agent-tls`: forwarded unread; TLS ends at the agent. */
  'agent-tls': createAgentTlsMode,
} as const satisfies Record<string, RouteModeFactory>;

export type RouteModeName = keyof typeof ROUTE_MODES;
