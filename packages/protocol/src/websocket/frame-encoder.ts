import { randomFillSync } from 'node:crypto';
import { WsOpcode } from './frame-decoder.js';
import { maskInto } from './mask.js';

/**
 * Writes RFC 6455 frames for a binary-only connection. A batch of chunks becomes as few binary
 * frames as the size limits allow (message boundaries carry no meaning to yamux above).
 *
 * Unmasked (server → client): each frame is a small header plus the caller's chunks, uncopied.
 * Masked (client → server, RFC 6455 §5.3: a fresh unpredictable key per frame): the payload must
 * be copied to be masked, since the caller may still hold its buffers. The copy goes into slabs
 * of SLAB_BYTES reused across frames (returned by `release` once the socket has written them),
 * so bulk transfer does not allocate a new ArrayBuffer per frame: that churn drove V8 into
 * frequent mark-compacts.
 */
export interface EncodedBatch {
  /** Buffers to write to the socket, in order. */
  buffers: Buffer[];
  /** Slabs to hand back to `release` once the socket is done with `buffers`. */
  slabs: Buffer[];
}

/** An unmasked frame's payload may be this large; ws peers accept 100 MiB (ours 64 MiB). */
export const MAX_UNMASKED_FRAME_BYTES = 1024 * 1024;
const SLAB_BYTES = 128 * 1024;
const MAX_HEADER_BYTES = 14;
/** A masked frame fills at most one slab, header included. */
export const MAX_MASKED_FRAME_BYTES = SLAB_BYTES - MAX_HEADER_BYTES;
/** Masked batches below this go into a plain small buffer (Node pools those) rather than a slab. */
const SMALL_BATCH_BYTES = 4 * 1024;
/** Free slabs kept per process; more in flight than this are allocated and left to the GC. */
const MAX_FREE_SLABS = 16;
const freeSlabs: Buffer[] = [];

const RANDOM_POOL_BYTES = 8 * 1024;
const randomPool = Buffer.alloc(RANDOM_POOL_BYTES);
let randomOffset = RANDOM_POOL_BYTES;

/** Header length for a frame of `payloadBytes`. */
export function frameHeaderBytes(payloadBytes: number, masked: boolean): number {
  const lengthBytes = payloadBytes > 0xffff ? 8 : payloadBytes > 125 ? 2 : 0;
  return 2 + lengthBytes + (masked ? 4 : 0);
}

/**
 * Writes a FIN frame header into `target` at `offset` and returns its length. With `maskKey`,
 * the mask bit is set and the key follows the length.
 */
export function writeFrameHeader(
  target: Buffer,
  offset: number,
  opcode: number,
  payloadBytes: number,
  maskKey?: Buffer,
): number {
  target[offset] = 0x80 | opcode;
  const maskBit = maskKey === undefined ? 0 : 0x80;
  let p = offset + 2;
  if (payloadBytes > 0xffff) {
    target[offset + 1] = maskBit | 127;
    target.writeUInt32BE(Math.floor(payloadBytes / 0x1_0000_0000), p);
    target.writeUInt32BE(payloadBytes >>> 0, p + 4);
    p += 8;
  } else if (payloadBytes > 125) {
    target[offset + 1] = maskBit | 126;
    target.writeUInt16BE(payloadBytes, p);
    p += 2;
  } else {
    target[offset + 1] = maskBit | payloadBytes;
  }
  if (maskKey !== undefined) {
    maskKey.copy(target, p);
    p += 4;
  }
  return p - offset;
}

/** Fills `key` (4 bytes) from a pool refilled by the CSPRNG: fresh and unpredictable per frame. */
export function randomMaskKey(key: Buffer): void {
  if (randomOffset + 4 > RANDOM_POOL_BYTES) {
    randomFillSync(randomPool);
    randomOffset = 0;
  }
  randomPool.copy(key, 0, randomOffset, randomOffset + 4);
  randomOffset += 4;
}

