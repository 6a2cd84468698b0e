import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { WebSocket } from 'ws';
import { isTunnelError } from '../../packages/protocol/src/errors.js';
import { createWebSocketDuplex } from '../../packages/protocol/src/ws-duplex.js';
import { seededRandom } from '../helpers/random.js';
import { delay, pipePairForTest, readAtLeast, readToEndWithForAwait } from '../helpers/streams.js';
import { transports, webSocketEndpoint, webSocketPair } from '../helpers/transports.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function rawPair(): Promise<{ client: WebSocket; server: WebSocket }> {
  const pair = await webSocketPair();
  onTestFinished(() => pair.close());
  return pair;
}

/** Wraps `ws`; destroyed when the test ends (before its sockets close, hooks run in reverse order). */
function wrap(ws: WebSocket, opts?: { highWaterMarkBytes?: number }): Duplex {
  const duplex = createWebSocketDuplex(ws, opts);
  // Tests await the errors they expect with once(); the far end's consequent error is not the subject.
  duplex.on('error', ignore);
  onTestFinished(() => {
    duplex.destroy();
  });
  return duplex;
}

function ignore(): void {}

async function duplexPair(opts?: { highWaterMarkBytes?: number }) {
  const { client, server } = await rawPair();
  return { client, server, a: wrap(client, opts), b: wrap(server, opts) };
}

