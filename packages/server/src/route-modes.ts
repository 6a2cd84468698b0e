/**
 * How user connections reach a route, one entry per mode (frp's proxy types). A mode decides
 * how a connection names its route and how a refusal looks to the user; forwarding to an agent
 * is the same for all (user-forwarder.ts). A new mode is one file plus one line here.
 *
 * `http` and `agent-tls` (DESIGN.md) are not built yet.
 */
import type { Socket } from 'node:net';
import type { ErrorCode } from '@cluster-tunnel/protocol';
import { passthroughMode } from './passthrough.js';
import { tcpMode } from './tcp-route.js';

export interface RouteMode {
  readonly name: string;
  /** Ends a connection no agent would take, in the way its clients understand. */
  refuse(socket: Socket, code: ErrorCode): void;
}

export const ROUTE_MODES = {
  /** The public TLS port: the ClientHello's SNI names the route; TLS ends at the target. */
  passthrough: passthroughMode,
  /** A port of its own per route (`tcpRoutes`): raw bytes, any protocol. */
  tcp: tcpMode,
} as const satisfies Record<string, RouteMode>;

export type RouteModeName = keyof typeof ROUTE_MODES;
