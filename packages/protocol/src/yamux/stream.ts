import { Duplex } from 'node:stream';
import { Flag, FrameType, INITIAL_STREAM_WINDOW_BYTES, SEND_FRAME_BYTES } from './constants.js';
import { TunnelError } from '../errors.js';
import type { FrameHeader } from './frame.js';

/** What a stream needs from its session; implemented by YamuxSession. */
export interface StreamHost {
  readonly targetWindowLimitBytes: number;
  /** Streams in the session's table: they share targetWindowLimitBytes. */
  readonly openStreamCount: number;
  /** Writes a frame; returns false when the transport is over its high-water mark. */
  sendFrame(type: FrameType, flags: number, streamId: number, length: number, payload?: Buffer): boolean;
  /** Calls `cb` once the transport has drained (at once if it needs no drain). */
  whenDrained(cb: () => void): void;
  /** The stream has left the table: both sides closed, or reset. */
  streamGone(stream: YamuxStream): void;
  blockedChanged(delta: number): void;
  /** This stream's received bytes held in memory grew (or shrank) by `delta` (the session's budget). */
  bufferedChanged(delta: number): void;
  countOut(bytes: number): void;
  rttMs(): number | undefined;
  now(): number;
}

/**
 * Received pieces held while the consumer is not taking them: a piece shorter than this, or one
 * that would keep alive a read buffer more than twice its size, is copied into a merge slab.
 * Without it, 1-byte Data frames cost a Buffer object (~100 bytes) each while the window counts
 * one byte, and a small piece pins its whole TLS record.
 */
const MERGE_BELOW_BYTES = 4 * 1024;
const MIN_SLAB_BYTES = 256;
const MAX_SLAB_BYTES = 16 * 1024;
/** What a held piece costs beyond its bytes (the Buffer object), for the session's budget. */
const HELD_PIECE_OVERHEAD_BYTES = 128;

const StreamState = {
  Open: 0,
  /** Removed from the session table: both FINs exchanged, or reset, or the session died. */
  Gone: 1,
} as const;

/**
 * One yamux stream as a Node Duplex. Flow control: `recvWindow` is what the peer may still
 * send; it is replenished only as the consumer drains the readable buffer, so a reader that
 * stops makes its sender's writes wait and memory stays within one window.
 */
export class YamuxStream extends Duplex {
  readonly id: number;
  private readonly host: StreamHost;
  private state: (typeof StreamState)[keyof typeof StreamState] = StreamState.Open;
  /** Flags still owed to the peer on our next frame (SYN for outbound, ACK for inbound). */
  private pendingOpenFlag: number;
  private accepted: boolean;
  private delivered: boolean;
  private sendWindow = INITIAL_STREAM_WINDOW_BYTES;
  private recvWindow = INITIAL_STREAM_WINDOW_BYTES;
  /** The receive window we aim to keep open; grows with measured RTT (auto-tuning). */
  private targetWindow: number;
  private readonly initialWindowBytes: number;
  private epochStartMs: number;
  private localFin = false;
  private remoteFin = false;
  private blocked = false;
  private pendingChunk: Buffer | undefined;
  private pendingOffset = 0;
  private pendingCb: ((err?: Error | null) => void) | undefined;
  /**
   * Received payload not yet pushed to the Readable, oldest first, then the open merge slab.
   * Invariant: held bytes are pushed before any later piece and before the end (FIN).
   */
  private held: Buffer[] = [];
  private heldBytes = 0;
  private heldMemory = 0;
  private slab: Buffer | undefined;
  private slabFill = 0;
  private endHeld = false;
  /** Memory last reported to the session through bufferedChanged. */
  private accountedBytes = 0;
  /** Why the stream ended abnormally, kept even when nobody listens for 'error'. */
  resetReason: TunnelError | undefined;

