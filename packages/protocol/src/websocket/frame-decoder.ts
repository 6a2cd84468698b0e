import { isUtf8 } from 'node:buffer';
import { TunnelError } from '../errors.js';
import { applyMask } from './mask.js';

/** RFC 6455 §5.2 opcodes. */
export const WsOpcode = {
  Continuation: 0x0,
  Text: 0x1,
  Binary: 0x2,
  Close: 0x8,
  Ping: 0x9,
  Pong: 0xa,
} as const;

/** Close codes we send (RFC 6455 §7.4.1); the payload of our close frames is the code alone. */
export const WsCloseCode = {
  /** A normal closure: our end(), or the answer to a close that carried no code. */
  Normal: 1000,
  /** The peer broke the framing rules (a malformed frame, a close code not allowed on the wire). */
  ProtocolError: 1002,
  /** The peer sent data inconsistent with its type: a close reason that is not UTF-8. */
  InvalidPayload: 1007,
  /** The peer broke a rule of ours (RFC 6455 §7.4.1): pings faster than pingsPerSecond. */
  PolicyViolation: 1008,
} as const;

/** Control frames carry at most this many payload bytes and are never fragmented (RFC 6455 §5.5). */
export const MAX_CONTROL_PAYLOAD_BYTES = 125;

/** Largest payload length accepted: beyond 2^53 a JS number loses integers. */
const MAX_PAYLOAD_HIGH_WORD = 0x1f_ffff;
const MAX_HEADER_BYTES = 14;

export interface WebSocketFrameSink {
  /**
   * Payload bytes of binary messages (first frame and continuations), unmasked, in order, as
   * they arrive: a frame's payload may come in several pieces and is never reassembled here.
   */
  onData(piece: Buffer): void;
  /**
   * A complete control frame (close, ping or pong), unmasked; payload at most 125 bytes, in a
   * buffer of its own that the sink may keep.
   */
  onControl(opcode: number, payload: Buffer): void;
}

/**
 * Streaming RFC 6455 frame parser for a binary-only connection without extensions. Pure: no
 * I/O. Bytes may be split or joined in any way. Masked payloads are unmasked in place, so a
 * chunk handed to `push` belongs to the decoder (socket reads do).
 * Invariant: after `push` throws, the decoder is failed and throws the same error again.
 */
export class WebSocketFrameDecoder {
  // allocUnsafe: small buffers come from Node's shared pool, not an ArrayBuffer per connection;
  // every byte is written before it is read.
  private readonly header = Buffer.allocUnsafe(MAX_HEADER_BYTES);
  private headerFill = 0;
  /** Payload bytes left in the current frame; -1 while reading a header. */
  private payloadLeft = -1;
  private opcode = 0;
  private readonly mask = Buffer.allocUnsafe(4);
  private masked = false;
  /** Position within the frame's payload modulo 4: which mask byte applies next. */
  private maskPhase = 0;
  /** A binary message has begun without FIN: continuation frames may follow. */
  private inMessage = false;
  private control: Buffer | undefined;
  private controlFill = 0;
  private failure: TunnelError | undefined;

  /**
   * @param expectMasked true on the server (RFC 6455 §5.1: every client frame is masked), false
   * on the client (a server must not mask).
   */
  constructor(
    private readonly sink: WebSocketFrameSink,
    private readonly expectMasked: boolean,
  ) {}

  push(chunk: Buffer): void {
    if (this.failure) throw this.failure;
    try {
      this.consume(chunk);
    } catch (err) {
      this.failure =
        err instanceof TunnelError
          ? err
          : new TunnelError('TUN_ERR_PROTOCOL', 'WebSocket frame handler failed', { cause: err });
      throw this.failure;
    }
  }

  /** True when no partial frame is buffered. */
  get atBoundary(): boolean {
    return this.payloadLeft === -1 && this.headerFill === 0;
  }

  private consume(chunk: Buffer): void {
    let offset = 0;
    const end = chunk.length;
    while (offset < end) {
      if (this.payloadLeft === -1) {
        offset = this.readHeader(chunk, offset);
        continue;
      }
      const n = Math.min(this.payloadLeft, end - offset);
      const piece = chunk.subarray(offset, offset + n);
      offset += n;
      this.payloadLeft -= n;
      if (this.masked) {
        applyMask(piece, this.mask, this.maskPhase);
        this.maskPhase = (this.maskPhase + n) & 3;
      }
      if (this.control === undefined) {
        this.sink.onData(piece);
      } else {
        piece.copy(this.control, this.controlFill);
        this.controlFill += n;
      }
      if (this.payloadLeft === 0) this.finishFrame();
    }
  }

