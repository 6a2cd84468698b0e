import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { describe, expect, it, onTestFinished } from 'vitest';
import { WebSocket } from 'ws';
import { dial } from '../../packages/client/src/server-dialer.js';
import { isTunnelError, type TunnelError } from '../../packages/protocol/src/errors.js';
import {
  createWebSocketDuplex,
  type WebSocketDuplexOptions,
} from '../../packages/protocol/src/websocket/duplex.js';
import { WsOpcode } from '../../packages/protocol/src/websocket/frame-decoder.js';
import { nativeMaskLoaded } from '../../packages/protocol/src/websocket/mask.js';
import {
  checkUpgradeRequest,
  createWebSocketKey,
  upgradeRequestHeaders,
  upgradeResponseHead,
  webSocketAccept,
} from '../../packages/protocol/src/websocket/handshake.js';
import { seededRandom } from '../helpers/random.js';
import { pipePairForTest, pollUntil, readAtLeast, readToEndWithForAwait } from '../helpers/streams.js';
import {
  dialWebSocket,
  ourWebSocketServer,
  tlsCaFile,
  tlsCredentials,
  transports,
  wsPeerPair,
  type UpgradedSocket,
} from '../helpers/transports.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const ROLES = ['client', 'server'] as const;

/** Wraps an upgraded socket; destroyed when the test ends (before its sockets close, hooks run in reverse order). */
function wrap(
  upgraded: UpgradedSocket,
  role: 'client' | 'server',
  opts: Omit<WebSocketDuplexOptions, 'role' | 'head'> = {},
): Duplex {
  const duplex = createWebSocketDuplex(upgraded.socket, { ...opts, role, head: upgraded.head });
  // Tests await the errors they expect with once(); the far end's consequent error is not the subject.
  duplex.on('error', ignore);
  onTestFinished(() => {
    duplex.destroy();
  });
  return duplex;
}

function ignore(): void {}

/** Our duplex on a real upgraded TLS socket with a plain ws peer; `ourRole` is our end's role. */
async function withWsPeer(ourRole: 'client' | 'server', opts?: { highWaterMarkBytes?: number }) {
  const pair = await wsPeerPair(ourRole);
  onTestFinished(() => pair.close());
  return { ours: wrap(pair.ours, ourRole, opts), oursSocket: pair.ours.socket, theirs: pair.theirs };
}

/** Our duplex on both ends (the agent's dialer ↔ our server handshake). */
async function ourPair(opts?: { highWaterMarkBytes?: number }) {
  const server = await ourWebSocketServer();
  onTestFinished(() => server.close());
  const upgraded = server.nextUpgrade();
  const client = await dialWebSocket(server.url);
  const accepted = await upgraded;
  return {
    clientSocket: client.socket,
    serverSocket: accepted.socket,
    a: wrap(client, 'client', opts),
    b: wrap(accepted, 'server', opts),
  };
}

