/**
 * Wire constants of the yamux protocol (hashicorp/yamux spec.md). docs/PROTOCOL.md describes
 * each one; change both in the same commit.
 */

/** The only protocol version: byte 0 of every header. */
export const PROTOCOL_VERSION = 0;

/** Every frame starts with this many header bytes: version, type, flags, stream id, length. */
export const HEADER_BYTES = 12;

export const FrameType = {
  /** Length = payload bytes that follow the header; may carry SYN/ACK/FIN/RST. */
  Data: 0,
  /** Length = receive-window increment for the stream; no payload; may carry SYN/ACK/FIN/RST. */
  WindowUpdate: 1,
  /** Stream id 0; length = opaque value echoed back; SYN asks, ACK answers. */
  Ping: 2,
  /** Stream id 0; length = a GoAwayCode; no new streams after it. */
  GoAway: 3,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const Flag = {
  /** Opens a stream (on the first Data or WindowUpdate frame); on Ping, a request. */
  SYN: 0x1,
  /** Accepts a stream; on Ping, the answer. */
  ACK: 0x2,
  /** Half-close: the sender will send no more data on the stream. */
  FIN: 0x4,
  /** Abortive close of the stream in both directions. */
  RST: 0x8,
} as const;

export const GoAwayCode = {
  /** The sender is shutting down cleanly; open streams finish. */
  Normal: 0,
  /** The sender saw a protocol violation. */
  ProtocolError: 1,
  /** The sender hit an internal failure (e.g. keepalive timeout). */
  InternalError: 2,
} as const;
export type GoAwayCode = (typeof GoAwayCode)[keyof typeof GoAwayCode];

/** Every stream starts with this receive window on both sides (spec); larger windows are granted by WindowUpdate. */
export const INITIAL_STREAM_WINDOW_BYTES = 256 * 1024;

/** Largest Data frame this implementation sends: small enough to interleave streams fairly. */
export const SEND_FRAME_BYTES = 64 * 1024;

/** Largest stream id (32 bits). */
export const MAX_STREAM_ID = 0xffff_ffff;
