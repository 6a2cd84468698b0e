/**
 * A byte Duplex over a WebSocket: `ws` does the opening handshake (HTTP upgrade, proxies,
 * authentication errors), then this adapter takes the socket over and speaks RFC 6455 frames on
 * it itself (ws-frame-encoder.ts, ws-frame-decoder.ts). Message boundaries carry no meaning (the
 * yamux decoder re-chunks), so each write batch leaves as one binary frame (several beyond the
 * frame size limits), and received payload is handed on piece by piece as TLS delivers it.
 *
 * Why not `ws.send` and 'message': ws reassembles every message into a new buffer when it spans
 * several socket reads (a 64 KiB message spans four 16 KiB TLS reads), sends each message as its
 * own socket write (a yamux header and its payload were two messages, two TLS records, two
 * syscalls), and masks into a fresh buffer per message. In bulk transfer those copies and
 * allocations were most of the tunnel's CPU beyond TLS itself (bench/README.md).
 *
 * A WebSocket cannot half-close: once either side sends its close frame, the other answers and
 * the connection ends. So `end()` here ends both directions (the peer sees 'end'), and the
 * Duplex is created with `allowHalfOpen: false`. Stream half-close lives in yamux (FIN).
 */
import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { TunnelError } from './errors.js';
import { WebSocketFrameDecoder, WsOpcode } from './ws-frame-decoder.js';
import { encodeControlFrame, encodeMasked, encodeUnmasked, releaseSlabs } from './ws-frame-encoder.js';

export interface WebSocketDuplexOptions {
  /** Writes complete at once while the socket buffers at most this; above it they wait for the socket. */
  highWaterMarkBytes?: number;
}

const DEFAULT_HIGH_WATER_MARK_BYTES = 1024 * 1024;
// Received bytes held before the socket is paused.
const READABLE_HIGH_WATER_MARK_BYTES = 256 * 1024;
// 1000 is a normal closure; 1005 is a close frame that carried no status code.
const CLEAN_CLOSE_CODES: ReadonlySet<number> = new Set([1000, 1005]);
const CLOSE_NORMAL = 1000;
const CLOSE_PROTOCOL_ERROR = 1002;
// What ws reports when the connection ends without a close frame (RFC 6455 §7.1.5).
const CLOSE_ABNORMAL = 1006;
// After our close frame went out because of an error, how long the peer may take to hang up.
const ERROR_CLOSE_LINGER_MS = 1_000;

type Callback = (err?: Error | null) => void;

/** The parts of a `ws` WebSocket the takeover reads (not public API; pinned by tests). */
interface WsInternals {
  _socket?: Duplex;
  _isServer?: boolean;
  _closeCode?: number;
  emitClose?: () => void;
  _receiver?: { _state?: number; _buffers?: Buffer[]; _bufferedBytes?: number };
}

// ws's listeners on the socket (websocket.js setSocket), removed on takeover.
const WS_SOCKET_LISTENERS: ReadonlyArray<readonly [string, string]> = [
  ['data', 'socketOnData'],
  ['end', 'socketOnEnd'],
  ['close', 'socketOnClose'],
  ['error', 'socketOnError'],
];