/** An https server on 127.0.0.1 whose upgrades `onUpgrade` answers byte by byte. */
async function rawUpgradeServer(
  onUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
): Promise<string> {
  const { key, cert } = await tlsCredentials();
  const server = https.createServer({ key, cert });
  const sockets = new Set<Duplex>();
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    sockets.add(socket);
    socket.on('error', ignore);
    onUpgrade(req, socket, head);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return `wss://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

/** A TLS connection to `url` that sends `request` (and whatever follows it) as raw bytes. */
async function rawClient(
  url: string,
  bytes: Buffer | string,
): Promise<{ socket: tls.TLSSocket; received: () => Buffer }> {
  const { cert } = await tlsCredentials();
  const socket = tls.connect({ host: '127.0.0.1', port: Number(new URL(url).port), ca: cert });
  onTestFinished(() => {
    socket.destroy();
  });
  socket.on('error', ignore);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  await once(socket, 'secureConnect');
  socket.write(bytes);
  return { socket, received: () => Buffer.concat(chunks) };
}

/** A raw upgrade request for `key`, with the headers our dialer sends (websocket/handshake.ts). */
function upgradeRequest(key: string): string {
  const lines = Object.entries(upgradeRequestHeaders(key)).map(([k, v]) => `${k}: ${v}\r\n`);
  return `GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n${lines.join('')}\r\n`;
}

/** A FIN frame of `payload` (at most 125 bytes), masked with a random key when `masked`. */
function peerFrame(opcode: number, payload: Buffer, masked: boolean): Buffer {
  if (!masked) return Buffer.concat([Buffer.from([0x80 | opcode, payload.length]), payload]);
  const key = randomBytes(4);
  const body = Buffer.from(payload.map((b, i) => b ^ key[i % 4]!));
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length]), key, body]);
}

/** A masked binary frame (client → server) of `payload`, at most 125 bytes. */
function maskedFrame(payload: Buffer): Buffer {
  return peerFrame(WsOpcode.Binary, payload, true);
}

interface WireFrame {
  opcode: number;
  payload: Buffer;
}

/** The whole frames in `bytes` (a partial frame at the end is left out), unmasked. */
function wireFrames(bytes: Buffer): WireFrame[] {
  const frames: WireFrame[] = [];
  let p = 0;
  while (p + 2 <= bytes.length) {
    const masked = (bytes[p + 1]! & 0x80) !== 0;
    let length = bytes[p + 1]! & 0x7f;
    let at = p + 2;
    if (length === 126) {
      if (at + 2 > bytes.length) break;
      length = bytes.readUInt16BE(at);
      at += 2;
    } else if (length === 127) {
      if (at + 8 > bytes.length) break;
      length = Number(bytes.readBigUInt64BE(at));
      at += 8;
    }
    const key = masked ? bytes.subarray(at, at + 4) : undefined;
    if (masked) at += 4;
    if (at + length > bytes.length) break;
    const payload = Buffer.from(bytes.subarray(at, at + length));
    if (key) for (let i = 0; i < payload.length; i++) payload[i]! ^= key[i & 3]!;
    frames.push({ opcode: bytes[p]! & 0x0f, payload });
    p = at + length;
  }
  return frames;
}

/** The payloads of the close frames among `frames`. */
function closePayloads(frames: WireFrame[]): Buffer[] {
  return frames.filter((f) => f.opcode === WsOpcode.Close).map((f) => f.payload);
}

/**
 * Our duplex (`ourRole`) on an upgraded TLS socket whose peer is a raw socket: `send` writes a
 * crafted frame (masked when the peer is the client), `framesFromUs` parses what we wrote after
 * the handshake.
 */
async function withRawPeer(ourRole: 'client' | 'server'): Promise<{
  ours: Duplex;
  send(opcode: number, payload: Buffer): void;
  framesFromUs(): WireFrame[];
}> {
  if (ourRole === 'server') {
    const server = await ourWebSocketServer();
    onTestFinished(() => server.close());
    const upgraded = server.nextUpgrade();
    const raw = await rawClient(server.url, upgradeRequest(createWebSocketKey()));
    const ours = wrap(await upgraded, 'server');
    return {
      ours,
      send: (opcode, payload) => raw.socket.write(peerFrame(opcode, payload, true)),
      framesFromUs() {
        const bytes = raw.received();
        const end = bytes.indexOf('\r\n\r\n');
        return end === -1 ? [] : wireFrames(bytes.subarray(end + 4));
      },
    };
  }
  let peerSocket: Duplex | undefined;
  const fromUs: Buffer[] = [];
  const url = await rawUpgradeServer((req, socket) => {
    peerSocket = socket;
    socket.on('data', (c: Buffer) => fromUs.push(c));
    socket.write(upgradeResponseHead(req.headers['sec-websocket-key']!));
  });
  const ours = wrap(await dialWebSocket(url), 'client');
  return {
    ours,
    send: (opcode, payload) => peerSocket!.write(peerFrame(opcode, payload, false)),
    framesFromUs: () => wireFrames(Buffer.concat(fromUs)),
  };
}

/** A close frame's payload: the code, then the reason. */
function closePayload(code: number, reason: Buffer | string = ''): Buffer {
  const payload = Buffer.alloc(2);
  payload.writeUInt16BE(code);
  return Buffer.concat([payload, Buffer.from(reason)]);
}

/** How a received close ends our duplex: cleanly, or with an error of this code. */
type CloseOutcome = 'clean' | 'TUN_ERR_TRANSPORT_CLOSED' | 'TUN_ERR_PROTOCOL';

// Codes we must never put on the wire: RFC 6455 §7.4.1 reserves them for reporting locally.
const RESERVED_CLOSE_CODES = [1005, 1006, 1015];

/** A received close payload, how it ends our duplex, and the code we answer with. */
type ReceivedCloseCase = [what: string, outcome: CloseOutcome, reply: number, payload: Buffer];

const receivedCloses: ReceivedCloseCase[] = [
  ['1000', 'clean', 1000, closePayload(1000)],
  ['no code', 'clean', 1000, Buffer.alloc(0)],
  ['1000 and a UTF-8 reason', 'clean', 1000, closePayload(1000, 'done \u20ac')],
  // Defined (RFC 6455 §7.4.1), IANA-registered (1012–1014), libraries' and applications' ranges.
  ...[1001, 1002, 1003, 1007, 1008, 1011, 1012, 1013, 1014, 3000, 4000, 4999].map(
    (code): ReceivedCloseCase => [`${code}`, 'TUN_ERR_TRANSPORT_CLOSED', code, closePayload(code, 'why')],
  ),
  // Below the range, unassigned, reserved for local use only (1005, 1006, 1015), or above it.
  ...[0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535].map((code): ReceivedCloseCase => [
    `${code}`,
    'TUN_ERR_PROTOCOL',
    1002,
    closePayload(code),
  ]),
  ['a 1-byte payload', 'TUN_ERR_PROTOCOL', 1002, Buffer.from([0x03])],
  ['1000 and a reason holding 0xff', 'TUN_ERR_PROTOCOL', 1007, closePayload(1000, Buffer.from([0x6f, 0xff]))],
  [
    '4000 and a reason cut inside a character',
    'TUN_ERR_PROTOCOL',
    1007,
    closePayload(4000, Buffer.from('\u20ac').subarray(0, 2)),
  ],
  [
    '1000 and a reason holding a UTF-16 surrogate',
    'TUN_ERR_PROTOCOL',
    1007,
    closePayload(1000, Buffer.from([0xed, 0xa0, 0x80])),
  ],
  ['1000 and an overlong encoding', 'TUN_ERR_PROTOCOL', 1007, closePayload(1000, Buffer.from([0xc0, 0xaf]))],
];

/** A connected TCP or TLS socket pair on 127.0.0.1, destroyed when the test ends. */
async function socketPair(kind: 'tcp' | 'tls'): Promise<{ ours: net.Socket; peer: net.Socket }> {
  const { key, cert } = await tlsCredentials();
  const server = kind === 'tcp' ? net.createServer() : tls.createServer({ key, cert });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const accepted = once(server, kind === 'tcp' ? 'connection' : 'secureConnection') as Promise<[net.Socket]>;
  const peer =
    kind === 'tcp' ? net.connect(port, '127.0.0.1') : tls.connect({ host: '127.0.0.1', port, ca: cert });
  // Both at once: a TLS 1.3 client may be connected before the server's side is.
  const [[ours]] = await Promise.all([accepted, once(peer, kind === 'tcp' ? 'connect' : 'secureConnect')]);
  onTestFinished(async () => {
    peer.destroy();
    ours.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  peer.on('error', ignore);
  return { ours, peer };
}

describe('createWebSocketDuplex over wss', () => {
  it('carries bytes both ways', async () => {
    const { a, b } = await ourPair();
    const toB = readAtLeast(b, 5);
    a.write('hello');
    expect((await toB).toString()).toBe('hello');
    const toA = readAtLeast(a, 5);
    b.write(Buffer.from('world'));
    expect((await toA).toString()).toBe('world');
  });

  it('pipes 64 MiB intact (sha256) with the sender socket buffer bounded', async () => {
    const { clientSocket, a, b } = await ourPair();
    const random = seededRandom(64);
    const chunks: Buffer[] = [];
    let total = 0;
    for (let i = 0; i < 10_000 && total < 64 * MiB; i++) {
      const chunk = randomBytes(Math.min(64 * MiB - total, 1 + Math.floor(random() * 256 * KiB)));
      chunks.push(chunk);
      total += chunk.length;
    }
    expect(total).toBe(64 * MiB);
    const sent = createHash('sha256');
    for (const chunk of chunks) sent.update(chunk);

    const received = createHash('sha256');
    let receivedBytes = 0;
    b.on('data', (chunk: Buffer) => {
      received.update(chunk);
      receivedBytes += chunk.length;
    });
    const ended = once(b, 'end');
    const started = performance.now();
    let maxBufferedBytes = 0;
    for (const chunk of chunks) {
      const more = a.write(chunk);
      maxBufferedBytes = Math.max(maxBufferedBytes, clientSocket.writableLength);
      if (!more) await once(a, 'drain');
    }
    a.end();
    await ended;
    const seconds = (performance.now() - started) / 1000;
    console.log(`ws-duplex: 64 MiB over wss in ${seconds.toFixed(2)} s = ${(64 / seconds).toFixed(0)} MiB/s`);

    expect(receivedBytes).toBe(64 * MiB);
    expect(received.digest('hex')).toBe(sent.digest('hex'));
    // The default mark (1 MiB) plus at most one write batch above it (a chunk and the few bytes
    // Writable buffers behind it before write() returns false), plus frame headers.
    expect(maxBufferedBytes).toBeLessThanOrEqual(1 * MiB + 512 * KiB);
  });

  it('makes the writer wait behind a slow reader, then delivers everything when it reads', async () => {
    const highWaterMarkBytes = 256 * KiB;
    const { clientSocket, serverSocket, a, b } = await ourPair({ highWaterMarkBytes });
    const chunk = randomBytes(64 * KiB);
    let attemptedBytes = 0;
    let ackedBytes = 0;
    let maxBufferedBytes = 0;
    const sample = (): void => {
      maxBufferedBytes = Math.max(maxBufferedBytes, clientSocket.writableLength);
    };
    // Nobody reads b. Write as the writer allows: until write() says wait, and again on each
    // drain. Bounded at 128 MiB.
    function pump(): void {
      while (attemptedBytes < 128 * MiB) {
        attemptedBytes += chunk.length;
        const more = a.write(chunk, () => {
          ackedBytes += chunk.length;
          sample();
        });
        sample();
        if (!more) return;
      }
    }
    a.on('drain', pump);
    pump();
    // The reader stops reading its socket, the socket fills, and the writer is left waiting for
    // a drain: the state this test is about, reached without assuming how long it takes.
    await pollUntil(
      () => serverSocket.isPaused() && clientSocket.writableLength > 0 && a.writableNeedDrain,
      10_000,
      'the writer to wait behind a reader that stopped reading',
    );
    a.off('drain', pump);
    expect(ackedBytes).toBeLessThan(attemptedBytes); // a write's callback is pending
    expect(ackedBytes).toBeLessThan(32 * MiB); // socket buffers, not the whole stream
    expect(maxBufferedBytes).toBeLessThanOrEqual(highWaterMarkBytes + chunk.length + 64);
    expect(clientSocket.writableLength).toBeGreaterThan(0); // the held write is still in the socket
    // The reader side stopped reading its socket.
    expect(serverSocket.isPaused()).toBe(true);

    const all = readAtLeast(b, attemptedBytes);
    expect((await all).length).toBe(attemptedBytes);
    await pollUntil(() => ackedBytes === attemptedBytes, 5_000, 'every write acknowledged');
    expect(ackedBytes).toBe(attemptedBytes);
  });

  it.each(ROLES)(
    'reads the concatenation of ws peer messages however sized or fragmented (ours: %s)',
    async (role) => {
      const { ours, theirs } = await withWsPeer(role);
      const payload = randomBytes(4 * MiB);
      const random = seededRandom(7);
      let offset = 0;
      for (let i = 0; i < 100_000 && offset < payload.length; i++) {
        const roll = random();
        // Mostly varied sizes, with empty, 1-byte and fragmented messages mixed in.
        const size = roll < 0.05 ? 0 : roll < 0.15 ? 1 : Math.floor(random() * 128 * KiB);
        const piece = payload.subarray(offset, offset + size);
        if (roll > 0.9 && piece.length > 1) {
          const half = piece.length >> 1;
          theirs.send(piece.subarray(0, half), { binary: true, fin: false });
          theirs.send(piece.subarray(half), { binary: true, fin: true });
        } else {
          theirs.send(piece, { binary: true });
        }
        offset += piece.length;
      }
      expect(offset).toBe(payload.length);
      theirs.close(1000);
      expect((await readToEndWithForAwait(ours)).equals(payload)).toBe(true);
    },
  );

  it('end() sends everything, then the peer sees end', async () => {
    const { a, b } = await ourPair();
    const payload = randomBytes(3 * MiB);
    const finished = once(a, 'finish');
    // A WebSocket cannot stay half-open: both ends close once the close handshake completes.
    const closed = Promise.all([once(a, 'close'), once(b, 'close')]);
    a.end(payload);
    a.resume();
    expect((await readToEndWithForAwait(b)).equals(payload)).toBe(true);
    await finished;
    await closed;
  });

  it.each(ROLES)(
    'interoperates with a plain ws peer: data both ways, pings, close 1000 from them (ours: %s)',
    async (role) => {
      const { ours, theirs } = await withWsPeer(role);
      const toThem = randomBytes(3 * MiB + 7);
      const received: Buffer[] = [];
      theirs.on('message', (data: Buffer) => received.push(data));
      const theirsClosed = once(theirs, 'close') as Promise<[number]>;
      // Their ping is answered with the same payload (RFC 6455 §5.5.3).
      const pong = once(theirs, 'pong') as Promise<[Buffer]>;
      theirs.ping(Buffer.from('are you there'));
      expect((await pong)[0].toString()).toBe('are you there');
      ours.write(toThem.subarray(0, 100));
      ours.write(toThem.subarray(100));
      const toUs = randomBytes(MiB);
      theirs.send(toUs.subarray(0, 5));
      theirs.send(toUs.subarray(5));
      expect((await readAtLeast(ours, toUs.length)).equals(toUs)).toBe(true);
      await pollUntil(() => Buffer.concat(received).length >= toThem.length, 5_000, 'their messages');
      expect(Buffer.concat(received).equals(toThem)).toBe(true);
      // Their close(1000) ends our readable cleanly; they see 1000 echoed.
      const ended = once(ours, 'end');
      ours.resume();
      theirs.close(1000);
      await ended;
      expect((await theirsClosed)[0]).toBe(1000);
    },
  );

  it.each(ROLES)('our end() closes with 1000 and the plain ws peer sees it (ours: %s)', async (role) => {
    const { ours, oursSocket, theirs } = await withWsPeer(role);
    const received: Buffer[] = [];
    theirs.on('message', (data: Buffer) => received.push(data));
    const theirsClosed = once(theirs, 'close') as Promise<[number]>;
    const finished = once(ours, 'finish');
    ours.end('bye');
    expect((await theirsClosed)[0]).toBe(1000);
    expect(Buffer.concat(received).toString()).toBe('bye');
    await finished;
    await pollUntil(() => oursSocket.destroyed, 5_000, 'our socket to close');
  });

  it.each(ROLES)(
    'reports their close with another code as TUN_ERR_TRANSPORT_CLOSED with the code (ours: %s)',
    async (role) => {
      const { ours, theirs } = await withWsPeer(role);
      const theirsClosed = once(theirs, 'close') as Promise<[number]>;
      theirs.close(4000, 'going');
      const [err] = (await once(ours, 'error')) as [Error];
      expect(isTunnelError(err, 'TUN_ERR_TRANSPORT_CLOSED')).toBe(true);
      expect((err as { details?: unknown }).details).toEqual({ code: 4000, reason: 'going' });
      expect((await theirsClosed)[0]).toBe(4000); // echoed
    },
  );

  it.each(ROLES)(
    'answers their close without a code with 1000, a clean end (regression: answered with an empty close) (ours: %s)',
    async (role) => {
      const { ours, theirs } = await withWsPeer(role);
      const theirsClosed = once(theirs, 'close') as Promise<[number]>;
      const errors: Error[] = [];
      ours.on('error', (err: Error) => errors.push(err));
      const ended = once(ours, 'end');
      ours.resume();
      theirs.close(); // a close frame with no payload
      await ended;
      // ws reports 1005 when the answer carries no code.
      expect((await theirsClosed)[0]).toBe(1000);
      expect(errors).toEqual([]);
    },
  );

  describe.each(ROLES)('a close frame from a raw peer (ours: %s)', (role) => {
    it.each(receivedCloses)(
      'close with %s: our end is %s and we answer with a close frame of code %s alone',
      async (_what, outcome, reply, payload) => {
        const { ours, send, framesFromUs } = await withRawPeer(role);
        const errors: Error[] = [];
        ours.on('error', (err: Error) => errors.push(err));
        // once() would reject on the 'error' that comes first.
        const closed = new Promise((resolve) => ours.once('close', resolve));
        ours.resume();
        send(WsOpcode.Close, payload);
        await closed;
        if (outcome === 'clean') expect(errors).toEqual([]);
        else {
          expect(errors).toHaveLength(1);
          expect(isTunnelError(errors[0], outcome), String(errors[0])).toBe(true);
        }
        if (outcome === 'TUN_ERR_PROTOCOL') {
          const details = (errors[0] as { details?: { websocket?: unknown } }).details;
          expect(String(details?.websocket)).toMatch(reply === 1007 ? /UTF-8/ : /close/);
        }
        await pollUntil(() => closePayloads(framesFromUs()).length > 0, 5_000, 'our close frame');
        const ourCloses = closePayloads(framesFromUs());
        expect(ourCloses).toEqual([closePayload(reply)]);
        expect(RESERVED_CLOSE_CODES).not.toContain(ourCloses[0]!.readUInt16BE(0));
      },
    );
  });

  it.each(ROLES)(
    'closes with 1002 and TUN_ERR_PROTOCOL when the ws peer sends a text message (ours: %s)',
    async (role) => {
      const { ours, theirs } = await withWsPeer(role);
      const theirsClosed = once(theirs, 'close') as Promise<[number]>;
      theirs.send('not binary');
      const [err] = (await once(ours, 'error')) as [Error];
      expect(isTunnelError(err, 'TUN_ERR_PROTOCOL')).toBe(true);
      expect((await theirsClosed)[0]).toBe(1002);
    },
  );

  it('closes with 1002 and TUN_ERR_PROTOCOL on a malformed server frame (RSV1 set)', async () => {
    let peerSocket: Duplex | undefined;
    const fromUs: Buffer[] = [];
    const url = await rawUpgradeServer((req, socket) => {
      peerSocket = socket;
      socket.on('data', (c: Buffer) => fromUs.push(c));
      // The 101 and a frame with RSV1 set (no extension was negotiated) in one write.
      socket.write(
        Buffer.concat([
          Buffer.from(upgradeResponseHead(req.headers['sec-websocket-key']!)),
          Buffer.from([0xc2, 0x01, 0x00]),
        ]),
      );
    });
    const ours = wrap(await dialWebSocket(url), 'client');
    const [err] = (await once(ours, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_PROTOCOL')).toBe(true);
    await pollUntil(() => Buffer.concat(fromUs).length >= 8, 5_000, 'our close frame');
    const frame = Buffer.concat(fromUs);
    // A masked close frame (0x88, mask bit, length 2), the code unmasked with its key.
    expect([frame[0], frame[1]]).toEqual([0x88, 0x82]);
    const code = ((frame[6]! ^ frame[2]!) << 8) | (frame[7]! ^ frame[3]!);
    expect(code).toBe(1002);
    expect(peerSocket).toBeDefined();
  });

  it('refuses an unmasked client frame with 1002 and TUN_ERR_PROTOCOL', async () => {
    const server = await ourWebSocketServer();
    onTestFinished(() => server.close());
    const upgraded = server.nextUpgrade();
    const key = createWebSocketKey();
    const request = upgradeRequest(key);
    const raw = await rawClient(server.url, request);
    const ours = wrap(await upgraded, 'server');
    raw.socket.write(Buffer.from([0x82, 0x01, 0x00]));
    const [err] = (await once(ours, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_PROTOCOL')).toBe(true);
    await pollUntil(
      () => raw.received().includes(Buffer.from([0x88, 0x02, 0x03, 0xea])),
      5_000,
      'a close frame with 1002',
    );
  });

  it('keeps frames the server sent in the same write as its 101', async () => {
    const url = await rawUpgradeServer((req, socket) => {
      const payload = Buffer.from('first bytes');
      socket.write(
        Buffer.concat([
          Buffer.from(upgradeResponseHead(req.headers['sec-websocket-key']!)),
          Buffer.from([0x82, payload.length]),
          payload,
        ]),
      );
    });
    const upgraded = await dialWebSocket(url);
    // The dialer's caller may wrap the socket later: wrap only once the frame has arrived.
    await pollUntil(
      () => upgraded.head.length + upgraded.socket.readableLength >= 2 + 11,
      5_000,
      'the frame at the client, before the wrap',
    );
    const ours = wrap(upgraded, 'client');
    expect((await readAtLeast(ours, 11)).toString()).toBe('first bytes');
  });

  it('keeps frames the client sent in the same write as its upgrade request', async () => {
    const server = await ourWebSocketServer();
    onTestFinished(() => server.close());
    const upgraded = server.nextUpgrade();
    const key = createWebSocketKey();
    const request = upgradeRequest(key);
    const raw = await rawClient(
      server.url,
      Buffer.concat([Buffer.from(request), maskedFrame(Buffer.from('early bytes'))]),
    );
    const accepted = await upgraded;
    const ours = wrap(accepted, 'server');
    expect((await readAtLeast(ours, 11)).toString()).toBe('early bytes');
    await pollUntil(() => raw.received().includes('\r\n\r\n'), 5_000, 'the 101');
    expect(raw.received().toString()).toContain(`Sec-WebSocket-Accept: ${webSocketAccept(key)}`);
  });

  it('destroys with TUN_ERR_TRANSPORT_CLOSED when the peer terminates', async () => {
    const { ours, theirs } = await withWsPeer('client');
    ours.resume();
    theirs.terminate();
    const [err] = (await once(ours, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_TRANSPORT_CLOSED')).toBe(true);
    expect((err as { retryable?: boolean }).retryable).toBe(true);
  });

  it('destroy() drops the connection: the ws peer sees 1006', async () => {
    const { ours, theirs } = await withWsPeer('server');
    const theirsClosed = once(theirs, 'close') as Promise<[number]>;
    ours.destroy();
    expect((await theirsClosed)[0]).toBe(1006);
  });

  it.each(['tcp', 'tls'] as const)(
    'answers a ping flood from a peer that never reads with at most one pong in the socket, and the last ping is answered (regression: one queued pong per ping, unbounded) over %s',
    async (kind) => {
      const { ours: socket, peer } = await socketPair(kind);
      wrap({ socket, head: Buffer.alloc(0) }, 'server', { pingsPerSecond: Infinity }); // the rate limit has its own test
      // The peer never reads (until the end): a pong per ping would fill the loopback buffers
      // (a few MiB), then pile up in our socket's write buffer.
      peer.pause();
      // Runs after the duplex's own 'data' listener: sees the socket after each read's pongs.
      let consumedBytes = 0;
      let maxWritableBytes = 0;
      socket.on('data', function measure(chunk: Buffer) {
        consumedBytes += chunk.length;
        maxWritableBytes = Math.max(maxWritableBytes, socket.writableLength);
      });

      // 256 Ki masked pings of 125 bytes (32.75 MiB), each carrying its index in its first 4 bytes.
      const pingCount = 256 * 1024;
      const perWrite = 8 * 1024;
      const key = randomBytes(4);
      const keyWord = key.readUInt32BE(0);
      const body = Buffer.alloc(125, 0x61).map((b, i) => b ^ key[i & 3]!);
      const ping = Buffer.concat([Buffer.from([0x80 | WsOpcode.Ping, 0x80 | 125]), key, body]);
      for (let first = 0; first < pingCount; first += perWrite) {
        const chunk = Buffer.allocUnsafe(perWrite * ping.length);
        for (let i = 0; i < perWrite; i++) {
          ping.copy(chunk, i * ping.length);
          // The index, masked: its 4 bytes line up with the key (mask phase 0).
          chunk.writeUInt32BE(((first + i) ^ keyWord) >>> 0, i * ping.length + 6);
        }
        if (!peer.write(chunk)) await once(peer, 'drain');
      }
      const sentBytes = pingCount * ping.length;
      await pollUntil(() => consumedBytes >= sentBytes, 30_000, 'our side to read every ping');
      expect(consumedBytes).toBe(sentBytes);
      console.log(
        `ws-duplex: ${pingCount} pings (${(sentBytes / MiB).toFixed(1)} MiB) to a peer that never reads over ${kind}: ` +
          `our socket held at most ${maxWritableBytes} unsent bytes`,
      );
      // One pong written (127 bytes) and none queued behind it, whatever the ping count.
      expect(maxWritableBytes).toBeLessThan(64 * KiB);
      expect(socket.writableLength).toBeLessThan(64 * KiB);

      // When the peer reads again, the pong of its newest ping arrives last.
      let fromUs = Buffer.alloc(0);
      const answered: number[] = [];
      let otherFrames = 0;
      peer.on('data', (c: Buffer) => {
        fromUs = Buffer.concat([fromUs, c]);
        // Every frame from us here is a pong of 125 bytes: 127 on the wire, unmasked.
        for (; fromUs.length >= 127; fromUs = fromUs.subarray(127)) {
          if (fromUs[0] !== (0x80 | WsOpcode.Pong) || fromUs[1] !== 125) otherFrames += 1;
          answered.push(fromUs.readUInt32BE(2));
        }
      });
      peer.resume();
      await pollUntil(() => answered.at(-1) === pingCount - 1, 30_000, 'the pong of the last ping');
      expect(otherFrames).toBe(0);
      // Pings that arrived while a pong was out were answered by a later pong, not each by its own.
      expect(answered.length).toBeLessThan(pingCount);
      expect(answered.every((n, i) => i === 0 || n > answered[i - 1]!)).toBe(true);
    },
  );

  it('fails the connection with 1008 and TUN_ERR_LIMIT_EXCEEDED when the peer pings faster than pingsPerSecond', async () => {
    const { ours: socket, peer } = await socketPair('tcp');
    const ours = wrap({ socket, head: Buffer.alloc(0) }, 'server', { pingsPerSecond: 10 });
    const failed = once(ours, 'error');
    const key = randomBytes(4);
    const ping = Buffer.concat([Buffer.from([0x80 | WsOpcode.Ping, 0x80 | 4]), key, Buffer.alloc(4)]);
    const fromUs: Buffer[] = [];
    peer.on('data', (c: Buffer) => fromUs.push(c));
    // The burst is four seconds' worth: 40 pings are answered, the 41st is one too many.
    peer.write(Buffer.concat(Array.from({ length: 41 }, () => ping)));
    const [err] = (await failed) as [TunnelError];
    expect(err.code).toBe('TUN_ERR_LIMIT_EXCEEDED');
    expect(err.details).toEqual({ limit: 'webSocketPingsPerSecond' });
    await once(peer, 'close');
    // Pongs (coalesced: 6 bytes each, unmasked), then our close frame: 1008.
    let bytes = Buffer.concat(fromUs);
    while (bytes[0] === (0x80 | WsOpcode.Pong)) bytes = bytes.subarray(6);
    expect(bytes[0]).toBe(0x80 | WsOpcode.Close);
    expect(bytes.readUInt16BE(2)).toBe(1008);
  });

  it.each(['tcp', 'tls'] as const)(
    "behind data the peer has not read, answers 10000 pings with two pongs: the first ping's, then the newest's once the peer reads (regression: a pong per ping) over %s",
    async (kind) => {
      const { ours: socket, peer } = await socketPair(kind);
      const ours = wrap({ socket, head: Buffer.alloc(0) }, 'server', { pingsPerSecond: Infinity });
      peer.pause();
      // More than the loopback buffers can take (tcp_rmem max is 32 MiB): the rest stays in our
      // socket, so the first pong's write cannot complete before the peer reads.
      const dataBytes = 64 * MiB;
      ours.write(Buffer.alloc(dataBytes, 0x5a));
      let consumedBytes = 0;
      socket.on('data', function count(chunk: Buffer) {
        consumedBytes += chunk.length;
      });
      const pingCount = 10_000;
      const pings = Buffer.concat(
        Array.from({ length: pingCount }, (_, i) => {
          const payload = Buffer.alloc(4);
          payload.writeUInt32BE(i);
          return peerFrame(WsOpcode.Ping, payload, true);
        }),
      );
      peer.write(pings);
      await pollUntil(() => consumedBytes >= pings.length, 30_000, 'our side to read every ping');
      // Our data with its frame headers (64 of 10 bytes), one pong (6 bytes), nothing queued
      // behind it; a pong per ping would be 60000 bytes more.
      expect(socket.writableLength).toBeLessThanOrEqual(dataBytes + 4 * KiB);

      const fromUs: Buffer[] = [];
      // The last 6 bytes read: the wait ends when they are the pong of the last ping.
      let tail: Buffer = Buffer.alloc(0);
      peer.on('data', (c: Buffer) => {
        fromUs.push(c);
        tail = (c.length >= 6 ? c : Buffer.concat([tail, c])).subarray(-6);
      });
      peer.resume();
      const lastPong = Buffer.from([0x80 | WsOpcode.Pong, 4, 0, 0, 0, 0]);
      lastPong.writeUInt32BE(pingCount - 1, 2);
      await pollUntil(() => tail.equals(lastPong), 30_000, 'the pong of the last ping');
      const frames = wireFrames(Buffer.concat(fromUs));
      const dataFrames = frames.filter((f) => f.opcode === WsOpcode.Binary);
      expect(dataFrames.reduce((n, f) => n + f.payload.length, 0)).toBe(dataBytes);
      const pongs = frames.filter((f) => f.opcode === WsOpcode.Pong).map((f) => f.payload.readUInt32BE(0));
      expect(frames).toHaveLength(dataFrames.length + pongs.length);
      expect(pongs).toEqual([0, pingCount - 1]);
    },
  );

  it('handed a socket that is already gone, fails with TUN_ERR_TRANSPORT_CLOSED', async () => {
    const upgraded = await wsPeerPair('client');
    onTestFinished(() => upgraded.close());
    const gone = once(upgraded.ours.socket, 'close');
    upgraded.ours.socket.destroy();
    await gone;
    const ours = wrap(upgraded.ours, 'client');
    const [err] = (await once(ours, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_TRANSPORT_CLOSED')).toBe(true);
  });

  it('masks with the native bufferutil addon', () => {
    const require = createRequire(import.meta.url);
    const bufferUtil = require('bufferutil') as { mask: unknown };
    const fallback = require(path.join(path.dirname(require.resolve('bufferutil')), 'fallback.js')) as {
      mask: unknown;
    };
    expect(bufferUtil.mask).not.toBe(fallback.mask); // the prebuilt addon, not the JS fallback
    expect(nativeMaskLoaded).toBe(true);
  });
});

describe('the WebSocket opening handshake', () => {
  it('computes the RFC 6455 §1.3 example accept hash', () => {
    expect(webSocketAccept('dGhlIHNhbXBsZSBub25jZQ==')).toBe('s3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
    expect(Buffer.from(createWebSocketKey(), 'base64')).toHaveLength(16);
    expect(createWebSocketKey()).not.toBe(createWebSocketKey());
  });

  it('our server accepts a real ws client (no extension, whatever it offers)', async () => {
    const server = await ourWebSocketServer();
    onTestFinished(() => server.close());
    const upgraded = server.nextUpgrade();
    // ws offers permessage-deflate by default; we answer without it and ws must then not use it.
    const theirs = new WebSocket(server.url, { ca: server.clientOptions.ca });
    onTestFinished(() => theirs.terminate());
    await once(theirs, 'open');
    expect(theirs.extensions).toBe('');
    const { req } = await upgraded;
    expect(req.headers['sec-websocket-extensions']).toContain('permessage-deflate');
  });

  it('our server answers another version with 426 and Sec-WebSocket-Version: 13', async () => {
    const server = await ourWebSocketServer();
    onTestFinished(() => server.close());
    const theirs = new WebSocket(server.url, { ca: server.clientOptions.ca, protocolVersion: 8 });
    onTestFinished(() => theirs.terminate());
    theirs.on('error', ignore);
    const [, res] = (await once(theirs, 'unexpected-response')) as [unknown, IncomingMessage];
    expect(res.statusCode).toBe(426);
    expect(res.headers['sec-websocket-version']).toBe('13');
    res.resume();
  });

  it.each([
    ['no key', { Upgrade: 'websocket', Connection: 'Upgrade', 'Sec-WebSocket-Version': '13' }, 400],
    [
      'a key of 15 bytes',
      {
        Upgrade: 'websocket',
        Connection: 'Upgrade',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(15).toString('base64'),
      },
      400,
    ],
    [
      'no Connection: Upgrade',
      {
        Upgrade: 'websocket',
        Connection: 'keep-alive, upgrade-ish',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': createWebSocketKey(),
      },
      400,
    ],
    [
      'another version',
      {
        Upgrade: 'websocket',
        Connection: 'Upgrade',
        'Sec-WebSocket-Version': '8',
        'Sec-WebSocket-Key': createWebSocketKey(),
      },
      426,
    ],
  ])('checkUpgradeRequest refuses %s', (_what, headers, status) => {
    const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
    const req = {
      method: 'GET',
      httpVersion: '1.1',
      httpVersionMajor: 1,
      httpVersionMinor: 1,
      headers: lower,
    } as unknown as IncomingMessage;
    let caught: unknown;
    try {
      checkUpgradeRequest(req);
    } catch (err) {
      caught = err;
    }
    expect(isTunnelError(caught, 'TUN_ERR_PROTOCOL')).toBe(true);
    expect((caught as { details: { status: number } }).details.status).toBe(status);
  });

  it('checkUpgradeRequest accepts mixed case and token lists, refuses other methods with 405', () => {
    const key = createWebSocketKey();
    const headers = {
      upgrade: 'WebSocket',
      connection: 'keep-alive, Upgrade',
      'sec-websocket-version': '13',
      'sec-websocket-key': key,
    };
    const req = {
      method: 'GET',
      httpVersion: '1.1',
      httpVersionMajor: 1,
      httpVersionMinor: 1,
      headers,
    } as unknown as IncomingMessage;
    expect(checkUpgradeRequest(req)).toBe(key);
    expect(() => checkUpgradeRequest({ ...req, method: 'POST' } as IncomingMessage)).toThrow(/GET/);
  });

  it('our dialer refuses a 101 with a wrong Sec-WebSocket-Accept with TUN_ERR_PROTOCOL', async () => {
    const url = await rawUpgradeServer((_req, socket) => {
      socket.write(upgradeResponseHead(createWebSocketKey()));
    });
    const err = await dial({
      server: url,
      token: 't',
      caFile: await tlsCaFile(),
      noProxy: [],
      timeoutMs: 5_000,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'TUN_ERR_PROTOCOL', retryable: true, details: { status: 101 } });
    expect(String((err as { details: { websocket: string } }).details.websocket)).toContain(
      'Sec-WebSocket-Accept',
    );
  });

  it('our dialer refuses a 101 that names an extension it did not offer', async () => {
    const url = await rawUpgradeServer((req, socket) => {
      const head = upgradeResponseHead(req.headers['sec-websocket-key']!);
      socket.write(head.replace(/\r\n\r\n$/, '\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n'));
    });
    const err = await dial({
      server: url,
      token: 't',
      caFile: await tlsCaFile(),
      noProxy: [],
      timeoutMs: 5_000,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'TUN_ERR_PROTOCOL' });
  });

  it("our dialer's upgrade passes the server checks, carries Authorization and offers no extension", async () => {
    const seen: IncomingMessage[] = [];
    const check = await rawUpgradeServer((req, socket) => {
      seen.push(req);
      socket.write(upgradeResponseHead(checkUpgradeRequest(req)));
    });
    const { socket } = await dialWebSocket(check);
    socket.destroy();
    expect(seen[0]!.headers.authorization).toBe('Bearer test');
    expect(seen[0]!.headers['sec-websocket-extensions']).toBeUndefined();
  });

  it('our dialer fails with TUN_ERR_TRANSPORT_CLOSED, errno attached, when nothing listens', async () => {
    const probe = net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const { port } = probe.address() as AddressInfo;
    await new Promise((resolve) => probe.close(resolve));
    const err = await dial({
      server: `ws://127.0.0.1:${port}/`,
      token: 't',
      noProxy: [],
      timeoutMs: 5_000,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'TUN_ERR_TRANSPORT_CLOSED', details: { errno: 'ECONNREFUSED' } });
  });
});

