/**
 * The fixture dashboard behind the http-route tests: plain HTTP on 127.0.0.1 (HTTPS when given a
 * key and certificate), stopped when the test finishes. Endpoints:
 *   GET /          `page` (default `<h1>dashboard home</h1>`)
 *   GET /headers   the request's headers as JSON (what the tunnel forwarded)
 *   GET /sse       three events `data: event N`, 200 ms apart, then the end
 *   GET /sse-slow  headers at once, then four events `data: N`, 300 ms apart, then the end
 *   GET /sse-quiet headers and `data: first` at once, then DASHBOARD_QUIET_MS of silence, `data: last`, the end
 *   GET /conn      which of its connections served the request (the peer's port)
 *   GET /slow      never answers
 *   GET /big       DASHBOARD_BIG (8 MiB of random bytes, with Content-Length)
 *   WebSocket      any path, subprotocol `binary`: every message echoed as it came
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { onTestFinished } from 'vitest';
import { WebSocketServer } from 'ws';

export const DASHBOARD_BIG = randomBytes(8 * 1024 * 1024);
/** The silence inside /sse-quiet. */
export const DASHBOARD_QUIET_MS = 1500;

/** Writes `count` server-sent events `intervalMs` apart, then ends the response. */
function events(
  res: http.ServerResponse,
  count: number,
  intervalMs: number,
  data: (n: number) => string,
): void {
  let n = 0;
  const timer = setInterval(() => {
    res.write(`data: ${data(n)}\n\n`);
    if (++n === count) {
      clearInterval(timer);
      res.end();
    }
  }, intervalMs);
  res.on('close', () => clearInterval(timer));
}

/** Starts the dashboard; resolves with its port. */
export async function startDashboard(
  page = '<h1>dashboard home</h1>',
  tls?: { key: string; cert: string },
): Promise<number> {
  const handler: http.RequestListener = (req, res) => {
    if (req.url === '/headers') {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(req.headers));
    } else if (req.url === '/sse') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      events(res, 3, 200, (n) => `event ${n}`);
    } else if (req.url === '/sse-slow') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.flushHeaders();
      events(res, 4, 300, (n) => String(n));
    } else if (req.url === '/sse-quiet') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write('data: first\n\n');
      const timer = setTimeout(() => res.end('data: last\n\n'), DASHBOARD_QUIET_MS);
      res.on('close', () => clearTimeout(timer));
    } else if (req.url === '/conn') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end(String(req.socket.remotePort));
    } else if (req.url === '/slow') {
      // Never answers: the server's response timeout must end the wait.
      req.on('close', () => res.destroy());
    } else if (req.url === '/big') {
      res
        .writeHead(200, {
          'Content-Type': 'application/octet-stream',
          'Content-Length': DASHBOARD_BIG.length,
        })
        .end(DASHBOARD_BIG);
    } else {
      res.writeHead(200, { 'Content-Type': 'text/html' }).end(page);
    }
  };
  const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
  const wss = new WebSocketServer({
    server,
    handleProtocols: (protocols) => (protocols.has('binary') ? 'binary' : false),
  });
  wss.on('connection', (socket) =>
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary })),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => {
    wss.close();
    server.closeAllConnections();
    server.close();
  });
  return (server.address() as AddressInfo).port;
}
