/**
 * The server's own name on the public port (`<domain>`, `localhost`, or no SNI): TLS ends here
 * with the server certificate, and node:http serves the agent endpoint's WebSocket upgrade
 * (`/connect`, agent-endpoint.ts) and the load balancer's probes (`/healthz`, `/readyz`).
 * Each connection stays under its pending deadline (pending-connections.ts) until an agent's
 * token is verified; plain requests get one answer and the connection closes.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from '@cluster-tunnel/config';
import type { AgentEndpoint } from './agent-endpoint.js';
import type { PendingConnection } from './pending-connections.js';
import { MAX_REQUEST_HEADER_BYTES, answerBadRequest } from './bad-request.js';
import { requestPath } from './request-path.js';

export interface OwnNameServerOptions {
  secureContext: tls.SecureContext;
  endpoint: AgentEndpoint;
  /** True once the server drains: /readyz answers 503 and upgrades are refused. */
  isDraining: () => boolean;
  log: Logger;
}

export class OwnNameServer {
  private readonly httpServer: http.Server;
  /** The pending entry of each TLS socket handed to the HTTP server. */
  private readonly pendingOf = new WeakMap<Duplex, PendingConnection>();

  constructor(private readonly o: OwnNameServerOptions) {
    // Never listen()ed: connections come from serve(). Its own timeouts need listen(), so the
    // pending deadline bounds the headers instead; own-name responses close the connection.
    this.httpServer = http.createServer({ maxHeaderSize: MAX_REQUEST_HEADER_BYTES }, (req, res) =>
      this.onRequest(req, res),
    );
    this.httpServer.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) =>
      this.onClientError(err, socket),
    );
    this.httpServer.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) =>
      this.onUpgrade(req, socket, head),
    );
  }

  /** Terminates TLS with the server certificate and hands the connection to the HTTP server. */
  serve(socket: Socket, helloBytes: Buffer, pending: PendingConnection): void {
    pending.phase = 'tls-handshake';
    socket.unshift(helloBytes);
    const tlsSocket = new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: this.o.secureContext,
      ALPNProtocols: ['http/1.1'],
    });
    tlsSocket.on('error', (err) => {
      this.o.log.debug({ err: err.message }, 'tls error on own endpoint');
      socket.destroy();
    });
    tlsSocket.once('secure', () => {
      pending.phase = 'request-headers';
    });
    this.pendingOf.set(tlsSocket, pending);
    this.httpServer.emit('connection', tlsSocket);
  }

  destroy(): void {
    this.httpServer.closeAllConnections();
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const pending = this.pendingOf.get(socket);
    if (this.o.isDraining() || pending === undefined) {
      socket.destroy();
      return;
    }
    pending.phase = 'agent-upgrade';
    this.o.endpoint.handleUpgrade(req, socket, head).then(
      (accepted) => {
        // An agent with a verified token: its session's own bounds apply from here.
        if (accepted) pending.settle();
      },
      (err: unknown) => {
        this.o.log.error({ err }, 'agent upgrade failed');
        socket.destroy();
      },
    );
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const status = answerBadRequest(err, socket);
    this.o.log.debug({ err: err.message, httpCode: err.code, status }, 'bad request on own endpoint');
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    // Plain requests (probes) get one answer each: the connection stays bounded by the pending
    // deadline, never parked in keep-alive.
    res.shouldKeepAlive = false;
    const path = requestPath(req);
    const draining = this.o.isDraining();
    if (path === undefined) {
      res
        .writeHead(400, { 'Content-Type': 'application/json' })
        .end(JSON.stringify({ code: 'TUN_ERR_PROTOCOL', message: 'malformed request target' }));
    } else if (path === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      res
        .writeHead(draining ? 503 : 200, { 'Content-Type': 'text/plain' })
        .end(draining ? 'draining\n' : 'ready\n');
    } else {
      res
        .writeHead(404, { 'Content-Type': 'application/json' })
        .end(JSON.stringify({ code: 'TUN_ERR_PROTOCOL', message: 'not found' }));
    }
  }
}