describe('createWebSocketDuplex over wss', () => {
  it('carries bytes both ways', async () => {
    const { a, b } = await duplexPair();
    const toB = readAtLeast(b, 5);
    a.write('hello');
    expect((await toB).toString()).toBe('hello');
    const toA = readAtLeast(a, 5);
    b.write(Buffer.from('world'));
    expect((await toA).toString()).toBe('world');
  });

  it('holds writes made while the WebSocket is still connecting and sends them once it opens', async () => {
    const endpoint = await webSocketEndpoint();
    onTestFinished(() => endpoint.close());
    const accepted = endpoint.nextConnection();
    const client = new WebSocket(endpoint.url, endpoint.clientOptions);
    const a = wrap(client);
    expect(client.readyState).toBe(WebSocket.CONNECTING);
    a.write('early ');
    a.write('bytes');
    const b = wrap(await accepted);
    expect((await readAtLeast(b, 11)).toString()).toBe('early bytes');
  });

  it('pipes 64 MiB intact (sha256) with the sender bufferedAmount bounded', async () => {
    const { client, a, b } = await duplexPair();
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
      maxBufferedBytes = Math.max(maxBufferedBytes, client.bufferedAmount);
      if (!more) await once(a, 'drain');
    }
    a.end();
    await ended;
    const seconds = (performance.now() - started) / 1000;
    console.log(`ws-duplex: 64 MiB over wss in ${seconds.toFixed(2)} s = ${(64 / seconds).toFixed(0)} MiB/s`);

    expect(receivedBytes).toBe(64 * MiB);
    expect(received.digest('hex')).toBe(sent.digest('hex'));
    // The default mark (1 MiB) plus at most one write batch above it (a chunk and the few bytes
    // Writable buffers behind it before write() returns false).
    expect(maxBufferedBytes).toBeLessThanOrEqual(1 * MiB + 512 * KiB);
  });

  it('makes the writer wait behind a slow reader, then delivers everything when it reads', async () => {
    const highWaterMarkBytes = 256 * KiB;
    const { client, server, a, b } = await duplexPair({ highWaterMarkBytes });
    const chunk = randomBytes(64 * KiB);
    let attemptedBytes = 0;
    let ackedBytes = 0;
    let maxBufferedBytes = 0;
    let stalled = false;
    // Nobody reads b. Write until a drain does not come; bounded at 128 MiB.
    for (let i = 0; i < 2048 && !stalled; i++) {
      attemptedBytes += chunk.length;
      const more = a.write(chunk, () => {
        ackedBytes += chunk.length;
      });
      maxBufferedBytes = Math.max(maxBufferedBytes, client.bufferedAmount);
      if (!more) {
        stalled = await Promise.race([once(a, 'drain').then(() => false), delay(300).then(() => true)]);
      }
    }
    expect(stalled).toBe(true);
    expect(ackedBytes).toBeLessThan(attemptedBytes); // a write's callback is pending
    expect(ackedBytes).toBeLessThan(32 * MiB); // socket buffers, not the whole stream
    expect(maxBufferedBytes).toBeLessThanOrEqual(highWaterMarkBytes + chunk.length);
    expect(client.bufferedAmount).toBeGreaterThan(0); // the held write is still in ws/socket buffers
    // The reader side stopped reading its socket (the duplex took the socket over from ws).
    expect((server as unknown as { _socket: Duplex })._socket.isPaused()).toBe(true);

    const all = readAtLeast(b, attemptedBytes);
    expect((await all).length).toBe(attemptedBytes);
    for (let i = 0; i < 100 && ackedBytes < attemptedBytes; i++) await delay(10);
    expect(ackedBytes).toBe(attemptedBytes);
  });

  it('reads the concatenation of peer messages however they are sized or fragmented', async () => {
    const { client, server } = await rawPair();
    const a = wrap(client);
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
        server.send(piece.subarray(0, half), { binary: true, fin: false });
        server.send(piece.subarray(half), { binary: true, fin: true });
      } else {
        server.send(piece, { binary: true });
      }
      offset += piece.length;
    }
    expect(offset).toBe(payload.length);
    server.close(1000);
    expect((await readToEndWithForAwait(a)).equals(payload)).toBe(true);
  });

  it('end() sends everything, then the peer sees end', async () => {
    const { a, b } = await duplexPair();
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

  it('destroys with TUN_ERR_PROTOCOL on a text message', async () => {
    const { server, a } = await duplexPair();
    const peerClosed = once(server, 'close');
    server.send('not binary');
    const [err] = (await once(a, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_PROTOCOL')).toBe(true);
    await peerClosed; // the duplex terminated its WebSocket
  });

  it('destroys with TUN_ERR_TRANSPORT_CLOSED when the peer terminates', async () => {
    const { server, a } = await duplexPair();
    a.resume();
    server.terminate();
    const [err] = (await once(a, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_TRANSPORT_CLOSED')).toBe(true);
    expect((err as { retryable?: boolean }).retryable).toBe(true);
  });

  it('destroys with TUN_ERR_TRANSPORT_CLOSED, cause attached, when the connection fails', async () => {
    const probe = net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const { port } = probe.address() as AddressInfo;
    await new Promise((resolve) => probe.close(resolve));
    const a = wrap(new WebSocket(`ws://127.0.0.1:${port}/`));
    a.write('never sent');
    const [err] = (await once(a, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_TRANSPORT_CLOSED')).toBe(true);
    expect((err.cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  });

  it('destroy() terminates the WebSocket, also while it is still connecting', async () => {
    const { server, a } = await duplexPair();
    const peerClosed = once(server, 'close') as Promise<[number]>;
    a.destroy();
    expect((await peerClosed)[0]).toBe(1006);

    const endpoint = await webSocketEndpoint();
    onTestFinished(() => endpoint.close());
    const connecting = wrap(new WebSocket(endpoint.url, endpoint.clientOptions));
    connecting.destroy();
    await once(connecting, 'close');
    await delay(50); // the aborted handshake's late 'error' must not surface as unhandled
  });

  it('interoperates with a plain ws peer in both roles: data, pings and the close handshake', async () => {
    for (const ourSide of ['client', 'server'] as const) {
      const { client, server } = await rawPair();
      const [ours, theirs] = ourSide === 'client' ? [client, server] : [server, client];
      const a = wrap(ours);
      const toThem = randomBytes(3 * MiB + 7);
      const received: Buffer[] = [];
      theirs.on('message', (data: Buffer) => received.push(data));
      const theirsClosed = once(theirs, 'close') as Promise<[number]>;
      // Their ping is answered with the same payload (RFC 6455 §5.5.3).
      const pong = once(theirs, 'pong') as Promise<[Buffer]>;
      theirs.ping(Buffer.from('are you there'));
      expect((await pong)[0].toString()).toBe('are you there');
      a.write(toThem.subarray(0, 100));
      a.write(toThem.subarray(100));
      const toUs = randomBytes(MiB);
      theirs.send(toUs.subarray(0, 5));
      theirs.send(toUs.subarray(5));
      expect((await readAtLeast(a, toUs.length)).equals(toUs)).toBe(true);
      for (let i = 0; i < 200 && Buffer.concat(received).length < toThem.length; i++) await delay(10);
      expect(Buffer.concat(received).equals(toThem), ourSide).toBe(true);
      // Their close(1000) ends our readable cleanly; they see 1000 echoed.
      const ended = once(a, 'end');
      a.resume();
      theirs.close(1000);
      await ended;
      expect((await theirsClosed)[0]).toBe(1000);
    }
  });

  it('our end() closes with 1000 and the plain ws peer sees it; the ws object reaches CLOSED', async () => {
    const { client, server } = await rawPair();
    const a = wrap(client);
    const theirsClosed = once(server, 'close') as Promise<[number]>;
    const oursClosed = once(client, 'close') as Promise<[number]>;
    const finished = once(a, 'finish');
    a.end('bye');
    expect((await theirsClosed)[0]).toBe(1000);
    await finished;
    expect((await oursClosed)[0]).toBe(1000);
    expect(client.readyState).toBe(WebSocket.CLOSED);
  });

  it('closes with 1002 and TUN_ERR_PROTOCOL on a malformed frame', async () => {
    const { client, server } = await rawPair();
    const a = wrap(client);
    const theirsClosed = once(server, 'close') as Promise<[number]>;
    // A server frame with RSV1 set: no extension was negotiated.
    (server as unknown as { _socket: Duplex })._socket.write(Buffer.from([0xc2, 0x01, 0x00]));
    const [err] = (await once(a, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_PROTOCOL')).toBe(true);
    expect((await theirsClosed)[0]).toBe(1002);
  });

  it('reports a close code other than 1000/1005 as TUN_ERR_TRANSPORT_CLOSED with the code', async () => {
    const { server, a } = await duplexPair();
    server.close(4000, 'going');
    const [err] = (await once(a, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_TRANSPORT_CLOSED')).toBe(true);
    expect((err as { details?: unknown }).details).toEqual({ code: 4000, reason: 'going' });
  });

  it('keeps bytes the peer sent with its 101 when the ws was paused on open and wrapped later', async () => {
    const endpoint = await webSocketEndpoint();
    onTestFinished(() => endpoint.close());
    const accepted = endpoint.nextConnection();
    const client = new WebSocket(endpoint.url, endpoint.clientOptions);
    // What the agent's dialer does: pause in 'open', wrap after its promise resolves.
    client.once('open', () => client.pause());
    const server = await accepted;
    server.send(Buffer.from('first bytes')); // likely in the same TLS read as the 101
    await once(client, 'open');
    await delay(20);
    const a = wrap(client);
    expect((await readAtLeast(a, 11)).toString()).toBe('first bytes');
  });

  it('refuses a ws that has parsed frames already (its socket cannot be taken over safely)', async () => {
    const { client } = await rawPair();
    // As if ws were in the middle of a frame: GET_PAYLOAD_LENGTH_16 in its receiver.
    (client as unknown as { _receiver: { _state: number } })._receiver._state = 1;
    const a = wrap(client);
    const [err] = (await once(a, 'error')) as [Error];
    expect(isTunnelError(err, 'TUN_ERR_PROTOCOL')).toBe(true);
    expect(err.message).toContain('cannot take the socket over from ws');
  });

  it('ws runs with the native bufferutil addon', () => {
    const require = createRequire(import.meta.url);
    expect(process.env.WS_NO_BUFFER_UTIL).toBeUndefined();
    const bufferUtil = require('bufferutil') as { mask: unknown };
    const fallback = require(path.join(path.dirname(require.resolve('bufferutil')), 'fallback.js')) as {
      mask: unknown;
    };
    expect(typeof bufferUtil.mask).toBe('function');
    expect(bufferUtil.mask).not.toBe(fallback.mask); // the prebuilt addon, not the JS fallback
    // ws's own masking delegates to bufferutil (its lib/ is outside the package exports map).
    const wsBufferUtil = require(path.join(path.dirname(require.resolve('ws')), 'lib', 'buffer-util.js')) as {
      mask: { toString(): string };
    };
    expect(wsBufferUtil.mask.toString()).toContain('bufferUtil.mask');
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
    await delay(10);
    expect(acked).toBeLessThan(attempted);
    expect((await readAtLeast(b, attempted * chunk.length)).length).toBe(attempted * chunk.length);
    for (let i = 0; i < 10 && acked < attempted; i++) await delay(1);
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

  it.skipIf(transport.name === 'websocket')('keeps the other direction open after end()', async () => {
    const { a, b, close } = await transport.pair();
    onTestFinished(close);
    b.once('end', () => b.end('late reply'));
    b.resume();
    a.end();
    expect((await readToEndWithForAwait(a)).toString()).toBe('late reply');
  });
});
