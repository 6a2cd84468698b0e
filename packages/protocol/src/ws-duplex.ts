/**
 * A byte Duplex over a `ws` WebSocket: each write leaves as binary messages, each binary message
 * arrives as bytes. Message boundaries carry no meaning (the frame decoder re-chunks), so the
 * adapter is free to coalesce and split.
 *
 * A WebSocket cannot half-close: once either side sends its close frame, the other answers and
 * the connection ends. So `end()` here ends both directions (the peer sees 'end'), and
 * the Duplex is created with `allowHalfOpen: false`. Stream half-close lives in yamux (FIN).
 */
import { Duplex } from 'node:stream';
import type { RawData, WebSocket } from 'ws';
import { TunnelError } from './errors.js';

export interface WebSocketDuplexOptions {
  /** Writes complete at once while `ws.bufferedAmount` is at or below this; above it they wait for the socket. */
  highWaterMarkBytes?: number;
}

const DEFAULT_HIGH_WATER_MARK_BYTES = 1024 * 1024;
// Chunks below this are merged with their neighbours; larger ones are sent as they are.
const SMALL_CHUNK_BYTES = 16 * 1024;
// Merged groups stay below this.
const PACK_LIMIT_BYTES = 64 * 1024;
// Larger chunks are split so no message nears the peer's maxPayload (ws default 100 MiB).
const MAX_MESSAGE_BYTES = 1024 * 1024;
// Received bytes held before the socket is paused.
const READABLE_HIGH_WATER_MARK_BYTES = 256 * 1024;
// 1000 is a normal closure; 1005 is a close frame that carried no status code.
const CLEAN_CLOSE_CODES: ReadonlySet<number> = new Set([1000, 1005]);

type Callback = (err?: Error | null) => void;