  /** Reads header bytes from `chunk` at `offset`; returns the offset after what it took. */
  private readHeader(chunk: Buffer, offset: number): number {
    const available = chunk.length - offset;
    let buf: Buffer;
    let at: number;
    let take = 0;
    if (this.headerFill === 0 && available >= MAX_HEADER_BYTES) {
      // Fast path: the longest possible header is in this chunk.
      buf = chunk;
      at = offset;
    } else {
      take = Math.min(MAX_HEADER_BYTES - this.headerFill, available);
      chunk.copy(this.header, this.headerFill, offset, offset + take);
      this.headerFill += take;
      buf = this.header;
      at = 0;
    }
    const filled = buf === chunk ? available : this.headerFill;
    if (filled < 2) return chunk.length;
    const b0 = buf[at]!;
    const b1 = buf[at + 1]!;
    const lengthCode = b1 & 0x7f;
    const masked = (b1 & 0x80) !== 0;
    const headerBytes = 2 + (lengthCode === 126 ? 2 : lengthCode === 127 ? 8 : 0) + (masked ? 4 : 0);
    if (filled < headerBytes) return chunk.length;
    this.checkFirstBytes(b0, masked);
    let length = lengthCode;
    let p = at + 2;
    if (lengthCode === 126) {
      length = buf.readUInt16BE(p);
      p += 2;
    } else if (lengthCode === 127) {
      const high = buf.readUInt32BE(p);
      if (high > MAX_PAYLOAD_HIGH_WORD) throw frameError('a frame length above 2^53 bytes');
      length = high * 0x1_0000_0000 + buf.readUInt32BE(p + 4);
      p += 8;
    }
    if (masked) buf.copy(this.mask, 0, p, p + 4);
    // Where this header ends in `chunk`: bytes copied into `header` beyond it belong to the payload.
    const consumed = buf === chunk ? headerBytes : headerBytes - (this.headerFill - take);
    this.headerFill = 0;
    this.startFrame(b0, masked, length);
    return offset + consumed;
  }

  private checkFirstBytes(b0: number, masked: boolean): void {
    if (b0 & 0x70) throw frameError('RSV bits set without a negotiated extension');
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    if (masked !== this.expectMasked) {
      throw frameError(
        this.expectMasked ? 'an unmasked frame from a client' : 'a masked frame from a server',
      );
    }
    switch (opcode) {
      case WsOpcode.Binary:
        if (this.inMessage) throw frameError('a new binary message inside a fragmented one');
        this.inMessage = !fin;
        return;
      case WsOpcode.Continuation:
        if (!this.inMessage) throw frameError('a continuation frame without a message to continue');
        this.inMessage = !fin;
        return;
      case WsOpcode.Text:
        throw frameError('a text message; only binary is allowed');
      case WsOpcode.Close:
      case WsOpcode.Ping:
      case WsOpcode.Pong:
        if (!fin) throw frameError('a fragmented control frame');
        return;
      default:
        throw frameError(`unknown opcode ${opcode}`);
    }
  }

  private startFrame(b0: number, masked: boolean, length: number): void {
    this.opcode = b0 & 0x0f;
    this.masked = masked;
    this.maskPhase = 0;
    this.payloadLeft = length;
    if (this.opcode >= WsOpcode.Close) {
      if (length > MAX_CONTROL_PAYLOAD_BYTES) throw frameError(`a control frame of ${length} bytes`);
      this.control = Buffer.alloc(length);
      this.controlFill = 0;
    }
    if (length === 0) this.finishFrame();
  }

  private finishFrame(): void {
    this.payloadLeft = -1;
    const control = this.control;
    if (control === undefined) return;
    this.control = undefined;
    this.sink.onControl(this.opcode, control);
  }
}

/** `code`: the close code the peer sent, when the frame at fault is a close. */
function frameError(what: string, code?: number): TunnelError {
  return new TunnelError('TUN_ERR_PROTOCOL', `malformed WebSocket frame: ${what}`, {
    details: code === undefined ? { websocket: what } : { websocket: what, code },
  });
}

/** What a received close frame says, checked against RFC 6455 §5.5.1 and §7.4. */
export type ReceivedClose =
  | {
      valid: true;
      /** The peer's code; undefined when the frame carried none (an empty payload). */
      code: number | undefined;
      reason: string;
      /** The code to answer with: the peer's, or 1000 for a close without one. */
      reply: number;
    }
  | {
      valid: false;
      /** The code to fail the connection with: 1002, or 1007 for a reason that is not UTF-8. */
      reply: number;
      error: TunnelError;
    };

/**
 * True for a code a peer may put on the wire: 1000–1003 and 1007–1011 (RFC 6455 §7.4.1),
 * 1012–1014 (IANA-registered since), and 3000–4999 (libraries, frameworks, applications).
 * 1004 and 1016–2999 are unassigned or reserved for this protocol; 1005, 1006 and 1015 exist only
 * to be reported locally and must never be sent (§7.4.1); anything else is outside §7.4.2.
 */
export function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/**
 * Checks a received close frame's payload: empty, or a valid code and a UTF-8 reason (§5.5.1:
 * a code of 2 bytes first; §8.1: an invalid UTF-8 reason fails the connection, as ws does).
 */
export function parseClosePayload(payload: Buffer): ReceivedClose {
  if (payload.length === 0) {
    return { valid: true, code: undefined, reason: '', reply: WsCloseCode.Normal };
  }
  if (payload.length === 1) {
    return { valid: false, reply: WsCloseCode.ProtocolError, error: frameError('a close payload of 1 byte') };
  }
  const code = payload.readUInt16BE(0);
  if (!isValidCloseCode(code)) {
    return {
      valid: false,
      reply: WsCloseCode.ProtocolError,
      error: frameError(`close code ${code}, which no endpoint may send`, code),
    };
  }
  const reason = payload.subarray(2);
  if (!isUtf8(reason)) {
    return {
      valid: false,
      reply: WsCloseCode.InvalidPayload,
      error: frameError('a close reason that is not valid UTF-8', code),
    };
  }
  return { valid: true, code, reason: reason.toString('utf8'), reply: code };
}
