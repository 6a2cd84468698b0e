/**
 * Interoperability with yamux-js 0.2.0, the other JavaScript yamux, on the subset of it that
 * works (it drops a frame split across reads and never processes FIN, which is why it is not on
 * the data path). It runs over a real WebSocket over TLS:
 * every frame it sends is one message, and every frame we send reaches it whole, because our
 * WebSocket adapter never cuts a header or a payload across messages.
 *
 * Known broken in yamux-js 0.2.0 (read from node_modules/yamux-js/lib), therefore NOT tested
 * beyond the one documented demonstration at the end of this file:
 * - FIN handling: `processFlags` tests for SYN where it means FIN, so a FIN from us is never
 *   processed and its streams never emit 'end'; it sends FIN only from `stream.close()`, never
 *   from `end()`. We check only its FIN reaching us.
 * - Split frames: a Data frame (or a header) split across two transport chunks is silently
 *   dropped, and the parser is left out of step; so it needs a message-framed transport.
 * - Backpressure: received data refills the window at once, whether or not anyone reads, and a
 *   writer with no window polls every 100 ms (`setTimeout(..., 100)` in `_write`).
 * - Also: flags on Data frames are ignored (an ACK or FIN riding on data is lost), a Data frame
 *   carrying SYN loses its payload, RST is not surfaced to the stream, and bytes after a GoAway
 *   in the same chunk are dropped.
 */
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { describe, expect, it, onTestFinished } from 'vitest';
import type { RawData } from 'ws';
import { Client, Server } from 'yamux-js';
import type { Stream } from 'yamux-js';
import {
  Flag,
  FrameType,
  YamuxSession,
  createWebSocketDuplex,
  encodeHeader,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { readAtLeast, sha256, withDeadline } from '../helpers/streams.js';
import { wsPeerPair } from '../helpers/transports.js';

const KiB = 1024;
/** Larger than one 256 KiB window, so window updates must flow in both directions. */
const PAYLOAD_BYTES = 320 * KiB;

/** yamux-js logs with console.log by default; its keepalive timer would outlive the test. */
const theirConfig = { enableKeepAlive: false, logger: (): void => undefined };

type TheirSession = Client | Server;

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * Our session on one end of a real wss connection, yamux-js on the other. yamux-js is a
 * Transform: bytes in through write(), frames out as 'data', each sent as one message.
 */
async function connect(ourRole: 'client' | 'server', theirs: TheirSession): Promise<YamuxSession> {
  // Our end is the WebSocket client (the agent's dialer), theirs a ws WebSocketServer's socket.
  const { ours: upgraded, theirs: server, close } = await wsPeerPair('client');
  onTestFinished(() => close());
  const theirErrors: Error[] = [];
  theirs.on('error', (err: Error) => theirErrors.push(err));
  theirs.on('data', (frame: Buffer) => {
    if (server.readyState === server.OPEN) server.send(frame);
  });
  server.on('message', (data: RawData) => theirs.write(toBuffer(data)));
  const transport = createWebSocketDuplex(upgraded.socket, { role: 'client', head: upgraded.head });
  const ours = new YamuxSession(transport, { role: ourRole });
  onTestFinished(() => {
    ours.destroy();
    theirs.close();
    // Errors it raised while the test ran are failures; the ones teardown causes are not.
    expect(theirErrors).toEqual([]);
  });
  return ours;
}

describe('interoperability with yamux-js 0.2.0 over a WebSocket', () => {
  it('a yamux-js client opens streams to our server, gets its bytes echoed, and its close ends our side', async () => {
    const theirs = new Client(theirConfig);
    const ours = await connect('server', theirs);
    const ended = new Map<number, Promise<void>>();
    ours.on('stream', (stream: YamuxStream) => {
      stream.on('error', () => undefined);
      ended.set(stream.id, new Promise((resolve) => stream.once('end', () => resolve())));
      stream.pipe(stream);
    });

    const exchanges = [0, 1, 2].map(async () => {
      const stream = theirs.open();
      stream.on('error', () => undefined);
      const payload = randomBytes(PAYLOAD_BYTES);
      // yamux-js never ends its streams (no FIN), so count the echo's bytes rather than wait for 'end'.
      const echoed = readAtLeast(stream, payload.length);
      stream.write(payload);
      expect(sha256(await echoed)).toBe(sha256(payload));
      // close() sends FIN (its end() does not); our stream must see 'end'.
      stream.close();
      await withDeadline(ended.get(stream.ID())!, 5_000, `our end of stream ${stream.ID()} ending`);
    });
    await withDeadline(Promise.all(exchanges), 15_000, 'three echoed exchanges');
    expect(ours.isClosed).toBe(false);
    // It answers our pings.
    expect(await withDeadline(ours.ping(), 2_000, 'ping')).toBeGreaterThanOrEqual(0);
  });

  it('our client opens streams to a yamux-js server that echoes them, with windows flowing both ways', async () => {
    const theirs = new Server((stream: Duplex) => {
      stream.on('error', () => undefined);
      stream.on('data', (chunk: Buffer) => stream.write(chunk));
    }, theirConfig);
    const ours = await connect('client', theirs);

    const exchanges = [0, 1, 2].map(async () => {
      const stream = ours.open();
      stream.on('error', () => undefined);
      const payload = randomBytes(PAYLOAD_BYTES);
      const echoed = readAtLeast(stream, payload.length);
      stream.write(payload);
      expect(sha256(await echoed)).toBe(sha256(payload));
      // Its side never sends FIN back, so the stream cannot finish cleanly: reset it.
      stream.destroy();
    });
    await withDeadline(Promise.all(exchanges), 15_000, 'three echoed exchanges');
    expect(ours.isClosed).toBe(false);
    expect(ours.stats.bytesIn).toBeGreaterThanOrEqual(3 * PAYLOAD_BYTES);
  });

  it('documents a known yamux-js bug: a Data frame split across two chunks is silently dropped', async () => {
    // Fed directly, no network, so the outcome is deterministic.
    const received = new Map<number, Buffer[]>();
    const theirs = new Server((stream: Duplex) => {
      const chunks: Buffer[] = [];
      received.set((stream as Stream).ID(), chunks);
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    }, theirConfig);
    theirs.on('data', () => undefined);
    theirs.on('error', () => undefined);
    onTestFinished(() => theirs.close());
    const frames = (streamId: number, payload: Buffer): Buffer =>
      Buffer.concat([
        encodeHeader(FrameType.WindowUpdate, Flag.SYN, streamId, 0),
        encodeHeader(FrameType.Data, 0, streamId, payload.length),
        payload,
      ]);

    // Whole frames in one chunk: delivered.
    theirs.write(frames(1, Buffer.from('whole frame')));
    // The same frames cut in the middle of the payload: both halves vanish.
    const split = frames(3, Buffer.from('split frame'));
    theirs.write(split.subarray(0, split.length - 5));
    theirs.write(split.subarray(split.length - 5));
    await new Promise((resolve) => setImmediate(resolve));

    expect(Buffer.concat(received.get(1) ?? []).toString()).toBe('whole frame');
    expect(received.has(3)).toBe(true); // the stream was opened...
    expect(Buffer.concat(received.get(3) ?? []).toString()).toBe(''); // ...but its data never arrived
  });
});
