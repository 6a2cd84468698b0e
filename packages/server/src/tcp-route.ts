/**
 * The `tcp` route mode (frp's `tcp` proxy type): a port of its own per route label, given in
 * `tcpRoutes`. Every connection accepted there is forwarded, unread, to an agent holding the
 * label, so any protocol works, server-speaks-first ones included. Who may serve the label is
 * still decided by the agent's identity; the port only names the route.
 */
import net, { type AddressInfo, type Socket } from 'node:net';
import { type ErrorCode } from '@cluster-tunnel/protocol';
import { formatHostPort, type Logger, type RouteTarget } from '@cluster-tunnel/config';
import type { UserForwarder } from './user-forwarder.js';

export const tcpMode = {
  name: 'tcp',
  /** A TCP reset: the user's client sees ECONNRESET, never a clean but empty answer. */
  refuse(socket: Socket, _code: ErrorCode): void {
    if (!socket.destroyed) socket.resetAndDestroy();
  },
} as const;

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

export interface TcpRouteListenerOptions {
  /** `name` is the route label; host:port is where to listen. */
  route: RouteTarget;
  forwarder: UserForwarder;
  log: Logger;
}

/** One listening port of a TCP route. close() stops accepting; destroy() also cuts its users. */
export class TcpRouteListener {
  readonly label: string;
  private readonly server: net.Server;
  private readonly sockets = new Set<Socket>();
  private readonly log: Logger;

  constructor(private readonly o: TcpRouteListenerOptions) {
    this.label = o.route.name;
    this.log = o.log;
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, this.onConnection);
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.o.route;
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const address = this.address!;
        this.log.info(
          { route: this.label, listen: formatHostPort({ host, port: address.port }) },
          'tcp route listening',
        );
        resolve(address);
      });
    });
  }

  get address(): AddressInfo | undefined {
    return (this.server.address() as AddressInfo | null) ?? undefined;
  }

  get connections(): number {
    return this.sockets.size;
  }

  /** Stops accepting; connections already forwarded go on. Idempotent. */
  close(): void {
    if (this.server.listening) this.server.close();
  }

  destroy(): void {
    this.close();
    for (const s of this.sockets) s.destroy();
  }

  private readonly onConnection = (socket: Socket): void => {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', (err) =>
      this.log.debug({ route: this.label, err: err.message }, 'tcp route socket error'),
    );
    socket.setNoDelay(true);
    this.o.forwarder.forward(socket, this.label, 'tcp').catch((err: unknown) => {
      this.log.error({ route: this.label, err }, 'tcp route forwarding failed');
      socket.destroy();
    });
  };
}
