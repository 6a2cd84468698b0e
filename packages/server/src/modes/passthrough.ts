/**
 * The `passthrough` route mode: on the public TLS port, a ClientHello whose SNI is
 * `<label>.<domain>` is forwarded unread to an agent holding `<label>`. The server never holds
 * the keys to this traffic; TLS ends at the target (kube-apiserver), so client certificates work
 * end to end. It takes every route label its agents registered without another mode, and
 * refuses labels no agent holds.
 */
import type { Socket } from 'node:net';
import type { ErrorCode } from '@cluster-tunnel/protocol';
import { TLS_ALERT } from '../tls-alert.js';
import type { RouteMode, RouteModeContext } from './route-mode.js';

/** A fatal TLS alert: the user's client reports a TLS error, never a truncated stream. */
function refuse(socket: Socket, code: ErrorCode): void {
  socket.end(code === 'TUN_ERR_NO_ROUTE' ? TLS_ALERT.unrecognizedName : TLS_ALERT.internalError);
}

export function createPassthroughMode(context: RouteModeContext): RouteMode {
  const { forwarder, log } = context;
  const sockets = new Set<Socket>();
  return {
    name: 'passthrough',
    start: () => Promise.resolve(),
    // Labels registered in another mode belong to that mode; unheld labels are refused here.
    claims: (route) => (context.registry.modeOf(route) ?? 'passthrough') === 'passthrough',
    accept(socket, route, helloBytes) {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      forwarder
        .forward(socket, { mode: 'passthrough', route, firstBytes: helloBytes, refuse })
        .catch((err: unknown) => {
          log.error({ route, err }, 'passthrough forwarding failed');
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