/** A single control frame (close, ping, pong): payload at most 125 bytes. */
export function encodeControlFrame(opcode: number, payload: Buffer, masked: boolean): Buffer {
  const key = masked ? Buffer.allocUnsafe(4) : undefined;
  if (key !== undefined) randomMaskKey(key);
  const frame = Buffer.allocUnsafe(frameHeaderBytes(payload.length, masked) + payload.length);
  const headerBytes = writeFrameHeader(frame, 0, opcode, payload.length, key);
  if (key === undefined) payload.copy(frame, headerBytes);
  else maskInto(payload, key, 0, frame, headerBytes);
  return frame;
}

/**
 * Payload sizes of the frames that carry `chunks`: chunks are joined up to `limit` and a frame
 * ends at a chunk boundary when the next chunk would not fit, so a chunk is split only when it is
 * larger than a frame. (Peers that need whole yamux frames per message, like yamux-js, then get
 * them whenever the writer's chunks allow, as with one ws message per chunk before.)
 */
function planFrames(chunks: readonly Buffer[], limit: number): number[] {
  const sizes: number[] = [];
  let current = 0;
  for (const chunk of chunks) {
    let len = chunk.length;
    if (current > 0 && current + len > limit) {
      sizes.push(current);
      current = 0;
    }
    while (len > limit) {
      sizes.push(limit);
      len -= limit;
    }
    current += len;
  }
  if (current > 0) sizes.push(current);
  return sizes;
}

/** Walks `chunks` in order, handing out pieces of at most a requested size. */
class ChunkCursor {
  private index = 0;
  private offset = 0;
  constructor(private readonly chunks: readonly Buffer[]) {}

  next(max: number): Buffer {
    let chunk = this.chunks[this.index]!;
    while (this.offset === chunk.length) {
      this.index += 1;
      this.offset = 0;
      chunk = this.chunks[this.index]!;
    }
    const n = Math.min(max, chunk.length - this.offset);
    const piece = n === chunk.length ? chunk : chunk.subarray(this.offset, this.offset + n);
    this.offset += n;
    return piece;
  }
}

/** Binary frames carrying `chunks`, unmasked: headers plus the chunks themselves, uncopied. */
export function encodeUnmasked(chunks: readonly Buffer[]): EncodedBatch {
  const buffers: Buffer[] = [];
  const cursor = new ChunkCursor(chunks);
  for (const frameBytes of planFrames(chunks, MAX_UNMASKED_FRAME_BYTES)) {
    const header = Buffer.allocUnsafe(frameHeaderBytes(frameBytes, false));
    writeFrameHeader(header, 0, WsOpcode.Binary, frameBytes);
    buffers.push(header);
    for (let left = frameBytes; left > 0;) {
      const piece = cursor.next(left);
      buffers.push(piece);
      left -= piece.length;
    }
  }
  return { buffers, slabs: [] };
}

/** Binary frames carrying `chunks`, each masked with its own fresh key into a slab. */
export function encodeMasked(chunks: readonly Buffer[]): EncodedBatch {
  const buffers: Buffer[] = [];
  const slabs: Buffer[] = [];
  const key = Buffer.allocUnsafe(4);
  const cursor = new ChunkCursor(chunks);
  for (const payloadBytes of planFrames(chunks, MAX_MASKED_FRAME_BYTES)) {
    const frameBytes = frameHeaderBytes(payloadBytes, true) + payloadBytes;
    let target: Buffer;
    if (frameBytes < SMALL_BATCH_BYTES) {
      target = Buffer.allocUnsafe(frameBytes);
    } else {
      target = takeSlab();
      slabs.push(target);
    }
    randomMaskKey(key);
    let at = writeFrameHeader(target, 0, WsOpcode.Binary, payloadBytes, key);
    for (let left = payloadBytes; left > 0;) {
      const piece = cursor.next(left);
      maskInto(piece, key, (payloadBytes - left) & 3, target, at);
      at += piece.length;
      left -= piece.length;
    }
    buffers.push(target.length === frameBytes ? target : target.subarray(0, frameBytes));
  }
  return { buffers, slabs };
}

function takeSlab(): Buffer {
  return freeSlabs.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES);
}

/** Returns slabs once the socket has written (or dropped) every buffer cut from them. */
export function releaseSlabs(slabs: readonly Buffer[]): void {
  for (const slab of slabs) {
    if (freeSlabs.length < MAX_FREE_SLABS) freeSlabs.push(slab);
  }
}
