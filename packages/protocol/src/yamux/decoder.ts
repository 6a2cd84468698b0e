import { FrameType, HEADER_BYTES, PROTOCOL_VERSION } from './constants.js';
import { TunnelError } from '../errors.js';
import { decodeHeader, describeHeader, type FrameHeader } from './frame.js';

/**
 * What the decoder reports. A Data frame arrives as start → zero or more payload pieces → end,
 * so payload is delivered as it arrives (no reassembly copy) and flags such as FIN are applied
 * only after the payload they follow.
 */
export interface FrameSink {
  onDataStart(header: FrameHeader): void;
  onData(header: FrameHeader, payload: Buffer): void;
  onDataEnd(header: FrameHeader): void;
  /** WindowUpdate, Ping and GoAway frames: header only. */
  onControl(header: FrameHeader): void;
}

/**
 * Turns a byte stream, split or joined in any way, into frames. Pure: no I/O, no timers.
 * Invariant: after `push` throws, the decoder is failed and throws the same error again.
 */
export class FrameDecoder {
  private readonly headerBuf = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  /** The Data frame whose payload is being read, if any. */
  private current: FrameHeader | undefined;
  private payloadLeft = 0;
  private failure: TunnelError | undefined;

  constructor(
    private readonly sink: FrameSink,
    private readonly maxFrameBytes: number,
  ) {}

  push(chunk: Buffer): void {
    if (this.failure) throw this.failure;
    try {
      this.consume(chunk);
    } catch (err) {
      this.failure =
        err instanceof TunnelError
          ? err
          : new TunnelError('TUN_ERR_PROTOCOL', 'frame handler failed', { cause: err });
      throw this.failure;
    }
  }

  /** True when no partial frame is buffered: the byte stream ended on a frame boundary. */
  get atBoundary(): boolean {
    return this.headerFill === 0 && this.current === undefined;
  }

  private consume(chunk: Buffer): void {
    let offset = 0;
    const end = chunk.length;
    while (offset < end) {
      if (this.current !== undefined) {
        const n = Math.min(this.payloadLeft, end - offset);
        const header = this.current;
        this.payloadLeft -= n;
        if (this.payloadLeft === 0) this.current = undefined;
        this.sink.onData(header, chunk.subarray(offset, offset + n));
        offset += n;
        if (this.payloadLeft === 0) this.sink.onDataEnd(header);
        continue;
      }
      let header: FrameHeader;
      if (this.headerFill === 0 && end - offset >= HEADER_BYTES) {
        // Fast path: the whole header is in this chunk.
        header = decodeHeader(chunk, offset);
        offset += HEADER_BYTES;
      } else {
        const n = Math.min(HEADER_BYTES - this.headerFill, end - offset);
        chunk.copy(this.headerBuf, this.headerFill, offset, offset + n);
        this.headerFill += n;
        offset += n;
        if (this.headerFill < HEADER_BYTES) return;
        this.headerFill = 0;
        header = decodeHeader(this.headerBuf);
      }
      this.dispatch(header);
    }
  }

  private dispatch(header: FrameHeader): void {
    if (header.version !== PROTOCOL_VERSION) {
      throw new TunnelError('TUN_ERR_BAD_VERSION', `unsupported yamux version ${header.version}`, {
        details: { frame: describeHeader(header) },
      });
    }
    switch (header.type) {
      case FrameType.Data:
        if (header.length > this.maxFrameBytes) {
          throw new TunnelError(
            'TUN_ERR_FRAME_TOO_LARGE',
            `data frame of ${header.length} bytes exceeds maxFrameBytes ${this.maxFrameBytes}`,
            { details: { frame: describeHeader(header) } },
          );
        }
        this.sink.onDataStart(header);
        if (header.length === 0) {
          this.sink.onDataEnd(header);
        } else {
          this.current = header;
          this.payloadLeft = header.length;
        }
        return;
      case FrameType.WindowUpdate:
      case FrameType.Ping:
      case FrameType.GoAway:
        this.sink.onControl(header);
        return;
      default:
        throw new TunnelError('TUN_ERR_BAD_FRAME_TYPE', `unknown frame type ${header.type}`, {
          details: { frame: describeHeader(header) },
        });
    }
  }
}