export function createWebSocketDuplex(ws: WebSocket, opts: WebSocketDuplexOptions = {}): Duplex {
  const highWaterMarkBytes = opts.highWaterMarkBytes ?? DEFAULT_HIGH_WATER_MARK_BYTES;
  // Writable runs one write or final at a time, so at most one action waits for the handshake.
  let whenOpen: (() => void) | null = null;
  // Our close frame is out; 'finish' waits until the peer answered, i.e. has every byte.
  let finalCallback: Callback | null = null;

  ws.binaryType = 'nodebuffer';

  const duplex = new Duplex({
    allowHalfOpen: false,
    readableHighWaterMark: READABLE_HIGH_WATER_MARK_BYTES,
    write(chunk: Buffer, _encoding, cb: Callback) {
      whenReady(cb, () => send(split(chunk), cb));
    },
    writev(chunks: Array<{ chunk: Buffer }>, cb: Callback) {
      const messages = pack(chunks.map((c) => c.chunk));
      whenReady(cb, () => send(messages, cb));
    },
    read() {
      // The consumer wants more: let ws read the socket again.
      if (ws.isPaused) ws.resume();
    },
    final(cb: Callback) {
      if (ws.readyState === ws.CLOSED) return cb(); // the peer closed first and we saw it cleanly
      if (ws.readyState === ws.CLOSING) {
        finalCallback = cb;
        return;
      }
      // ws queues the close frame behind every message already sent, so nothing is cut off.
      whenReady(cb, () => {
        finalCallback = cb;
        ws.close(1000);
      });
    },
    destroy(err, cb) {
      teardown();
      if (ws.readyState !== ws.CLOSED) ws.terminate();
      cb(err);
    },
  });

  function whenReady(cb: Callback, action: () => void): void {
    if (ws.readyState === ws.OPEN) action();
    else if (ws.readyState === ws.CONNECTING) whenOpen = action;
    else cb(closedError('the WebSocket is closed'));
  }

  function send(messages: Buffer[], cb: Callback): void {
    let waiting = false;
    let lastDone = false;
    let lastErr: Error | null = null;
    messages.forEach((message, i) => {
      const isLast = i === messages.length - 1;
      ws.send(message, { binary: true }, (err) => {
        const mapped = err ? closedError('the WebSocket closed before the data was sent', err) : null;
        if (isLast && waiting) return cb(mapped);
        if (isLast) {
          lastDone = true;
          lastErr = mapped;
        }
        if (mapped) duplex.destroy(mapped);
      });
    });
    // Completing at once while ws holds little keeps the pipe full without a round-trip per write;
    // above the mark, wait until the socket has taken the last message. Memory stays at most the
    // mark plus one write. (Callers must not reuse a buffer after writing it.)
    if (lastDone || ws.bufferedAmount <= highWaterMarkBytes) cb(lastErr);
    else waiting = true;
  }

  function onOpen(): void {
    const action = whenOpen;
    whenOpen = null;
    action?.();
  }

  function onMessage(data: RawData, isBinary: boolean): void {
    if (!isBinary) {
      duplex.destroy(
        new TunnelError('TUN_ERR_PROTOCOL', 'received a text WebSocket message; only binary is allowed'),
      );
      return;
    }
    const chunks = Array.isArray(data) ? data : [Buffer.isBuffer(data) ? data : Buffer.from(data)];
    let wantMore = true;
    for (const chunk of chunks) {
      if (chunk.length > 0) wantMore = duplex.push(chunk) && wantMore;
    }
    // The consumer is behind: stop reading the socket so TCP pushes back on the sender.
    if (!wantMore) ws.pause();
  }

  function onClose(code: number, reason: Buffer): void {
    if (!CLEAN_CLOSE_CODES.has(code)) {
      const details = { code, reason: reason.toString() };
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

  function onError(err: Error): void {
    duplex.destroy(closedError('the WebSocket failed', err));
  }

  // terminate() during the handshake emits 'error' on a later tick; after teardown nobody cares.
  function ignoreLateError(): void {}

  function teardown(): void {
    whenOpen = null;
    finalCallback = null;
    ws.off('open', onOpen);
    ws.off('message', onMessage);
    ws.off('close', onClose);
    ws.off('error', onError);
    ws.on('error', ignoreLateError);
  }

  ws.on('open', onOpen);
  ws.on('message', onMessage);
  ws.on('close', onClose);
  ws.on('error', onError);
  // Handed a socket that is already going away: no 'close' will come to end the readable side.
  if (ws.readyState === ws.CLOSING || ws.readyState === ws.CLOSED)
    duplex.destroy(closedError('the WebSocket is closed'));
  return duplex;
}

/**
 * Packs a writev batch into messages: small chunks (frame headers, window updates, short
 * payloads) are merged up to PACK_LIMIT_BYTES, so a 12-byte yamux header never travels as a
 * message of its own; a large chunk goes out as its own message, uncopied (ws copies it once
 * more to mask it, and a second copy here cost 0.6 CPU s/GB and full GCs in bench/mux.js).
 */
function pack(buffers: Buffer[]): Buffer[] {
  const messages: Buffer[] = [];
  let group: Buffer[] = [];
  let groupBytes = 0;
  const flush = (): void => {
    if (group.length === 1) messages.push(group[0]!);
    else if (group.length > 1) messages.push(Buffer.concat(group, groupBytes));
    group = [];
    groupBytes = 0;
  };
  for (const buffer of buffers) {
    if (buffer.length >= SMALL_CHUNK_BYTES) {
      flush();
      messages.push(...split(buffer));
      continue;
    }
    if (groupBytes + buffer.length > PACK_LIMIT_BYTES) flush();
    group.push(buffer);
    groupBytes += buffer.length;
  }
  flush();
  return messages;
}

function split(chunk: Buffer): Buffer[] {
  if (chunk.length <= MAX_MESSAGE_BYTES) return [chunk];
  const parts: Buffer[] = [];
  for (let offset = 0; offset < chunk.length; offset += MAX_MESSAGE_BYTES) {
    parts.push(chunk.subarray(offset, offset + MAX_MESSAGE_BYTES));
  }
  return parts;
}

function closedError(message: string, cause?: unknown): TunnelError {
  return new TunnelError('TUN_ERR_TRANSPORT_CLOSED', message, cause === undefined ? {} : { cause });
}