export function createWebSocketDuplex(ws: WebSocket, opts: WebSocketDuplexOptions = {}): Duplex {
  const highWaterMarkBytes = opts.highWaterMarkBytes ?? DEFAULT_HIGH_WATER_MARK_BYTES;
  let socket: Duplex | undefined;
  let decoder: WebSocketFrameDecoder | undefined;
  // Client frames are masked (RFC 6455 §5.3); set on takeover.
  let masked = false;
  // Writable runs one write or final at a time, so at most one action waits for the handshake.
  let whenOpen: (() => void) | null = null;
  // Our close frame is out; 'finish' waits until the peer answered, i.e. has every byte.
  let finalCallback: Callback | null = null;
  let closeSent = false;
  let closeReceived = false;
  // We paused the socket because the consumer is behind.
  let paused = false;
  // Whether the consumer still wants data after the pieces of one socket read.
  let wantMore = true;
  // The close code exchanged (or 1006), reported on the ws object once the socket is gone.
  let closeCode = CLOSE_ABNORMAL;

  const duplex = new Duplex({
    allowHalfOpen: false,
    readableHighWaterMark: READABLE_HIGH_WATER_MARK_BYTES,
    write(chunk: Buffer, _encoding, cb: Callback) {
      whenReady(cb, () => send([chunk], cb));
    },
    writev(chunks: Array<{ chunk: Buffer }>, cb: Callback) {
      const buffers = chunks.map((c) => c.chunk);
      whenReady(cb, () => send(buffers, cb));
    },
    read() {
      // The consumer wants more: read the socket again.
      if (paused && socket !== undefined) {
        paused = false;
        socket.resume();
      }
    },
    final(cb: Callback) {
      if (closeReceived) return cb(); // the peer closed first and we answered
      whenReady(cb, () => {
        finalCallback = cb;
        sendClose(CLOSE_NORMAL);
      });
    },
    destroy(err, cb) {
      teardown();
      if (socket === undefined) {
        if (ws.readyState !== ws.CLOSED) ws.terminate();
      } else if (closeSent && socket.writableEnded && !socket.destroyed) {
        // An error close frame is on its way: give it a moment, then hang up regardless.
        const s = socket;
        setTimeout(() => s.destroy(), ERROR_CLOSE_LINGER_MS).unref();
      } else {
        socket.destroy();
      }
      cb(err);
    },
  });

  function whenReady(cb: Callback, action: () => void): void {
    if (socket !== undefined && !closeSent) action();
    else if (socket === undefined && ws.readyState === ws.CONNECTING) whenOpen = action;
    else cb(closedError('the WebSocket is closed'));
  }

  function send(chunks: Buffer[], cb: Callback): void {
    const s = socket!;
    const batch = masked ? encodeMasked(chunks) : encodeUnmasked(chunks);
    if (batch.buffers.length === 0) return cb(); // only empty chunks: nothing to frame
    let waiting = false;
    let done = false;
    let doneErr: Error | null = null;
    const last = batch.buffers.length - 1;
    s.cork();
    for (let i = 0; i < last; i++) s.write(batch.buffers[i]);
    // Callbacks run in write order, so the last one means the socket is done with every buffer.
    s.write(batch.buffers[last], (err?: Error | null) => {
      releaseSlabs(batch.slabs);
      const mapped = err ? closedError('the WebSocket closed before the data was sent', err) : null;
      if (mapped) duplex.destroy(mapped);
      if (waiting) cb(mapped);
      else {
        done = true;
        doneErr = mapped;
      }
    });
    s.uncork();
    // Completing at once while the socket holds little keeps the pipe full without a round trip
    // per write; above the mark, wait until the socket has taken this batch. Memory stays at most
    // the mark plus one batch. (Callers must not reuse a buffer after writing it.)
    if (done || s.writableLength <= highWaterMarkBytes) cb(doneErr);
    else waiting = true;
  }

  function sendControl(opcode: number, payload: Buffer): void {
    socket!.write(encodeControlFrame(opcode, payload, masked));
  }

  function sendClose(code: number): void {
    if (closeSent) return;
    closeSent = true;
    const payload = Buffer.allocUnsafe(2);
    payload.writeUInt16BE(code, 0);
    sendControl(WsOpcode.Close, payload);
  }

  function takeOver(): void {
    ws.off('open', takeOver);
    ws.off('error', onHandshakeError);
    ws.off('close', onHandshakeClose);
    let detached: Detached;
    try {
      detached = detach(ws);
    } catch (err) {
      duplex.destroy(err as Error);
      return;
    }
    socket = detached.socket;
    masked = !detached.isServer;
    decoder = new WebSocketFrameDecoder({ onData, onControl }, detached.isServer);
    socket.on('data', onSocketData);
    socket.on('end', onSocketEnd);
    socket.on('close', onSocketClose);
    socket.on('error', onSocketError);
    // ws's own 'close' listener is gone: finish the ws object's life ourselves, so its readyState
    // and 'close' event (WebSocketServer client tracking listens for it) stay truthful.
    socket.once('close', () => detached.finish(closeCode));
    // A caller may have paused the ws (ws.pause()) to hold data until this takeover.
    socket.resume();
    for (const chunk of detached.pending) onSocketData(chunk);
    const action = whenOpen;
    whenOpen = null;
    action?.();
  }

  function onSocketData(chunk: Buffer): void {
    if (duplex.destroyed) return;
    wantMore = true;
    try {
      decoder!.push(chunk);
    } catch (err) {
      // RFC 6455 §7.4.1: 1002 tells the peer why before the connection goes.
      if (!closeSent) sendClose(CLOSE_PROTOCOL_ERROR);
      socket!.end();
      duplex.destroy(err as Error);
      return;
    }
    // The consumer is behind: stop reading the socket so TCP pushes back on the sender.
    if (!wantMore && !paused && !duplex.destroyed) {
      paused = true;
      socket!.pause();
    }
  }

  function onData(piece: Buffer): void {
    if (closeReceived || duplex.destroyed) return;
    if (!duplex.push(piece)) wantMore = false;
  }

  function onControl(opcode: number, payload: Buffer): void {
    if (closeReceived || duplex.destroyed) return;
    if (opcode === WsOpcode.Ping) {
      if (!closeSent) sendControl(WsOpcode.Pong, payload);
      return;
    }
    if (opcode !== WsOpcode.Close) return; // a pong: we never ping at this layer (yamux does)
    if (payload.length === 1) {
      throw new TunnelError('TUN_ERR_PROTOCOL', 'malformed WebSocket frame: a close frame of 1 byte', {
        details: { websocket: 'close frame of 1 byte' },
      });
    }
    closeReceived = true;
    const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
    closeCode = code;
    // Answer with the same code (RFC 6455 §5.5.1); both close frames sent, TCP may go.
    if (!closeSent) {
      closeSent = true;
      sendControl(WsOpcode.Close, payload.subarray(0, 2));
    }
    socket!.end();
    if (!CLEAN_CLOSE_CODES.has(code)) {
      const details = { code, reason: payload.subarray(2).toString() };
      duplex.destroy(
        new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `the WebSocket closed with code ${code}`, { details }),
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

  function onHandshakeError(err: Error): void {
    duplex.destroy(closedError('the WebSocket failed', err));
  }

  function onHandshakeClose(): void {
    if (!duplex.destroyed) duplex.destroy(abnormalClose());
  }

  // After teardown nobody cares about a late error (e.g. a reset during the linger).
  function ignoreLateError(): void {}

  function teardown(): void {
    whenOpen = null;
    finalCallback = null;
    ws.off('open', takeOver);
    ws.off('error', onHandshakeError);
    ws.off('close', onHandshakeClose);
    if (socket === undefined) {
      // terminate() during the handshake emits 'error' on a later tick.
      ws.on('error', ignoreLateError);
      return;
    }
    socket.off('data', onSocketData);
    socket.off('end', onSocketEnd);
    socket.off('close', onSocketClose);
    socket.off('error', onSocketError);
    socket.on('error', ignoreLateError);
  }

  ws.binaryType = 'nodebuffer';
  if (ws.readyState === ws.OPEN) {
    takeOver();
  } else if (ws.readyState === ws.CONNECTING) {
    // ws emits 'open' synchronously right after it attached the socket: nothing was read yet.
    ws.on('open', takeOver);
    ws.on('error', onHandshakeError);
    ws.on('close', onHandshakeClose);
  } else {
    // Handed a socket that is already going away: no close frame will come to end the readable side.
    duplex.destroy(closedError('the WebSocket is closed'));
  }
  return duplex;
}

interface Detached {
  socket: Duplex;
  isServer: boolean;
  /** Bytes ws had received but not parsed yet (less than a frame header). */
  pending: Buffer[];
  /** Moves the ws object to CLOSED and emits its 'close' (call once the socket has closed). */
  finish(code: number): void;
}

/**
 * Takes an open WebSocket's socket away from `ws`: removes ws's socket listeners, so ws never
 * reads or writes it again. Only safe at a frame boundary with nothing parsed, which holds when
 * called from 'open' (client) or the handleUpgrade callback (server): ws emits both right after
 * attaching the socket. A ws whose internals differ from what this expects is refused, so a ws
 * upgrade that changes them fails loudly (test/protocol/ws-duplex.test.ts) instead of corrupting data.
 */
function detach(ws: WebSocket): Detached {
  const w = ws as unknown as WsInternals;
  const socket = w._socket;
  const receiver = w._receiver;
  const pending = receiver?._buffers;
  if (
    socket === undefined ||
    typeof w._isServer !== 'boolean' ||
    receiver === undefined ||
    receiver._state !== 0 ||
    !Array.isArray(pending) ||
    typeof w.emitClose !== 'function'
  ) {
    throw unsupported('its WebSocket has already parsed data or has an unknown shape');
  }
  const found = WS_SOCKET_LISTENERS.map(([event, name]) => {
    const listener = socket.listeners(event).find((l) => (l as { name?: string }).name === name);
    return [event, listener] as const;
  });
  if (found.some(([, listener]) => listener === undefined)) {
    throw unsupported("ws's socket listeners were not found");
  }
  for (const [event, listener] of found) socket.removeListener(event, listener as (...a: unknown[]) => void);
  receiver._bufferedBytes = 0;
  const finish = (code: number): void => {
    w._closeCode = code;
    w.emitClose!();
  };
  return { socket, isServer: w._isServer, pending: pending.splice(0), finish };
}

function unsupported(why: string): TunnelError {
  return new TunnelError('TUN_ERR_PROTOCOL', `cannot take the socket over from ws: ${why}`);
}

function abnormalClose(): TunnelError {
  return new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `the WebSocket closed with code ${CLOSE_ABNORMAL}`, {
    details: { code: CLOSE_ABNORMAL, reason: '' },
  });
}

function closedError(message: string, cause?: unknown): TunnelError {
  return new TunnelError('TUN_ERR_TRANSPORT_CLOSED', message, cause === undefined ? {} : { cause });
}
