/**
 * Connected byte-Duplex pairs over every transport the protocol runs on, so one test body can
 * run over each (`describe.each(transports)`). Everything listens on 127.0.0.1 port 0.
 */
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { generate } from 'selfsigned';
import { WebSocket, WebSocketServer } from 'ws';
import type { ClientOptions } from 'ws';
import { dial } from '../../packages/client/src/server-dialer.js';
import type { TunnelError } from '../../packages/protocol/src/errors.js';
import { createWebSocketDuplex } from '../../packages/protocol/src/websocket/duplex.js';
import { checkUpgradeRequest, upgradeResponseHead } from '../../packages/protocol/src/websocket/handshake.js';
import { createTempDir } from './temp-dir.js';

export interface TransportPair {
  a: Duplex;
  b: Duplex;
  /** Destroys both ends and closes any server. */
  close(): Promise<void>;
}

export interface Transport {
  name: 'pipe' | 'tcp' | 'tls' | 'websocket';
  pair(): Promise<TransportPair>;
}

type Callback = (err?: Error | null) => void;

/** One end of an in-memory pipe with real backpressure and half-close. */
class PipeEnd extends Duplex {
  peer: PipeEnd | null = null;
  /** Our write's callback, held while the peer's readable buffer is over its highWaterMark. */
  private blockedWrite: Callback | null = null;
  private eofPushed = false;

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: Callback): void {
    const peer = this.peer;
    if (!peer || peer.destroyed || peer.eofPushed)
      return cb(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    // Re-check the length too: a consumer reading synchronously inside push() has already made room.
    if (peer.push(chunk) || peer.readableLength < peer.readableHighWaterMark) cb();
    else this.blockedWrite = cb;
  }

  override _read(): void {
    // Our consumer made room: the peer's held write may complete.
    const cb = this.peer?.blockedWrite;
    if (this.peer && cb) {
      this.peer.blockedWrite = null;
      cb();
    }
  }

  override _final(cb: Callback): void {
    this.peer?.pushEof();
    cb();
  }

  override _destroy(err: Error | null, cb: Callback): void {
    // Like a TCP close: the peer reads EOF and a write it is blocked on fails.
    const peer = this.peer;
    if (peer && !peer.destroyed) {
      peer.pushEof();
      const blocked = peer.blockedWrite;
      peer.blockedWrite = null;
      blocked?.(Object.assign(new Error('write ECONNRESET'), { code: 'ECONNRESET' }));
    }
    this.blockedWrite = null;
    cb(err);
  }

  private pushEof(): void {
    if (this.eofPushed) return;
    this.eofPushed = true;
    this.push(null);
  }
}

/** Two in-memory Duplexes wired back to back: what one writes, the other reads. */
export function pipePair(): { a: Duplex; b: Duplex } {
  const a = new PipeEnd();
  const b = new PipeEnd();
  a.peer = b;
  b.peer = a;
  return { a, b };
}

let credentials: Promise<{ key: string; cert: string }> | undefined;

/** A self-signed certificate for localhost and 127.0.0.1, made once per process; it is its own CA. */
export function tlsCredentials(): Promise<{ key: string; cert: string }> {
  credentials ??= generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: true },
      { name: 'keyUsage', digitalSignature: true, keyCertSign: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
        ],
      },
    ],
  }).then((r) => ({ key: r.private, cert: r.cert }));
  return credentials;
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

async function listen(server: net.Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

async function tcpPair(): Promise<TransportPair> {
  const server = net.createServer({ allowHalfOpen: true });
  const port = await listen(server);
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const a = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  const [[b]] = await Promise.all([accepted, once(a, 'connect')]);
  return {
    a,
    b,
    async close() {
      a.destroy();
      b.destroy();
      await closeServer(server);
    },
  };
}

async function tlsPair(): Promise<TransportPair> {
  const { key, cert } = await tlsCredentials();
  const server = tls.createServer({ key, cert, allowHalfOpen: true });
  const port = await listen(server);
  const accepted = once(server, 'secureConnection') as Promise<[tls.TLSSocket]>;
  // tls.connect honours allowHalfOpen (it passes it to the TLSSocket); @types/node omits it.
  const options: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
    host: '127.0.0.1',
    port,
    ca: cert,
    servername: 'localhost',
    allowHalfOpen: true,
  };
  const a = tls.connect(options);
  const [[b]] = await Promise.all([accepted, once(a, 'secureConnect')]);
  return {
    a,
    b,
    async close() {
      a.destroy();
      b.destroy();
      await closeServer(server);
    },
  };
}

let caFile: string | undefined;

/** tlsCredentials()'s certificate in a file (the dialer reads its CA from one), made once per process. */
export async function tlsCaFile(): Promise<string> {
  if (caFile === undefined) {
    const { cert } = await tlsCredentials();
    const dir = createTempDir('transports-ca-');
    const file = join(dir.path, 'ca.pem');
    writeFileSync(file, cert);
    process.once('exit', () => dir.remove());
    caFile = file;
  }
  return caFile;
}

/** An upgraded socket, not read yet, and the bytes that came with the handshake. */
export interface UpgradedSocket {
  socket: Duplex;
  head: Buffer;
}

export interface WebSocketEndpoint {
  url: string;
  /** Options that let a ws client verify the server. */
  clientOptions: ClientOptions;
  /** The server end of the next connection, once OPEN. */
  nextConnection(): Promise<WebSocket>;
  /** Terminates every server-side socket and closes the servers. */
  close(): Promise<void>;
}

