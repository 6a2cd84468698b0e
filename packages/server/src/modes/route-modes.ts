/**
 * Every route mode, one line each (docs/ARCHITECTURE.md, "Route modes"). TunnelServer builds
 * each from this table; a new mode is one file plus one line here. Order matters on the public
 * TLS port: a route label goes to the first mode that claims it, and passthrough claims any.
 */
import { createPassthroughMode } from './passthrough.js';
import type { RouteModeFactory } from './route-mode.js';
import { createTcpMode } from './tcp.js';

export const ROUTE_MODES = {
  /** A port of its own per route (`tcpRoutes`): raw bytes, any protocol. */
  tcp: createTcpMode,
  /** The public TLS port: the ClientHello's SNI names the route; TLS ends at the target. */
  passthrough: createPassthroughMode,
} as const satisfies Record<string, RouteModeFactory>;

export type RouteModeName = keyof typeof ROUTE_MODES;
