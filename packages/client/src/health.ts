/**
 * kubelet probes: `/healthz` answers 200 while the process runs (liveness: restart only a hung
 * process, never one that merely cannot reach its server), `/readyz` answers 200 once the agent
 * is registered with at least one server and 503 otherwise (readiness). `/metrics`: the agent's
 * Prometheus metrics (metrics.ts).
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { formatHostPort } from '@cluster-tunnel/config';
import type { HostPort, Logger } from '@cluster-tunnel/config';
import type { Registry } from 'prom-client';

export interface HealthServerOptions {
  listen: HostPort;
  isReady: () => boolean;
  /** Why not ready, for the /readyz body. */
  notReadyReason?: () => string;
  /** Served at /metrics when given. */
  metrics?: Registry;
  logger: Logger;
}

export class HealthServer {
  private readonly options: HealthServerOptions;
  private readonly server: Server;
  private closePromise: Promise<void> | undefined;

  constructor(options: HealthServerOptions) {
    this.options = options;
    this.server = createServer(this.onRequest);
    // Probes are tiny: a client that dawdles must not hold a socket for long.
    this.server.requestTimeout = 5_000;
    this.server.headersTimeout = 5_000;
    this.server.keepAliveTimeout = 5_000;
  }

  /** Binds the port; rejects (e.g. EADDRINUSE) if it cannot. */
  async listen(): Promise<AddressInfo> {
    const { host, port } = this.options.listen;
    await new Promise<void>((resolve, reject) => {
      const onListening = (): void => {
        this.server.off('error', onError);
        resolve();
      };
      const onError = (err: Error): void => {
        this.server.off('listening', onListening);
        reject(err);
      };
      this.server.once('listening', onListening);
      this.server.once('error', onError);
      this.server.listen(port, host);
    });
    const address = this.address as AddressInfo;
    const listen = formatHostPort({ host: address.address, port: address.port });
    this.options.logger.info({ listen }, 'health endpoint listening');
    return address;
  }

  get address(): AddressInfo | undefined {
    const address = this.server.address();
    return address !== null && typeof address === 'object' ? address : undefined;
  }

  /** Stops listening and drops idle keep-alive connections; idempotent. */
  close(): Promise<void> {
    this.closePromise ??= new Promise<void>((resolve) => {
      if (!this.server.listening) return resolve();
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    return this.closePromise;
  }

  private readonly onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0];
    const metrics = this.options.metrics;
    if (metrics && path === '/metrics' && req.method === 'GET') {
      metrics.metrics().then(
        (body) => {
          res.writeHead(200, { 'content-type': metrics.contentType, 'cache-control': 'no-store' });
          res.end(body);
        },
        () => {
          res.writeHead(500).end();
        },
      );
      return;
    }
    let status: number;
    let body: string;
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      status = 405;
      body = 'method not allowed\n';
    } else if (path === '/healthz') {
      status = 200;
      body = 'ok\n';
    } else if (path === '/readyz') {
      const ready = this.options.isReady();
      status = ready ? 200 : 503;
      body = ready ? 'ready\n' : `${this.options.notReadyReason?.() ?? 'not registered with any server'}\n`;
    } else {
      status = 404;
      body = 'not found\n';
    }
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
}
