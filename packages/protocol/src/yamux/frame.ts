import { FrameType, HEADER_BYTES, PROTOCOL_VERSION } from './constants.js';

/** A decoded header. For Data frames `length` is the payload size; otherwise it is the frame's value. */
export interface FrameHeader {
  version: number;
  type: number;
  flags: number;
  streamId: number;
  length: number;
}

/** Writes one 12-byte header (big-endian fields) into a fresh buffer. */
export function encodeHeader(type: FrameType, flags: number, streamId: number, length: number): Buffer {
  // allocUnsafe takes small buffers from Node's shared pool: no per-frame allocation of a slab.
  const buf = Buffer.allocUnsafe(HEADER_BYTES);
  buf[0] = PROTOCOL_VERSION;
  buf[1] = type;
  buf.writeUInt16BE(flags, 2);
  buf.writeUInt32BE(streamId, 4);
  buf.writeUInt32BE(length, 8);
  return buf;
}

export function decodeHeader(buf: Buffer, offset = 0): FrameHeader {
  return {
    version: buf[offset]!,
    type: buf[offset + 1]!,
    flags: buf.readUInt16BE(offset + 2),
    streamId: buf.readUInt32BE(offset + 4),
    length: buf.readUInt32BE(offset + 8),
  };
}

const TYPE_NAMES: Record<number, string> = {
  [FrameType.Data]: 'Data',
  [FrameType.WindowUpdate]: 'WindowUpdate',
  [FrameType.Ping]: 'Ping',
  [FrameType.GoAway]: 'GoAway',
};

/** For logs and error details. */
export function describeHeader(h: FrameHeader): string {
  const flags = ['SYN', 'ACK', 'FIN', 'RST'].filter((_, i) => h.flags & (1 << i)).join('|') || '-';
  return `${TYPE_NAMES[h.type] ?? `type(${h.type})`} stream=${h.streamId} flags=${flags} length=${h.length}`;
}
