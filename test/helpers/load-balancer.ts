/**
 * An L4 load balancer for tests: a TCP listener on 127.0.0.1 port 0 that relays each new
 * connection, bytes untouched (TLS passes through), to one upstream port, chosen by `pick`
 * (round robin by default). An upstream that refuses closes the client's connection, as a
 * balancer with a dead endpoint does. `freeze()` makes the connections open now go silent both
 * ways, without FIN or RST (a NAT or firewall that dropped their state); new ones still pass.
 * Cleanup is registered with defer (cleanup.ts).
 */
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { defer } from './cleanup.js';

export interface LoadBalancer {
  readonly port: number;
  /** Upstream ports; may be changed while running. */
  upstreams: number[];
  /** Which upstream (an index into `upstreams`) the n-th connection (from 0) goes to. */
  pick: (n: number) => number;
  /** Connections accepted so far, and the upstream port each went to. */
  readonly routed: number[];
  /** Silences every connection open now, both ways, leaving them open; returns how many. */
  freeze(): number;
}

export async function startLoadBalancer(upstreams: number[]): Promise<LoadBalancer> {
  const sockets = new Set<net.Socket>();
  const pairs = new Set<[net.Socket, net.Socket]>();
  const track = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  };
  const lb = {
    port: 0,
    upstreams,
    pick: (n: number) => n % lb.upstreams.length,
    routed: [] as number[],
    freeze: (): number => {
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        // Read nothing more: the peers' bytes pile up in their kernels, as behind a dead link.
        client.pause();
        upstream.pause();
      }
      const frozen = pairs.size;
      pairs.clear();
      return frozen;
    },
  };
  const server = net.createServer((client) => {
    const port = lb.upstreams[lb.pick(lb.routed.length)] as number;
    lb.routed.push(port);
    const upstream = net.connect(port, '127.0.0.1');
    track(client);
    track(upstream);
    // Either side failing or closing takes the other with it: the pair is one connection.
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    client.once('close', () => pairs.delete(pair));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  lb.port = (server.address() as AddressInfo).port;
  defer(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return lb;
}