/** A `ws` WebSocketServer over https on 127.0.0.1 port 0: the independent peer for our client. */
export async function webSocketEndpoint(): Promise<WebSocketEndpoint> {
  const { key, cert } = await tlsCredentials();
  const httpsServer = https.createServer({ key, cert });
  const wss = new WebSocketServer({ server: httpsServer, perMessageDeflate: false });
  const port = await listen(httpsServer);
  return {
    url: `wss://127.0.0.1:${port}/`,
    // The certificate names 127.0.0.1, so the URL's host verifies without a server name.
    clientOptions: { ca: cert, perMessageDeflate: false },
    nextConnection: async () => ((await once(wss, 'connection')) as [WebSocket])[0],
    async close() {
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      await closeServer(httpsServer);
    },
  };
}

export interface OurWebSocketServer {
  url: string;
  /** Options that let a ws client verify the server. */
  clientOptions: ClientOptions;
  /** The next upgrade this server accepted (101 sent), with its request. */
  nextUpgrade(): Promise<UpgradedSocket & { req: IncomingMessage }>;
  /** Destroys every socket and closes the server. */
  close(): Promise<void>;
}

/**
 * An https server on 127.0.0.1 port 0 answering upgrades with our handshake (websocket/handshake.ts),
 * as the agent endpoint does: a request that fails the RFC 6455 checks gets its status (400, 405,
 * 426 with Sec-WebSocket-Version: 13) and a JSON body; an accepted one gets the 101 and is handed
 * to nextUpgrade() for wrapping.
 */
export async function ourWebSocketServer(): Promise<OurWebSocketServer> {
  const { key, cert } = await tlsCredentials();
  const server = https.createServer({ key, cert });
  const sockets = new Set<Duplex>();
  const upgrades: Array<UpgradedSocket & { req: IncomingMessage }> = [];
  const waiters: Array<(u: UpgradedSocket & { req: IncomingMessage }) => void> = [];
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let wsKey: string;
    try {
      wsKey = checkUpgradeRequest(req);
    } catch (err) {
      const e = err as TunnelError;
      const status = e.details?.status as number;
      const body = JSON.stringify({ code: e.code, message: e.message });
      const version = status === 426 ? 'Sec-WebSocket-Version: 13\r\n' : '';
      socket.end(
        `HTTP/1.1 ${status} Refused\r\n${version}Content-Type: application/json\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
      return;
    }
    socket.write(upgradeResponseHead(wsKey));
    const upgrade = { socket, head, req };
    const waiter = waiters.shift();
    if (waiter) waiter(upgrade);
    else upgrades.push(upgrade);
  });
  const port = await listen(server);
  return {
    url: `wss://127.0.0.1:${port}/`,
    clientOptions: { ca: cert, perMessageDeflate: false },
    nextUpgrade: () => {
      const ready = upgrades.shift();
      if (ready) return Promise.resolve(ready);
      return new Promise((resolve) => waiters.push(resolve));
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await closeServer(server);
    },
  };
}

/** Our client's handshake (the agent's dialer) to a WebSocket server at `url` trusting tlsCredentials(). */
export async function dialWebSocket(url: string): Promise<UpgradedSocket> {
  const { socket, head } = await dial({
    server: url,
    token: 'test',
    caFile: await tlsCaFile(),
    noProxy: [],
    timeoutMs: 10_000,
  });
  return { socket, head };
}

/**
 * Our end of a WebSocket over TLS with a plain `ws` peer on the other: ourRole 'client' dials a
 * ws WebSocketServer with the agent's dialer; ourRole 'server' accepts a ws client with our
 * handshake. `ours` is still unwrapped (tests choose the duplex options); `theirs` is OPEN.
 */
export async function wsPeerPair(ourRole: 'client' | 'server'): Promise<{
  ours: UpgradedSocket;
  theirs: WebSocket;
  close(): Promise<void>;
}> {
  if (ourRole === 'client') {
    const endpoint = await webSocketEndpoint();
    const accepted = endpoint.nextConnection();
    const ours = await dialWebSocket(endpoint.url);
    const theirs = await accepted;
    return {
      ours,
      theirs,
      async close() {
        ours.socket.destroy();
        await endpoint.close();
      },
    };
  }
  const server = await ourWebSocketServer();
  const upgraded = server.nextUpgrade();
  const theirs = new WebSocket(server.url, server.clientOptions);
  theirs.on('error', () => undefined);
  const [{ socket, head }] = await Promise.all([upgraded, once(theirs, 'open')]);
  return {
    ours: { socket, head },
    theirs,
    async close() {
      theirs.terminate();
      await server.close();
    },
  };
}

/** Our duplex on both ends: the agent's dialer to our handshake, over a real upgraded TLS socket. */
async function websocketPair(): Promise<TransportPair> {
  const server = await ourWebSocketServer();
  const upgraded = server.nextUpgrade();
  const client = await dialWebSocket(server.url);
  const accepted = await upgraded;
  const a = createWebSocketDuplex(client.socket, { role: 'client', head: client.head });
  const b = createWebSocketDuplex(accepted.socket, { role: 'server', head: accepted.head });
  return {
    a,
    b,
    async close() {
      a.destroy();
      b.destroy();
      await server.close();
    },
  };
}

export const transports: Transport[] = [
  {
    name: 'pipe',
    pair: () => {
      const { a, b } = pipePair();
      return Promise.resolve({
        a,
        b,
        close: () => {
          a.destroy();
          b.destroy();
          return Promise.resolve();
        },
      });
    },
  },
  { name: 'tcp', pair: tcpPair },
  { name: 'tls', pair: tlsPair },
  { name: 'websocket', pair: websocketPair },
];
