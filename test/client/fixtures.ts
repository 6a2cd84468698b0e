/**
 * Fixtures for agent tests: parsed log capture, TCP targets on 127.0.0.1 port 0, a CONNECT
 * proxy and stream helpers. Everything registers its cleanup with onTestFinished.
 */
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Readable } from 'node:stream';
import { onTestFinished } from 'vitest';
import { createLogger } from '@cluster-tunnel/config';
import type { Logger } from '@cluster-tunnel/config';

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export const LEVEL = { debug: 20, info: 30, warn: 40, error: 50 } as const;

export function captureLogs(): { logger: Logger; lines: LogLine[]; find: (msg: string) => LogLine[] } {
  const lines: LogLine[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, cb) {
      for (const text of chunk.toString('utf8').split('\n'))
        if (text !== '') lines.push(JSON.parse(text) as LogLine);
      cb();
    },
  });
  const logger = createLogger({ level: 'debug', format: 'json', name: 'tunnel-client', destination });
  return { logger, lines, find: (msg) => lines.filter((l) => l.msg === msg) };
}

export function writeFile(dir: string, name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as AddressInfo).port;
}

/**
 * A TCP target that echoes every chunk and, after the client's EOF, writes `<eof>` and ends:
 * it proves both that a FIN reached it and that it could still write after it (half-close).
 */
export async function echoTarget(): Promise<{ port: number; connections: net.Socket[] }> {
  const connections: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    connections.push(socket);
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => socket.write(chunk));
    socket.on('end', () => socket.end('<eof>'));
  });
  onTestFinished(() => connections.forEach((s) => s.destroy()));
  return { port: await listen(server), connections };
}

/**
 * A TCP target that says `hi` and half-closes at once, then keeps reading: `received` resolves
 * with what the user sent up to the user's EOF, proving the user's direction outlived ours.
 */
export async function greeterTarget(): Promise<{ port: number; received: Array<Promise<string>> }> {
  const received: Array<Promise<string>> = [];
  const sockets: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    socket.end('hi');
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    received.push(
      new Promise((resolve) => socket.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')))),
    );
  });
  onTestFinished(() => sockets.forEach((s) => s.destroy()));
  return { port: await listen(server), received };
}

/** A port on 127.0.0.1 where nothing listens (connections are refused). */
export async function deadPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** An HTTP CONNECT proxy that demands Basic credentials and records what it was asked for. */
export async function connectProxy(user: string, password: string) {
  const requests: { target: string; authorized: boolean }[] = [];
  const sockets = new Set<net.Socket>();
  const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  const server = http.createServer((_req, res) => res.writeHead(405).end());
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    sockets.add(client);
    const authorized = req.headers['proxy-authorization'] === expected;
    requests.push({ target: req.url ?? '', authorized });
    if (!authorized) {
      client.end('HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    const [host = '', port = '0'] = (req.url ?? '').split(':');
    const upstream = net.connect({ host, port: Number(port) }, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  onTestFinished(() => sockets.forEach((s) => s.destroy()));
  const port = await listen(server);
  return { port, requests };
}

/** Everything a stream carries until its end; rejects if it closes without one. */
export function readAll(stream: Readable, timeoutMs = 5_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => reject(new Error('stream did not end in time')), timeoutMs);
    stream.on('data', (c: Buffer) => chunks.push(c));
    // readStreamReply leaves the stream explicitly paused: a 'data' listener alone does not resume it.
    stream.resume();
    stream.once('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    stream.once('close', () => {
      clearTimeout(timer);
      if (!stream.readableEnded) reject(new Error('stream closed without end'));
    });
  });
}

/** Reads until `n` bytes have arrived (without waiting for the end). */
export function readBytes(stream: Readable, n: number, timeoutMs = 5_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const timer = setTimeout(() => {
      stream.off('data', onData);
      reject(new Error(`only ${length} of ${n} bytes arrived`));
    }, timeoutMs);
    function onData(c: Buffer): void {
      chunks.push(c);
      length += c.length;
      if (length >= n) {
        clearTimeout(timer);
        stream.off('data', onData);
        stream.pause();
        resolve(Buffer.concat(chunks));
      }
    }
    stream.on('data', onData);
    stream.resume();
  });
}

/** Resolves once the stream has closed, however it ended (events.once would reject on 'error'). */
export function closed(stream: Readable): Promise<void> {
  if (stream.closed) return Promise.resolve();
  return new Promise((resolve) => stream.once('close', () => resolve()));
}

export async function httpGet(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
      .on('error', reject);
  });
}
