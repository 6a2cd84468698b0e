#!/usr/bin/env node
/**
 * The upstream every path ends at: a Node HTTPS server on 127.0.0.1 (a stand-in for a
 * kube-apiserver), run as its own process. With --raw it is the raw-TCP paths' upstream instead:
 * the same endpoints as plain HTTP/1.1 over TCP (node:http), so the bench client speaks one small
 * request protocol on every path and the raw figures differ from the TLS ones only by the TLS.
 * Endpoints:
 *   GET  /down?n=<bytes>  a body of n bytes (Content-Length), written with backpressure
 *   POST /up              reads the body, answers with the byte count
 *   GET  /small           a 128-byte body (small API requests)
 * Usage: node bench/lib/upstream.js --cert F --key F | --raw   (prints "listening <port>")
 */
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { cert: { type: 'string' }, key: { type: 'string' }, raw: { type: 'boolean', default: false } },
});
const CHUNK_BYTES = 256 * 1024;
const source = randomFillSync(Buffer.allocUnsafe(4 * 1024 * 1024));
const small = Buffer.alloc(128, 'x');
const HOUR_MS = 3_600_000;

const serverOptions = {
  keepAliveTimeout: HOUR_MS,
  requestTimeout: HOUR_MS,
  headersTimeout: HOUR_MS,
  noDelay: true,
};
// The same handler and options either way: only the transport (TLS or not) differs.
const server = values.raw
  ? http.createServer(serverOptions, handle)
  : https.createServer(
      { ...serverOptions, cert: fs.readFileSync(values.cert), key: fs.readFileSync(values.key) },
      handle,
    );
server.keepAliveTimeout = HOUR_MS;
server.maxHeadersCount = 100;
server.on('clientError', (_err, socket) => socket.destroy());

function handle(req, res) {
  const url = req.url ?? '/';
  if (url === '/small') {
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': small.length });
    res.end(small);
  } else if (url.startsWith('/down?n=')) {
    download(res, Number(url.slice('/down?n='.length)));
  } else if (url === '/up') {
    let n = 0;
    req.on('data', (chunk) => (n += chunk.length));
    req.on('end', () => {
      const body = String(n);
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
      res.end(body);
    });
  } else {
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
  }
}

function download(res, total) {
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': total });
  let left = total;
  let offset = 0;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, CHUNK_BYTES, source.length - offset);
      left -= n;
      const ok = res.write(source.subarray(offset, offset + n));
      offset = (offset + n) % source.length;
      if (!ok) return;
    }
    res.end();
    res.off('drain', pump);
  };
  res.on('drain', pump);
  res.on('close', () => res.off('drain', pump));
  pump();
}

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
