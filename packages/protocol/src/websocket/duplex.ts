/**
 * A byte Duplex over a WebSocket: the caller has done the opening handshake (websocket/handshake.ts: the
 * server's 'upgrade' handler, the agent's dialer) and hands over the upgraded socket, and this
 * adapter speaks RFC 6455 frames on it (websocket/frame-encoder.ts, websocket/frame-decoder.ts). Message
 * boundaries carry no meaning (the yamux decoder re-chunks), so each write batch leaves as one
 * binary frame (several beyond the frame size limits), and received payload is handed on piece by
 * piece as TLS delivers it.
 *
 * Why not the `ws` library: it reassembles every message into a new buffer when it spans several
 * socket reads (a 64 KiB message spans four 16 KiB TLS reads), sends each message as its own
 * socket write (a yamux header and its payload were two messages, two TLS records, two syscalls),
 * and masks into a fresh buffer per message. In bulk transfer those copies and allocations were
 * most of the tunnel's CPU beyond TLS itself (bench/README.md).
 *
 * A WebSocket cannot half-close: once either side sends its close frame, the other answers and
 * the connection ends. So `end()` here ends both directions (the peer sees 'end'), and the
 * Duplex is created with `allowHalfOpen: false`. Stream half-close lives in yamux (FIN).
 *
 * A peer's pings are answered, but at most one pong is in the socket at a time: a peer that pings
 * and never reads would otherwise grow our write buffer by a pong per ping, without limit.
 */
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { TunnelError } from '../errors.js';
import { WebSocketFrameDecoder, WsCloseCode, WsOpcode, parseClosePayload } from './frame-decoder.js';
import { encodeControlFrame, encodeMasked, encodeUnmasked, releaseSlabs } from './frame-encoder.js';
import { TokenBucket } from '../token-bucket.js';

export interface WebSocketDuplexOptions {
  /**
   * Which end of the WebSocket this is. A client masks every frame and expects unmasked frames;
   * a server the reverse (RFC 6455 §5.1).
   */
  role: 'client' | 'server';
  /**
   * Bytes that arrived behind the handshake in the same read (the `head` of node:http's
   * 'upgrade' event): the first frame bytes, read before anything from the socket.
   */
  head?: Buffer;
  /** Writes complete at once while the socket buffers at most this; above it they wait for the socket. */
  highWaterMarkBytes?: number;
  /**
   * Pings (and pongs, which we never ask for) the peer may send a second, in bursts of four
   * seconds' worth; more fail the connection with 1008 and TUN_ERR_LIMIT_EXCEEDED. Our peers
   * never ping at this layer (yamux keeps the session alive): a flood only burns CPU.
   */
  pingsPerSecond?: number;
}

const DEFAULT_HIGH_WATER_MARK_BYTES = 1024 * 1024;
const DEFAULT_PINGS_PER_SECOND = 64;
// Received bytes held before the socket is paused.
const READABLE_HIGH_WATER_MARK_BYTES = 256 * 1024;
// The code RFC 6455 §7.1.5 gives a connection that ended without a close frame: reported in
// errors, never sent (§7.4.1).
const CLOSE_ABNORMAL = 1006;
// After our close frame went out because of an error, how long the peer may take to hang up.
const ERROR_CLOSE_LINGER_MS = 1_000;

type Callback = (err?: Error | null) => void;

