/**
 * The `tcp` route mode (frp's `tcp` proxy type): a port of its own per route label, given in
 * `tcpRoutes`. Every connection accepted there is forwarded, unread, to an agent holding the
 * label, so any protocol works, server-speaks-first ones included. Who may serve the label is
 * still decided by the agent's identity; the port only names the route.
 */
import net, { type AddressInfo, type Socket } from 'node:net';
import type { ErrorCode } from '@cluster-tunnel/protocol';
import { formatHostPort, type RouteTarget } from '@cluster-tunnel/config';
import type { RouteMode, RouteModeContext } from './route-mode.js';

/** One TCP route as /status shows it. */
export interface TcpRouteStatus {
  route: string;
  /** host:port it listens on, or `closed`. */
  listen: string;
  /** User connections accepted there and still open. */
  connections: number;
  /** Whether a usable agent holds the label right now. */
  served: boolean;
}

/** A TCP reset: the user's client sees ECONNRESET, never a clean but empty answer. */
function refuse(socket: Socket, _code: ErrorCode): void {
  if (!socket.destroyed) socket.resetAndDestroy();
}

export function createTcpMode(context: RouteModeContext): RouteMode {
  const listeners = context.config.tcpRoutes.map((route) => new TcpRouteListener(route, context));
  return {
    name: 'tcp',
    start: async () => {
      await Promise.all(listeners.map((l) => l.listen()));
    },
    status: (): { routes: TcpRouteStatus[] } => ({ routes: listeners.map((l) => l.status()) }),
    close() {
      for (const l of listeners) l.close();
    },
    destroy() {
      for (const l of listeners) l.destroy();
    },
  };
}

/** One listening port of a TCP route. close() stops accepting; destroy() also cuts its users. */
class TcpRouteListener {
  readonly route: string;
  private readonly server: net.Server;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly target: RouteTarget,
    private readonly context: RouteModeContext,
  ) {
    this.route = target.name;
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, this.onConnection);
  }

  listen(): Promise<void> {
    const { host, port } = this.target;
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        this.context.log.info(
          { route: this.route, listen: formatHostPort({ host, port: this.address!.port }) },
          'tcp route listening',
        );
        resolve();
      });
    });
  }

  get address(): AddressInfo | undefined {
    return (this.server.address() as AddressInfo | null) ?? undefined;
  }

  status(): TcpRouteStatus {
    const a = this.address;
    return {
      route: this.route,
      listen: a ? formatHostPort({ host: a.address, port: a.port }) : 'closed',
      connections: this.sockets.size,
      served: this.context.registry.has(this.route),
    };
  }

  close(): void {
    if (this.server.listening) this.server.close();
  }

  destroy(): void {
    this.close();
    for (const s of this.sockets) s.destroy();
  }

  private readonly onConnection = (socket: Socket): void => {
    const { route } = this;
    const { log, forwarder } = this.context;
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', (err) => log.debug({ route, err: err.message }, 'tcp route socket error'));
    socket.setNoDelay(true);
    forwarder.forward(socket, { mode: 'tcp', route, refuse }).catch((err: unknown) => {
      log.error({ route, err }, 'tcp route forwarding failed');
      socket.destroy();
    });
  };
}