  /** @internal Created by YamuxSession only. */
  constructor(host: StreamHost, id: number, outbound: boolean, initialWindowBytes: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024, writableHighWaterMark: 64 * 1024 });
    this.host = host;
    this.id = id;
    this.targetWindow = initialWindowBytes;
    this.initialWindowBytes = initialWindowBytes;
    this.epochStartMs = host.now();
    this.accepted = outbound;
    this.delivered = outbound;
    this.pendingOpenFlag = outbound ? Flag.SYN : Flag.ACK;
    if (outbound) this.sendOpen();
  }

  /** The receive window this stream currently aims to keep open (grows with auto-tuning). */
  get receiveWindowBytes(): number {
    return this.targetWindow;
  }

  /** Bytes this stream holds in memory: unread received data plus data waiting for window. */
  get bufferedBytes(): number {
    const pending = this.pendingChunk ? this.pendingChunk.length - this.pendingOffset : 0;
    return this.unreadBytes + this.writableLength + pending;
  }

  /** Received payload the consumer has not read: in the Readable's buffer or held here. */
  private get unreadBytes(): number {
    return this.readableLength + this.heldBytes + this.slabFill;
  }

  /** @internal Called for every Data frame header; checks the window before any byte is taken. */
  onDataStart(header: FrameHeader): void {
    if (header.length > this.recvWindow) {
      throw new TunnelError(
        'TUN_ERR_WINDOW_EXCEEDED',
        `stream ${this.id}: ${header.length} bytes sent with ${this.recvWindow} bytes of window`,
      );
    }
    if (header.length > 0 && this.remoteFin) {
      throw new TunnelError('TUN_ERR_PROTOCOL', `stream ${this.id}: data after FIN`);
    }
  }

  /** @internal */
  onData(payload: Buffer): void {
    // Window is spent per piece as it arrives, not per header: bytes still in flight must not
    // count as read, or a window update would grant room that is not free.
    this.recvWindow -= payload.length;
    if (this.state === StreamState.Gone) return;
    // Nothing is waiting: the piece goes to the Readable as is (a flowing consumer gets it inside
    // push). Otherwise it waits here, small pieces merged, until the consumer has read what the
    // Readable holds (read) or asks for more (_read).
    if (this.readableLength === 0 && !this.holding) this.push(payload);
    else this.hold(payload);
    this.syncAccounting();
    // A flowing consumer took the bytes at once (nothing is unread): room to grant.
    this.maybeSendWindowUpdate();
  }

  /** @internal WindowUpdate frames and the flags that close a Data frame. */
  onWindowUpdate(header: FrameHeader): void {
    if (header.length > 0) {
      this.sendWindow += header.length;
      if (this.sendWindow > 0xffff_ffff) {
        throw new TunnelError('TUN_ERR_PROTOCOL', `stream ${this.id}: send window overflow`);
      }
      if (this.blocked) this.setBlocked(false);
      if (this.pendingChunk) this.flushPending();
    }
    this.onFlags(header.flags);
  }

  /** @internal */
  onFlags(flags: number): void {
    if (this.state === StreamState.Gone) return;
    if (flags & Flag.RST) {
      this.fail(new TunnelError('TUN_ERR_STREAM_RESET', `stream ${this.id} was reset by the peer`), false);
      return;
    }
    if (flags & Flag.FIN && !this.remoteFin) {
      this.remoteFin = true;
      if (this.holding) this.endHeld = true;
      else this.push(null);
      this.maybeGone();
    }
  }

  /**
   * @internal Ends the stream because of its session or its peer. `sendRst` is false when the
   * peer already knows (it reset us, or the session is gone).
   */
  fail(err: TunnelError, sendRst: boolean): void {
    if (this.state === StreamState.Gone) return;
    this.resetReason = err;
    if (sendRst) this.host.sendFrame(FrameType.WindowUpdate, this.takeOpenFlag() | Flag.RST, this.id, 0);
    this.leave();
    // An 'error' nobody listens for would crash the process: a dead stream must not kill the agent.
    this.destroy(this.listenerCount('error') > 0 ? err : undefined);
  }

  override _read(): void {
    this.accept();
    this.release();
    this.maybeSendWindowUpdate();
  }

  /**
   * Every path that consumes buffered bytes (flowing 'data', pipe, for-await, 'readable' +
   * read()) goes through read(); grant window after it. `_read` alone is not enough: Node calls
   * it before removing the bytes it returns, and not again until the next push, which a
   * sender with no window never makes.
   */
  override read(size?: number): ReturnType<Duplex['read']> {
    const chunk: unknown = super.read(size);
    // The Readable is empty but Node may still wait on an earlier _read (no second call comes
    // until something is pushed): what is held goes now. Its 'data' follows this chunk's.
    if (this.readableLength === 0 && this.holding) this.release();
    if (chunk !== null) {
      this.syncAccounting();
      this.maybeSendWindowUpdate();
    }
    return chunk;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.accept();
    if (this.state === StreamState.Gone) {
      cb(this.resetReason ?? new TunnelError('TUN_ERR_STREAM_RESET', `stream ${this.id} is closed`));
      return;
    }
    // Nothing to send: an empty Data frame would only count against the peer's empty-frame
    // limit (the SYN or ACK has gone out already, or goes with the next frame).
    if (chunk.length === 0) {
      cb();
      return;
    }
    this.pendingChunk = chunk;
    this.pendingOffset = 0;
    this.pendingCb = cb;
    this.flushPending();
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.accept();
    if (this.state === StreamState.Gone) {
      cb(this.resetReason ?? null);
      return;
    }
    this.localFin = true;
    this.host.sendFrame(FrameType.WindowUpdate, this.takeOpenFlag() | Flag.FIN, this.id, 0);
    this.maybeGone();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.state !== StreamState.Gone) {
      // Closed by the application before both sides finished: tell the peer at once.
      this.resetReason = new TunnelError('TUN_ERR_STREAM_RESET', `stream ${this.id} was reset locally`);
      this.host.sendFrame(FrameType.WindowUpdate, this.takeOpenFlag() | Flag.RST, this.id, 0);
      this.leave();
    }
    const pendingCb = this.pendingCb;
    this.pendingChunk = undefined;
    this.pendingCb = undefined;
    this.dropHeld();
    if (pendingCb) pendingCb(err ?? this.resetReason);
    cb(err);
  }

  private get holding(): boolean {
    return this.held.length > 0 || this.slab !== undefined;
  }

  /** Keeps a received piece until the consumer asks for data; small pieces are merged (copied). */
  private hold(piece: Buffer): void {
    if (piece.length >= MERGE_BELOW_BYTES && piece.length * 2 >= piece.buffer.byteLength) {
      this.closeSlab();
      this.held.push(piece);
      this.heldBytes += piece.length;
      this.heldMemory += piece.length + HELD_PIECE_OVERHEAD_BYTES;
      return;
    }
    if (this.slab !== undefined && this.slab.length - this.slabFill < piece.length) this.closeSlab();
    if (this.slab === undefined) {
      // Slabs grow with what is held, so their unused tails stay below the bytes they hold.
      const size = Math.max(piece.length, Math.min(MAX_SLAB_BYTES, Math.max(MIN_SLAB_BYTES, this.heldBytes)));
      this.slab = Buffer.allocUnsafeSlow(size);
      this.slabFill = 0;
      this.heldMemory += size + HELD_PIECE_OVERHEAD_BYTES;
    }
    piece.copy(this.slab, this.slabFill);
    this.slabFill += piece.length;
  }

  private closeSlab(): void {
    if (this.slab === undefined) return;
    this.held.push(this.slab.subarray(0, this.slabFill));
    this.heldBytes += this.slabFill;
    this.slab = undefined;
    this.slabFill = 0;
  }

  /** The consumer wants data: everything held goes to the Readable, then the end if it came. */
  private release(): void {
    if (!this.holding) return;
    this.closeSlab();
    const pieces = this.held;
    this.held = [];
    this.heldBytes = 0;
    this.heldMemory = 0;
    for (const piece of pieces) this.push(piece);
    if (this.endHeld) {
      this.endHeld = false;
      this.push(null);
    }
    this.syncAccounting();
  }

  private dropHeld(): void {
    this.held = [];
    this.heldBytes = 0;
    this.heldMemory = 0;
    this.slab = undefined;
    this.slabFill = 0;
    this.syncAccounting();
  }

  /** Reports the change in received bytes held in memory to the session's budget. */
  private syncAccounting(): void {
    const now = this.destroyed ? 0 : this.readableLength + this.heldMemory;
    const delta = now - this.accountedBytes;
    if (delta === 0) return;
    this.accountedBytes = now;
    this.host.bufferedChanged(delta);
  }

  private sendOpen(): void {
    // A SYN (or ACK) travels on a WindowUpdate that also grants any window above the spec's 256 KiB.
    const delta = Math.max(0, this.targetWindow - this.unreadBytes - this.recvWindow);
    this.recvWindow += delta;
    this.host.sendFrame(FrameType.WindowUpdate, this.takeOpenFlag(), this.id, delta);
  }

  /** @internal The session handed this inbound stream to the application ('stream' event). */
  markDelivered(): void {
    this.delivered = true;
  }

  /**
   * ACK goes out when the application first reads, writes or ends the stream, never for a
   * stream still waiting in the session's backlog (Node reads ahead as soon as data arrives).
   */
  private accept(): void {
    if (this.accepted || !this.delivered) return;
    this.accepted = true;
    if (this.state === StreamState.Open) this.sendOpen();
  }

  private takeOpenFlag(): number {
    const flag = this.pendingOpenFlag;
    this.pendingOpenFlag = 0;
    return flag;
  }

  private flushPending(): void {
    while (this.pendingChunk !== undefined) {
      const chunk = this.pendingChunk;
      const left = chunk.length - this.pendingOffset;
      if (left > 0 && this.sendWindow === 0) {
        this.setBlocked(true);
        return;
      }
      const n = Math.min(left, this.sendWindow, SEND_FRAME_BYTES);
      this.sendWindow -= n;
      const payload = chunk.subarray(this.pendingOffset, this.pendingOffset + n);
      this.pendingOffset += n;
      const writable = this.host.sendFrame(FrameType.Data, this.takeOpenFlag(), this.id, n, payload);
      this.host.countOut(n);
      if (this.pendingOffset < chunk.length) continue;
      const cb = this.pendingCb!;
      this.pendingChunk = undefined;
      this.pendingCb = undefined;
      // Transport backpressure: the write completes only when the transport can take more.
      if (writable) cb();
      else this.host.whenDrained(() => cb());
    }
  }

  private maybeSendWindowUpdate(): void {
    // Before acceptance the ACK frame carries the first grant; until then the peer has 256 KiB.
    if (!this.accepted || this.remoteFin || this.state === StreamState.Gone) return;
    const unread = this.unreadBytes;
    let delta = this.targetWindow - unread - this.recvWindow;
    // Batch updates: one per half window keeps update frames rare without stalling the sender.
    if (delta < this.targetWindow / 2) return;
    const now = this.host.now();
    const rtt = this.host.rttMs();
    // Growth is rich-get-richer: the stream that grows first drains its window fastest and grows
    // again. So the ceiling is shared: maxWindowBytes over the open streams (never below the
    // initial window). When streams join, a grown window is lowered; granted bytes are never
    // taken back, later grants are simply smaller.
    const limit = Math.max(
      this.initialWindowBytes,
      Math.floor(this.host.targetWindowLimitBytes / Math.max(1, this.host.openStreamCount)),
    );
    if (this.targetWindow > limit) {
      this.targetWindow = limit;
      delta = this.targetWindow - unread - this.recvWindow;
      if (delta < this.targetWindow / 2) return;
    }
    if (rtt !== undefined && this.targetWindow < limit && now - this.epochStartMs < 4 * rtt) {
      // The whole window was used in under a few round trips: the window, not the reader, is the limit.
      const grown = Math.min(this.targetWindow * 2, limit);
      delta += grown - this.targetWindow;
      this.targetWindow = grown;
    }
    this.epochStartMs = now;
    this.recvWindow += delta;
    this.host.sendFrame(FrameType.WindowUpdate, this.takeOpenFlag(), this.id, delta);
  }

  private maybeGone(): void {
    if (this.localFin && this.remoteFin) this.leave();
  }

  private leave(): void {
    if (this.state === StreamState.Gone) return;
    this.state = StreamState.Gone;
    if (this.blocked) this.setBlocked(false);
    this.accepted = true;
    this.host.streamGone(this);
  }

  private setBlocked(blocked: boolean): void {
    this.blocked = blocked;
    this.host.blockedChanged(blocked ? 1 : -1);
  }
}
