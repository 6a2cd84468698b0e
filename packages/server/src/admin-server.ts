import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { HostPort, Logger } from '@cluster-tunnel/config';
import type { ServerMetrics } from './metrics.js';
import { requestPath } from './request-path.js';
import { STATUS_PAGE_CSS, STATUS_PAGE_HEADERS, STATUS_PAGE_HTML, STATUS_PAGE_JS } from './status-page.js';

const STATUS_PAGE_FILES: Readonly<Record<string, { type: string; body: string }>> = {
  '/': { type: 'text/html; charset=utf-8', body: STATUS_PAGE_HTML },
  '/status.js': { type: 'text/javascript; charset=utf-8', body: STATUS_PAGE_JS },
  '/status.css': { type: 'text/css; charset=utf-8', body: STATUS_PAGE_CSS },
};

export interface AdminServerOptions {
  listen: HostPort;
  metrics: ServerMetrics;
  log: Logger;
  isReady: () => boolean;
  /** The body of /status (TunnelServer.status()). */
  status: () => unknown;
  /** POST /probe[?route=label]: data-path probes now (route-prober.ts). */
  probe: (route: string | undefined) => Promise<unknown>;
}

/**
 * Plain HTTP for operators and probes: the status page at / (status-page.ts), /status (JSON),
 * /metrics, /healthz, /readyz, and POST /probe. It shows no token, key or cookie: agents are
 * named by id, cluster and address only.
 */
export class AdminServer {
  private readonly server: http.Server;

  constructor(private readonly o: AdminServerOptions) {
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        o.log.error({ err }, 'admin request failed');
        if (!res.headersSent) res.writeHead(500);
        res.end();
      });
    });
  }

  async listen(): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.o.listen.port, this.o.listen.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    return this.server.address() as AddressInfo;
  }

  get address(): AddressInfo | undefined {
    return (this.server.address() as AddressInfo | null) ?? undefined;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = requestPath(req);
    if (path === undefined) return text(res, 400, 'malformed request target\n');
    const page = Object.hasOwn(STATUS_PAGE_FILES, path) ? STATUS_PAGE_FILES[path] : undefined;
    if (page !== undefined) {
      res.writeHead(200, { 'Content-Type': page.type, ...STATUS_PAGE_HEADERS });
      res.end(page.body);
      return;
    }
    // Browsers ask for it with the page: nothing, rather than a 404 in their console.
    if (path === '/favicon.ico') {
      res.writeHead(204, STATUS_PAGE_HEADERS);
      res.end();
      return;
    }
    if (path === '/healthz') return text(res, 200, 'ok\n');
    if (path === '/readyz')
      return this.o.isReady() ? text(res, 200, 'ready\n') : text(res, 503, 'not ready\n');
    if (path === '/metrics') {
      res.writeHead(200, { 'Content-Type': this.o.metrics.registry.contentType });
      res.end(await this.o.metrics.registry.metrics());
      return;
    }
    if (path === '/probe') {
      if (req.method !== 'POST') return text(res, 405, 'POST /probe[?route=<label>]\n');
      const route = new URL(req.url ?? '/', 'http://admin').searchParams.get('route') ?? undefined;
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(await this.o.probe(route), null, 2));
      return;
    }
    if (path === '/status') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(this.o.status(), null, 2));
      return;
    }
    text(res, 404, 'not found\n');
  }
}

function text(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain' });
  res.end(body);
}
