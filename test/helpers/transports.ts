/**
 * Connected byte-Duplex pairs over every transport the protocol runs on, so one test body can
 * run over each (`describe.each(transports)`). Everything listens on 127.0.0.1 port 0.
 */
import { once } from 'node:events';
import https from 'node:https';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { generate } from 'selfsigned';
import { WebSocket, WebSocketServer } from 'ws';
import type { ClientOptions } from 'ws';
import { createWebSocketDuplex } from '../../packages/protocol/src/ws-duplex.js';

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

export interface WebSocketEndpoint {
  url: string;
  /** Options that let a ws client verify the server. */
  clientOptions: ClientOptions;
  /** The server end of the next connection, once OPEN. */
  nextConnection(): Promise<WebSocket>;
  /** Terminates every server-side socket and closes the servers. */
  close(): Promise<void>;
}

/** A ws WebSocketServer over https on 127.0.0.1 port 0. */
export async function webSocketEndpoint(): Promise<WebSocketEndpoint> {
  const { key, cert } = await tlsCredentials();
  const httpsServer = https.createServer({ key, cert });
  const wss = new WebSocketServer({ server: httpsServer });
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

/** Raw, OPEN ws WebSockets over wss, for tests that need to see the messages themselves. */
export async function webSocketPair(): Promise<{
  client: WebSocket;
  server: WebSocket;
  close(): Promise<void>;
}> {
  const endpoint = await webSocketEndpoint();
  const accepted = endpoint.nextConnection();
  const client = new WebSocket(endpoint.url, endpoint.clientOptions);
  const [server] = await Promise.all([accepted, once(client, 'open')]);
  return {
    client,
    server,
    async close() {
      client.terminate();
      await endpoint.close();
    },
  };
}

async function websocketPair(): Promise<TransportPair> {
  const endpoint = await webSocketEndpoint();
  const accepted = endpoint.nextConnection();
  // Wrapped while still CONNECTING: the duplex must hold writes until the handshake completes.
  const a = createWebSocketDuplex(new WebSocket(endpoint.url, endpoint.clientOptions));
  const b = createWebSocketDuplex(await accepted);
  return {
    a,
    b,
    async close() {
      a.destroy();
      b.destroy();
      await endpoint.close();
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