describe('pipePair', () => {
  it('holds a write until the other side reads, and ends the peer on destroy', async () => {
    const { a, b } = pipePairForTest();
    const chunk = Buffer.alloc(64 * KiB);
    let acked = 0;
    let attempted = 0;
    for (let i = 0; i < 100 && a.write(chunk, () => (acked += 1)); i++) attempted += 1;
    attempted += 1;
    // Held: the writer is told to wait for 'drain' until b reads.
    expect(a.writableNeedDrain).toBe(true);
    const drained = once(a, 'drain');
    expect((await readAtLeast(b, attempted * chunk.length)).length).toBe(attempted * chunk.length);
    await drained;
    await pollUntil(() => acked === attempted, 5_000, 'every write acknowledged');
    expect(acked).toBe(attempted);
    const ended = once(b, 'end');
    b.resume();
    a.destroy();
    await ended;
  });
});

describe.each(transports)('$name transport', (transport) => {
  it('echoes 1 MiB and shows a half-close to the peer', async () => {
    const { a, b, close } = await transport.pair();
    onTestFinished(close);
    b.pipe(b); // echo; ends b's writable when b's readable ends
    const payload = randomBytes(MiB);
    const echoed = readAtLeast(a, payload.length);
    a.write(payload);
    expect((await echoed).equals(payload)).toBe(true);
    const bEnded = once(b, 'end');
    const aEnded = once(a, 'end');
    a.end();
    a.resume();
    await bEnded;
    await aEnded;
  });
});

describe.each(transports.filter((t) => t.name !== 'websocket'))('$name transport', (transport) => {
  it('keeps the other direction open after end()', async () => {
    const { a, b, close } = await transport.pair();
    onTestFinished(close);
    b.once('end', () => b.end('late reply'));
    b.resume();
    a.end();
    expect((await readToEndWithForAwait(a)).toString()).toBe('late reply');
  });
});

describe('websocket transport', () => {
  it('ends both directions on end(): a WebSocket cannot half-close (the close handshake)', async () => {
    const websocket = transports.find((t) => t.name === 'websocket')!;
    const { a, b, close } = await websocket.pair();
    onTestFinished(close);
    const bEnded = once(b, 'end');
    b.resume();
    a.end();
    await bEnded;
    // Nothing b could still send reaches a: a's readable has ended too.
    expect((await readToEndWithForAwait(a)).length).toBe(0);
    expect(b.writable).toBe(false);
  });
});