export function createWebSocketDuplex(socket: Duplex, opts: WebSocketDuplexOptions): Duplex {
  const highWaterMarkBytes = opts.highWaterMarkBytes ?? DEFAULT_HIGH_WATER_MARK_BYTES;
  // Client frames are masked (RFC 6455 §5.3), server frames never.
  const masked = opts.role === 'client';
  const decoder = new WebSocketFrameDecoder({ onData, onControl }, opts.role === 'server');
  const pingsPerSecond = opts.pingsPerSecond ?? DEFAULT_PINGS_PER_SECOND;
  const pingBucket = new TokenBucket(pingsPerSecond, 4 * pingsPerSecond, () => performance.now());
  // Our close frame is out; 'finish' waits until the peer answered, i.e. has every byte.
  let finalCallback: Callback | null = null;
  let closeSent = false;
  let closeReceived = false;
  // We paused the socket because the consumer is behind.
  let paused = false;
  // Whether the consumer still wants data after the pieces of one socket read.
  let wantMore = true;
  // A pong is in the socket (its write callback has not run). RFC 6455 §5.5.3 lets us answer only
  // the latest of several pings, so while one is out the newest ping's payload waits in
  // pendingPong, replacing any older one: memory stays one pong whatever the peer's ping rate.
  let pongInFlight = false;
  let pendingPong: Buffer | null = null;

  const duplex = new Duplex({
    allowHalfOpen: false,
    readableHighWaterMark: READABLE_HIGH_WATER_MARK_BYTES,
    write(chunk: Buffer, _encoding, cb: Callback) {
      ifOpen(cb, () => send([chunk], cb));
    },
    writev(chunks: Array<{ chunk: Buffer }>, cb: Callback) {
      const buffers = chunks.map((c) => c.chunk);
      ifOpen(cb, () => send(buffers, cb));
    },
    read() {
      // The consumer wants more: read the socket again.
      if (paused) {
        paused = false;
        socket.resume();
      }
    },
    final(cb: Callback) {
      if (closeReceived) return cb(); // the peer closed first and we answered
      ifOpen(cb, () => {
        finalCallback = cb;
        sendClose(WsCloseCode.Normal);
      });
    },
    destroy(err, cb) {
      teardown();
      if (closeSent && socket.writableEnded && !socket.destroyed) {
        // An error close frame is on its way: give it a moment, then hang up regardless.
        setTimeout(() => socket.destroy(), ERROR_CLOSE_LINGER_MS).unref();
      } else {
        socket.destroy();
      }
      cb(err);
    },
  });

  function ifOpen(cb: Callback, action: () => void): void {
    if (!closeSent) action();
    else cb(closedError('the WebSocket is closed'));
  }

  function send(chunks: Buffer[], cb: Callback): void {
    const batch = masked ? encodeMasked(chunks) : encodeUnmasked(chunks);
    if (batch.buffers.length === 0) return cb(); // only empty chunks: nothing to frame
    let waiting = false;
    let done = false;
    let doneErr: Error | null = null;
    const last = batch.buffers.length - 1;
    socket.cork();
    for (let i = 0; i < last; i++) socket.write(batch.buffers[i]);
    // Callbacks run in write order, so the last one means the socket is done with every buffer.
    socket.write(batch.buffers[last], (err?: Error | null) => {
      releaseSlabs(batch.slabs);
      const mapped = err ? closedError('the WebSocket closed before the data was sent', err) : null;
      if (mapped) duplex.destroy(mapped);
      if (waiting) cb(mapped);
      else {
        done = true;
        doneErr = mapped;
      }
    });
    socket.uncork();
    // Completing at once while the socket holds little keeps the pipe full without a round trip
    // per write; above the mark, wait until the socket has taken this batch. Memory stays at most
    // the mark plus one batch. (Callers must not reuse a buffer after writing it.)
    if (done || socket.writableLength <= highWaterMarkBytes) cb(doneErr);
    else waiting = true;
  }

  function sendPong(payload: Buffer): void {
    if (pongInFlight) {
      pendingPong = payload; // decoder payloads are fresh buffers: safe to hold
      return;
    }
    pongInFlight = true;
    socket.write(encodeControlFrame(WsOpcode.Pong, payload, masked), onPongWritten);
  }

  function onPongWritten(err?: Error | null): void {
    pongInFlight = false;
    const next = pendingPong;
    pendingPong = null;
    // A failed write is the socket's error to report ('error'/'close' end the duplex); after our
    // close frame no frame may follow it (RFC 6455 §5.5.1).
    if (next !== null && !err && !closeSent && !duplex.destroyed) sendPong(next);
  }

  /** Our close frame (the code alone), once; we never send 1005, 1006 or 1015 (RFC 6455 §7.4.1). */
  function sendClose(code: number): void {
    if (closeSent) return;
    closeSent = true;
    pendingPong = null;
    const payload = Buffer.allocUnsafe(2);
    payload.writeUInt16BE(code, 0);
    socket.write(encodeControlFrame(WsOpcode.Close, payload, masked));
  }

  /** Fails the connection (RFC 6455 §7.1.7): our close frame says why, then the connection goes. */
  function failConnection(code: number, err: Error): void {
    sendClose(code);
    socket.end();
    duplex.destroy(err);
  }

  function onSocketData(chunk: Buffer): void {
    if (duplex.destroyed) return;
    wantMore = true;
    try {
      decoder.push(chunk);
    } catch (err) {
      failConnection(WsCloseCode.ProtocolError, err as Error);
      return;
    }
    // The consumer is behind: stop reading the socket so TCP pushes back on the sender.
    if (!wantMore && !paused && !duplex.destroyed) {
      paused = true;
      socket.pause();
    }
  }

  function onData(piece: Buffer): void {
    if (closeReceived || duplex.destroyed) return;
    if (!duplex.push(piece)) wantMore = false;
  }

  function onControl(opcode: number, payload: Buffer): void {
    if (closeReceived || duplex.destroyed) return;
    if ((opcode === WsOpcode.Ping || opcode === WsOpcode.Pong) && !pingBucket.take()) {
      failConnection(
        WsCloseCode.PolicyViolation,
        new TunnelError('TUN_ERR_LIMIT_EXCEEDED', `more than ${pingsPerSecond} WebSocket pings a second`, {
          details: { limit: 'webSocketPingsPerSecond' },
        }),
      );
      return;
    }
    if (opcode === WsOpcode.Ping) {
      if (!closeSent) sendPong(payload);
      return;
    }
    if (opcode !== WsOpcode.Close) return; // a pong: we never ping at this layer (yamux does)
    const close = parseClosePayload(payload);
    if (!close.valid) {
      // The rest of this read is still parsed, but the sink ignores it once destroyed.
      failConnection(close.reply, close.error);
      return;
    }
    closeReceived = true;
    // Answer with their code, or 1000 when they gave none (RFC 6455 §5.5.1); both close frames
    // are sent, TCP may go.
    sendClose(close.reply);
    socket.end();
    if (close.code !== undefined && close.code !== WsCloseCode.Normal) {
      const details = { code: close.code, reason: close.reason };
      duplex.destroy(
        new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `the WebSocket closed with code ${close.code}`, {
          details,
        }),
      );
      return;
    }
    const cb = finalCallback;
    finalCallback = null;
    cb?.();
    duplex.push(null);
  }

  function onSocketEnd(): void {
    if (closeReceived) return;
    duplex.destroy(abnormalClose());
  }

  function onSocketClose(): void {
    if (!closeReceived && !duplex.destroyed) duplex.destroy(abnormalClose());
  }

  function onSocketError(err: Error): void {
    duplex.destroy(closedError('the WebSocket failed', err));
  }

  // After teardown nobody cares about a late error (e.g. a reset during the linger).
  function ignoreLateError(): void {}

  function teardown(): void {
    finalCallback = null;
    socket.off('data', onSocketData);
    socket.off('end', onSocketEnd);
    socket.off('close', onSocketClose);
    socket.off('error', onSocketError);
    socket.on('error', ignoreLateError);
  }

  if (socket.destroyed || !socket.readable || !socket.writable) {
    // Handed a socket that is already gone (e.g. reset between the handshake and now): no close
    // frame will ever come to end the readable side.
    socket.on('error', ignoreLateError);
    duplex.destroy(closedError('the WebSocket is closed'));
    return duplex;
  }
  if (socket instanceof Socket) {
    // Frames are whole when written: Nagle would only delay the last segment of each. And an
    // idle session is yamux's business (keepalive pings), not a socket timeout's.
    socket.setNoDelay(true);
    socket.setTimeout(0);
  }
  socket.on('end', onSocketEnd);
  socket.on('close', onSocketClose);
  socket.on('error', onSocketError);
  // The head comes before anything the socket delivers: 'data' listeners only see later reads.
  if (opts.head !== undefined && opts.head.length > 0) onSocketData(opts.head);
  if (!duplex.destroyed) {
    socket.on('data', onSocketData);
    // node:http leaves an upgraded socket neither flowing nor paused; make sure it flows (unless
    // the head already filled the consumer and onSocketData paused it).
    if (!paused) socket.resume();
  }
  return duplex;
}

function abnormalClose(): TunnelError {
  return new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `the WebSocket closed with code ${CLOSE_ABNORMAL}`, {
    details: { code: CLOSE_ABNORMAL, reason: '' },
  });
}

function closedError(message: string, cause?: unknown): TunnelError {
  return new TunnelError('TUN_ERR_TRANSPORT_CLOSED', message, cause === undefined ? {} : { cause });
}
