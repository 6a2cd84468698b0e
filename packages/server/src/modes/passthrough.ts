/**
 * The `passthrough` route mode: on the public TLS port, a ClientHello whose SNI is
 * `<label>.<domain>` is forwarded unread to an agent holding `<label>`. The server never holds
 * the keys to this traffic; TLS ends at the target (kube-apiserver), so client certificates work
 * end to end. It takes every route label its agents registered without another mode, and
 * refuses labels no agent holds. agent-tls.ts forwards the same way for its own labels.
 */
import type { Socket } from 'node:net';
import type { ErrorCode } from '@cluster-tunnel/protocol';
import { TLS_ALERT } from '../tls-alert.js';
import type { RouteMode, RouteModeContext } from './route-mode.js';

/** A fatal TLS alert: the user's client reports a TLS error, never a truncated stream. */
function refuse(socket: Socket, code: ErrorCode): void {
  socket.end(code === 'TUN_ERR_NO_ROUTE' ? TLS_ALERT.unrecognizedName : TLS_ALERT.internalError);
}

export interface SniForwardingOptions {
  name: string;
  /** Whether this mode serves a label, from the mode its agents registered it with (undefined: none holds it). */
  claims(modeOf: string | undefined): boolean;
  /** Stream header metadata for the agent, from the user's ClientHello. */
  metadata?(alpn: readonly string[]): Readonly<Record<string, string>> | undefined;
}

/** A mode that forwards a user's TLS bytes unread to an agent of the label the SNI names. */
export function createSniForwardingMode(context: RouteModeContext, o: SniForwardingOptions): RouteMode {
  const { forwarder, log } = context;
  const sockets = new Set<Socket>();
  return {
    name: o.name,
    start: () => Promise.resolve(),
    claims: (route) => o.claims(context.registry.modeOf(route)),
    accept(socket, route, helloBytes, alpn) {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      const metadata = o.metadata?.(alpn);
      forwarder
        .forward(socket, {
          mode: o.name,
          route,
          firstBytes: helloBytes,
          refuse,
          registeredAs: o.name,
          ...(metadata === undefined ? {} : { metadata }),
        })
        .catch((err: unknown) => {
          log.error({ route, err, mode: o.name }, 'forwarding failed');
          socket.destroy();
        });
    },
    status: () => ({ connections: sockets.size }),
    close: () => undefined,
    destroy() {
      for (const socket of sockets) socket.destroy();
    },
  };
}

export function createPassthroughMode(context: RouteModeContext): RouteMode {
  return createSniForwardingMode(context, {
    name: 'passthrough',
    // Labels registered in another mode belong to that mode; unheld labels are refused here.
    claims: (mode) => (mode ?? 'passthrough') === 'passthrough',
  });
}
