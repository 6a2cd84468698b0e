/**
 * What a route mode is (frp's proxy types): one self-contained file that claims the user
 * connections it serves (a port of its own, or route hostnames on the public TLS port), takes
 * each to an agent through the context's openRouteStream, refuses the way its clients
 * understand, reports its status and closes. route-modes.ts lists them; TunnelServer builds
 * each from that table with one RouteModeContext and never names a mode itself.
 */
import type { Socket } from 'node:net';
import type { SecureContext } from 'node:tls';
import type { Logger } from '@cluster-tunnel/config';
import type { AgentRegistry } from '../agent-registry.js';
import type { ServerConfig } from '../config.js';
import type { ServerMetrics } from '../metrics.js';
import type { RouteStream, RouteStreamRequest } from '../open-route-stream.js';
import type { UserForwarder } from '../user-forwarder.js';

export interface RouteModeContext {
  readonly config: Readonly<ServerConfig>;
  readonly registry: AgentRegistry;
  readonly metrics: ServerMetrics;
  readonly log: Logger;
  /** A stream to an agent holding the route, tried across agents (open-route-stream.ts). */
  openRouteStream(request: RouteStreamRequest): Promise<RouteStream>;
  /** Byte forwarding of a whole user connection, with its accounting (user-forwarder.ts). */
  readonly forwarder: UserForwarder;
  /** The server certificate, for modes that end TLS themselves (loaded before any mode starts). */
  serverSecureContext(): SecureContext;
  /** The token public keys (PEM) the server trusts, which also verify links (read before any mode starts). */
  tokenPublicKeyPems(): readonly string[];
}

export interface RouteMode {
  readonly name: string;
  /** Binds what the mode owns (its ports). All or nothing: a port that cannot be bound fails the start. */
  start(): Promise<void>;
  /**
   * Modes on the public TLS port: whether this mode serves the route label a ClientHello named,
   * which is whether the label's agents registered it in this mode (`registry.modeOf`).
   */
  claims?(route: string): boolean;
  /**
   * Takes a claimed connection: paused, its ClientHello read (`helloBytes`, offering the ALPN
   * protocols `alpn`) and not yet answered.
   */
  accept?(socket: Socket, route: string, helloBytes: Buffer, alpn: readonly string[]): void;
  /**
   * The token and link ids now revoked (the whole set, after every change of the revocation
   * file): a mode whose users hold sessions ends the revoked ones.
   */
  onRevocations?(revoked: ReadonlySet<string>): void;
  /** What /status shows for this mode (JSON). */
  status(): unknown;
  /** Stops accepting; connections already forwarded go on. Idempotent. */
  close(): void;
  /** Also cuts the mode's open connections. */
  destroy(): void;
}

export type RouteModeFactory = (context: RouteModeContext) => RouteMode;
