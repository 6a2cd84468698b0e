import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { Flag, FrameType, GoAwayCode, INITIAL_STREAM_WINDOW_BYTES, MAX_STREAM_ID } from './constants.js';
import { FrameDecoder, type FrameSink } from './decoder.js';
import { TunnelError, type ErrorCode } from '../errors.js';
import { describeHeader, encodeHeader, type FrameHeader } from './frame.js';
import { YamuxStream, type StreamHost } from './stream.js';
import { TokenBucket } from '../token-bucket.js';

/** A liveness ping may take this many round trips (livenessTimeoutMs). */
export const LIVENESS_RTT_FACTOR = 4;
/** ... and never less than this: a lost packet and its retransmits, or a peer's brief stall. */
export const LIVENESS_FLOOR_MS = 2_000;

/** Injectable time, so keepalive tests run in milliseconds without sleeping. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface SessionOptions {
  role: 'client' | 'server';
  /**
   * Inbound streams queued while nobody listens for 'stream' (e.g. before the application has
   * attached its handler); beyond this they are refused with RST.
   */
  acceptBacklog?: number;
  /** Inbound streams open at once; a SYN beyond this is refused with RST. */
  maxInboundStreams?: number;
  /**
   * The session's memory budget: received bytes its streams hold unread (with per-piece
   * overhead). Above it the session stops reading the peer until its consumers catch up; a
   * session that stays above it for keepaliveTimeoutMs is ended with TUN_ERR_LIMIT_EXCEEDED.
   */
  maxBufferedBytes?: number;
  /**
   * Pings the peer may send a second, in bursts of up to four seconds' worth; more end the
   * session with TUN_ERR_LIMIT_EXCEEDED. Infinity: no limit.
   */
  pingsPerSecond?: number;
  /** The same for frames that carry nothing (see countEmpty). */
  emptyFramesPerSecond?: number;
  /** 0 disables keepalive pings. */
  keepaliveIntervalMs?: number;
  /** A ping unanswered this long ends the session with TUN_ERR_TIMEOUT. */
  keepaliveTimeoutMs?: number;
  /** Receive window each new stream starts with (at least the spec's 256 KiB). */
  initialWindowBytes?: number;
  /** Ceiling for window auto-tuning. */
  maxWindowBytes?: number;
  /** Largest Data frame accepted from the peer. */
  maxFrameBytes?: number;
  /** After close() ends the transport, how long to wait for the peer before destroying it. */
  closeTimeoutMs?: number;
  clock?: Clock;
}

export type ResolvedSessionOptions = Readonly<Required<SessionOptions>>;

export const DEFAULT_SESSION_OPTIONS = Object.freeze({
  acceptBacklog: 256,
  maxInboundStreams: 16_384,
  maxBufferedBytes: 64 * 1024 * 1024,
  pingsPerSecond: 64,
  emptyFramesPerSecond: 4096,
  keepaliveIntervalMs: 30_000,
  keepaliveTimeoutMs: 10_000,
  initialWindowBytes: INITIAL_STREAM_WINDOW_BYTES,
  maxWindowBytes: 16 * 1024 * 1024,
  maxFrameBytes: 16 * 1024 * 1024,
  closeTimeoutMs: 5_000,
});

export function resolveSessionOptions(options: SessionOptions): ResolvedSessionOptions {
  const o: Required<SessionOptions> = {
    ...DEFAULT_SESSION_OPTIONS,
    clock: systemClock,
    ...stripUndefined(options),
    role: options.role,
  };
  const problems: string[] = [];
  if (o.role !== 'client' && o.role !== 'server') problems.push(`role must be 'client' or 'server'`);
  if (!(o.initialWindowBytes >= INITIAL_STREAM_WINDOW_BYTES)) {
    problems.push(`initialWindowBytes must be at least ${INITIAL_STREAM_WINDOW_BYTES}`);
  }
  if (!(o.maxWindowBytes >= o.initialWindowBytes) || o.maxWindowBytes > 0x7fff_ffff) {
    problems.push('maxWindowBytes must be between initialWindowBytes and 2^31-1');
  }
  if (!(o.maxFrameBytes >= 1)) problems.push('maxFrameBytes must be positive');
  if (!(o.acceptBacklog >= 1)) problems.push('acceptBacklog must be positive');
  if (!(o.maxInboundStreams >= 0)) problems.push('maxInboundStreams must be >= 0');
  if (!(o.maxBufferedBytes >= o.initialWindowBytes)) {
    problems.push('maxBufferedBytes must be at least initialWindowBytes');
  }
  if (!(o.keepaliveIntervalMs >= 0)) problems.push('keepaliveIntervalMs must be >= 0');
  if (!(o.pingsPerSecond > 0) || !(o.emptyFramesPerSecond > 0)) {
    problems.push('pingsPerSecond and emptyFramesPerSecond must be positive');
  }
  if (!(o.keepaliveTimeoutMs > 0)) problems.push('keepaliveTimeoutMs must be positive');
  if (problems.length > 0) {
    throw new TunnelError('TUN_ERR_CONFIG', `invalid session options: ${problems.join('; ')}`, {
      details: { problems },
    });
  }
  return Object.freeze(o);
}

/** The error a peer over a limit ends its session with; `details.limit` names the limit. */
function limitExceeded(limit: string, message: string): TunnelError {
  return new TunnelError('TUN_ERR_LIMIT_EXCEEDED', message, { details: { limit } });
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export interface SessionStats {
  openStreams: number;
  bytesIn: number;
  bytesOut: number;
  /** Streams whose writer waits for the peer's window. */
  blockedStreams: number;
  /** Stream-seconds spent so, since the session began (two streams blocked 1 s each: 2). */
  blockedSeconds: number;
  /** Bytes held in memory: transport write queue plus every stream's unread and unsent data. */
  bufferedBytes: number;
  rttMs: number | undefined;
  /** We stopped reading the peer: it does not read our replies, or our consumers are behind. */
  readPaused: boolean;
}

interface PendingPing {
  sentAt: number;
  resolve: (rttMs: number) => void;
  reject: (err: TunnelError) => void;
  timer: unknown;
}

/**
 * Frames we send only because the peer asked (ping answers, RSTs refusing its SYNs) that the
 * transport has not taken yet. A peer that keeps asking without reading the answers is not
 * read until they drain: its requests cannot grow our write buffer. Legitimate peers have a
 * handful outstanding at most.
 */
export const MAX_UNSENT_REPLIES = 1024;

/** Why a session stopped reading its peer ('pause' event, `details.limit` of the error that may follow). */
export type ReadLimit = 'unsentReplies' | 'maxBufferedBytes';

const PROTOCOL_CODES: ReadonlySet<ErrorCode> = new Set([
  'TUN_ERR_BAD_VERSION',
  'TUN_ERR_BAD_FRAME_TYPE',
  'TUN_ERR_BAD_FLAGS',
  'TUN_ERR_FRAME_TOO_LARGE',
  'TUN_ERR_WINDOW_EXCEEDED',
  'TUN_ERR_BAD_STREAM_ID',
  'TUN_ERR_PROTOCOL',
]);

/**
 * A yamux session over any byte Duplex. Events: 'stream' (inbound YamuxStream), 'goaway' (code),
 * 'pause' (limit: ReadLimit) when it stops reading a peer over a limit, 'close' (err?:
 * TunnelError) once, and 'error' (err) only when someone listens for it: a broken peer must
 * never crash the process.
 */
export class YamuxSession extends EventEmitter implements StreamHost, FrameSink {
  readonly options: ResolvedSessionOptions;
  readonly targetWindowLimitBytes: number;
  private readonly transport: Duplex;
  private readonly decoder: FrameDecoder;
  private readonly clock: Clock;
  private readonly streams = new Map<number, YamuxStream>();
  private nextStreamId: number;
  private lastInboundId = 0;
  /** Inbound streams waiting for a 'stream' listener, oldest first. */
  private backlog: YamuxStream[] = [];
  private localGoAway = false;
  private remoteGoAway = false;
  private destroyed = false;
  private closedEmitted = false;
  private closePromise: Promise<void> | undefined;
  private resolveClosed: (() => void) | undefined;
  private corked = false;
  private drainWaiters: Array<() => void> = [];
  private nextPingId = 1;
  private readonly pings = new Map<number, PendingPing>();
  private keepaliveTimer: unknown;
  private livenessCheck: Promise<boolean> | undefined;
  private lastRttMs: number | undefined;
  private bytesIn = 0;
  private bytesOut = 0;
  private blocked = 0;
  private blockedMs = 0;
  private blockedSince = 0;
  private failure: TunnelError | undefined;
  private inboundOpen = 0;
  /** Reply frames written to the transport whose write callback has not run yet. */
  private unsentReplies = 0;
  /** Received bytes held by streams (bufferedChanged), against maxBufferedBytes. */
  private heldBytes = 0;
  /** Why we stopped reading the peer, while we do. */
  private readPause: ReadLimit | undefined;
  private stallTimer: unknown;
  private readonly pingBucket: TokenBucket;
  private readonly emptyBucket: TokenBucket;

  constructor(transport: Duplex, options: SessionOptions) {
    super();
    this.options = resolveSessionOptions(options);
    this.clock = this.options.clock;
    this.targetWindowLimitBytes = this.options.maxWindowBytes;
    this.transport = transport;
    this.nextStreamId = this.options.role === 'client' ? 1 : 2;
    this.decoder = new FrameDecoder(this, this.options.maxFrameBytes);
    const now = (): number => this.clock.now();
    this.pingBucket = new TokenBucket(this.options.pingsPerSecond, 4 * this.options.pingsPerSecond, now);
    this.emptyBucket = new TokenBucket(
      this.options.emptyFramesPerSecond,
      4 * this.options.emptyFramesPerSecond,
      now,
    );
    transport.on('data', this.onTransportData);
    transport.on('end', this.onTransportEnd);
    transport.on('error', this.onTransportError);
    transport.on('close', this.onTransportClose);
    transport.on('drain', this.onTransportDrain);
    this.on('newListener', this.onNewListener);
    if (this.options.keepaliveIntervalMs > 0) {
      // One early ping measures the RTT that window auto-tuning needs; its failure is harmless.
      this.ping().catch(() => undefined);
      this.scheduleKeepalive();
    }
  }

  /** Opens a stream at once; it may be written before the peer's ACK arrives. */
  open(): YamuxStream {
    if (this.destroyed || this.localGoAway || this.remoteGoAway) {
      throw new TunnelError('TUN_ERR_SESSION_CLOSED', 'session is closing or closed; cannot open a stream');
    }
    const id = this.nextStreamId;
    if (id > MAX_STREAM_ID) {
      throw new TunnelError('TUN_ERR_STREAMS_EXHAUSTED', 'no stream ids left on this session');
    }
    this.nextStreamId += 2;
    const stream = new YamuxStream(this, id, true, this.options.initialWindowBytes);
    this.streams.set(id, stream);
    return stream;
  }

  /**
   * How long a liveness ping may take: LIVENESS_RTT_FACTOR times the last measured round trip,
   * at least LIVENESS_FLOOR_MS (a lost packet or two and their retransmits fit), at most
   * keepaliveTimeoutMs (also the answer before any RTT is known). A silent peer (a frozen NAT,
   * a dead host that sent no FIN) is noticed in a few seconds, not in keepaliveTimeoutMs.
   */
  livenessTimeoutMs(): number {
    const max = this.options.keepaliveTimeoutMs;
    if (this.lastRttMs === undefined) return max;
    return Math.min(max, Math.max(LIVENESS_FLOOR_MS, Math.ceil(LIVENESS_RTT_FACTOR * this.lastRttMs)));
  }

  /**
   * Pings now with livenessTimeoutMs(); a peer that does not answer in time ends the session
   * (TUN_ERR_TIMEOUT). Resolves whether it answered. Calls while one is out share it.
   */
  checkLiveness(): Promise<boolean> {
    this.livenessCheck ??= this.ping(this.livenessTimeoutMs())
      .then(
        () => true,
        (err: TunnelError) => {
          if (err.code === 'TUN_ERR_TIMEOUT') this.destroy(err);
          return false;
        },
      )
      .finally(() => {
        this.livenessCheck = undefined;
      });
    return this.livenessCheck;
  }

  /** Sends a ping and resolves with the round-trip time in ms. */
  ping(timeoutMs = this.options.keepaliveTimeoutMs): Promise<number> {
    if (this.destroyed) {
      return Promise.reject(new TunnelError('TUN_ERR_SESSION_CLOSED', 'session is closed'));
    }
    const id = this.nextPingId;
    this.nextPingId = (this.nextPingId % MAX_STREAM_ID) + 1;
    return new Promise<number>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.pings.delete(id);
        reject(new TunnelError('TUN_ERR_TIMEOUT', `no ping answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(id, { sentAt: this.clock.now(), resolve, reject, timer });
      this.sendFrame(FrameType.Ping, Flag.SYN, 0, id);
    });
  }

  get stats(): SessionStats {
    this.accrueBlocked();
    let buffered = this.transport.writableLength;
    for (const s of this.streams.values()) buffered += s.bufferedBytes;
    return {
      openStreams: this.streams.size,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      blockedStreams: this.blocked,
      blockedSeconds: this.blockedMs / 1000,
      bufferedBytes: buffered,
      rttMs: this.lastRttMs,
      readPaused: this.readPause !== undefined,
    };
  }

  get openStreamCount(): number {
    return this.streams.size;
  }

  get isClosed(): boolean {
    return this.destroyed;
  }

  /** Why the session was destroyed, once it was (undefined while open, or after a clean close). */
  get failureReason(): TunnelError | undefined {
    return this.failure;
  }

  /** True once either side sent GoAway: no new streams. */
  get isGoingAway(): boolean {
    return this.localGoAway || this.remoteGoAway;
  }

  /**
   * Graceful: sends GoAway(normal), refuses new streams, lets open streams finish, then ends
   * the transport. Idempotent; resolves when the transport has closed.
   */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    this.closePromise = new Promise<void>((resolve) => {
      this.resolveClosed = resolve;
    });
    if (this.destroyed) {
      this.resolveClosed?.();
      return this.closePromise;
    }
    this.sendGoAway(GoAwayCode.Normal);
    this.maybeFinishClose();
    return this.closePromise;
  }

  /** Immediate: every stream fails with `err` (or TUN_ERR_SESSION_CLOSED) and the transport is destroyed. */
  destroy(err?: TunnelError): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.failure = err;
    this.clock.clearTimeout(this.keepaliveTimer);
    this.clock.clearTimeout(this.stallTimer);
    const reason = err ?? new TunnelError('TUN_ERR_SESSION_CLOSED', 'session was closed');
    for (const ping of this.pings.values()) {
      this.clock.clearTimeout(ping.timer);
      ping.reject(reason);
    }
    this.pings.clear();
    for (const stream of [...this.streams.values()]) stream.fail(reason, false);
    this.streams.clear();
    this.transport.off('data', this.onTransportData);
    if (err && !this.localGoAway && !this.transport.writableEnded && !this.transport.destroyed) {
      // Tell the peer why before hanging up; the frame is flushed by end(), then the socket goes.
      const code = PROTOCOL_CODES.has(err.code) ? GoAwayCode.ProtocolError : GoAwayCode.InternalError;
      this.localGoAway = true;
      this.transport.end(encodeHeader(FrameType.GoAway, 0, 0, code), () => this.transport.destroy());
      this.clock.setTimeout(() => this.transport.destroy(), 1_000);
    } else {
      this.transport.destroy();
    }
    if (err && this.listenerCount('error') > 0) this.emit('error', err);
    if (this.transport.destroyed && this.transport.closed) this.emitClose();
  }

  // ---- StreamHost ----

  sendFrame(type: FrameType, flags: number, streamId: number, length: number, payload?: Buffer): boolean {
    if (this.destroyed || this.transport.writableEnded) return false;
    this.corkUntilCheck();
    this.transport.write(encodeHeader(type, flags, streamId, length));
    return payload === undefined ? !this.transport.writableNeedDrain : this.transport.write(payload);
  }

  private corkUntilCheck(): void {
    if (!this.corked) {
      // Frames written until the event loop's check phase go out in one writev (one WebSocket
      // message, one TLS record, one syscall): every stream's data read in this loop turn, not
      // just this tick's. It also keeps acknowledgements and replies behind a forwarder's
      // direct socket writes made in the same turn (agent: a ClientHello reaches its target
      // before the stream's ACK and reply leave), and costs at most the rest of the I/O phase.
      this.corked = true;
      this.transport.cork();
      setImmediate(this.uncork);
    }
  }

  whenDrained(cb: () => void): void {
    if (!this.transport.writableNeedDrain || this.destroyed) cb();
    else this.drainWaiters.push(cb);
  }

  streamGone(stream: YamuxStream): void {
    if (this.streams.get(stream.id) === stream) {
      this.streams.delete(stream.id);
      if (stream.id % 2 === this.inboundParity) this.inboundOpen--;
    }
    // A queued stream the peer reset frees its backlog slot.
    if (this.backlog.length > 0) this.backlog = this.backlog.filter((s) => s !== stream);
    this.maybeFinishClose();
  }

  blockedChanged(delta: number): void {
    this.accrueBlocked();
    this.blocked += delta;
  }

  /** Adds the blocked stream-time since the last change (the count was constant meanwhile). */
  private accrueBlocked(): void {
    const now = this.clock.now();
    this.blockedMs += this.blocked * (now - this.blockedSince);
    this.blockedSince = now;
  }

  /** The receive window each open stream aims to keep open now (auto-tuning grows them). */
  receiveWindows(): number[] {
    return [...this.streams.values()].map((s) => s.receiveWindowBytes);
  }

  bufferedChanged(delta: number): void {
    this.heldBytes += delta;
    if (delta < 0 && this.readPause !== undefined) this.maybeResumeReading();
  }

  countOut(bytes: number): void {
    this.bytesOut += bytes;
  }

  rttMs(): number | undefined {
    return this.lastRttMs;
  }

  now(): number {
    return this.clock.now();
  }

  // ---- FrameSink ----

  onDataStart(header: FrameHeader): void {
    const stream = this.streamFor(header);
    if (stream === undefined || (header.length === 0 && header.flags === 0)) this.countEmpty();
    stream?.onDataStart(header);
  }

  onData(header: FrameHeader, payload: Buffer): void {
    this.bytesIn += payload.length;
    this.streams.get(header.streamId)?.onData(payload);
  }

  onDataEnd(header: FrameHeader): void {
    this.streams.get(header.streamId)?.onFlags(header.flags);
  }

  onControl(header: FrameHeader): void {
    switch (header.type) {
      case FrameType.WindowUpdate: {
        const stream = this.streamFor(header);
        if (stream === undefined || (header.length === 0 && header.flags === 0)) this.countEmpty();
        stream?.onWindowUpdate(header);
        return;
      }
      case FrameType.Ping:
        this.onPing(header);
        return;
      case FrameType.GoAway:
        this.onGoAway(header);
        return;
    }
  }

  // ---- internals ----

  /**
   * The stream a Data/WindowUpdate frame belongs to, creating it on SYN. Returns undefined for
   * frames of streams already closed (late frames are legal and dropped); throws on ids never opened.
   */
  private streamFor(header: FrameHeader): YamuxStream | undefined {
    const id = header.streamId;
    if (id === 0) throw this.badStreamId(header, 'stream id 0 on a stream frame');
    const existing = this.streams.get(id);
    const inboundParity = this.inboundParity;
    if (header.flags & Flag.SYN) {
      if (existing || id % 2 !== inboundParity || id <= this.lastInboundId) {
        throw this.badStreamId(header, existing ? 'SYN for an open stream' : 'SYN with a wrong or reused id');
      }
      this.lastInboundId = id;
      return this.acceptInbound(header);
    }
    if (existing) return existing;
    const seen = id % 2 === inboundParity ? id <= this.lastInboundId : id < this.nextStreamId;
    if (!seen) throw this.badStreamId(header, 'frame for a stream that was never opened');
    return undefined;
  }

  /** Stream ids the peer opens are odd on the server, even on the client. */
  private get inboundParity(): number {
    return this.options.role === 'client' ? 0 : 1;
  }

  private acceptInbound(header: FrameHeader): YamuxStream | undefined {
    const listening = this.listenerCount('stream') > 0;
    if (
      this.localGoAway ||
      this.inboundOpen >= this.options.maxInboundStreams ||
      (!listening && this.backlog.length >= this.options.acceptBacklog)
    ) {
      this.sendReply(FrameType.WindowUpdate, Flag.RST, header.streamId, 0);
      return undefined;
    }
    const stream = new YamuxStream(this, header.streamId, false, this.options.initialWindowBytes);
    this.streams.set(header.streamId, stream);
    this.inboundOpen++;
    if (listening) this.deliver(stream);
    else this.backlog.push(stream);
    return stream;
  }

  /** Hands queued inbound streams to the first 'stream' listener, in arrival order. */
  private readonly onNewListener = (event: string | symbol): void => {
    if (event !== 'stream' || this.backlog.length === 0) return;
    process.nextTick(() => {
      const queued = this.backlog;
      this.backlog = [];
      for (const stream of queued) {
        if (!stream.destroyed) this.deliver(stream);
      }
    });
  };

  private deliver(stream: YamuxStream): void {
    stream.markDelivered();
    this.emit('stream', stream);
  }

  /**
   * A frame that carries nothing and changes nothing (empty Data or WindowUpdate, a frame for a
   * stream already gone, a second GoAway): legal now and then, a CPU flood when sent in bulk.
   */
  private countEmpty(): void {
    if (!this.emptyBucket.take()) {
      throw limitExceeded(
        'emptyFramesPerSecond',
        `the peer sent more than ${this.options.emptyFramesPerSecond} frames a second that carry nothing`,
      );
    }
  }

  private badStreamId(header: FrameHeader, why: string): TunnelError {
    return new TunnelError('TUN_ERR_BAD_STREAM_ID', `${why}: ${describeHeader(header)}`);
  }

  private onPing(header: FrameHeader): void {
    if (header.streamId !== 0) throw this.badStreamId(header, 'ping on a stream');
    if (header.flags & Flag.SYN) {
      if (!this.pingBucket.take()) {
        throw limitExceeded(
          'pingsPerSecond',
          `the peer sent more than ${this.options.pingsPerSecond} pings a second`,
        );
      }
      this.sendReply(FrameType.Ping, Flag.ACK, 0, header.length);
      return;
    }
    if (!(header.flags & Flag.ACK)) {
      throw new TunnelError('TUN_ERR_BAD_FLAGS', `ping without SYN or ACK: ${describeHeader(header)}`);
    }
    const ping = this.pings.get(header.length);
    if (!ping) {
      this.countEmpty(); // an answer after its timeout: harmless, unless the peer makes a habit of it
      return;
    }
    this.pings.delete(header.length);
    this.clock.clearTimeout(ping.timer);
    const rtt = Math.max(0, this.clock.now() - ping.sentAt);
    this.lastRttMs = rtt;
    ping.resolve(rtt);
    this.emit('rtt', rtt);
  }

  private onGoAway(header: FrameHeader): void {
    if (header.streamId !== 0) throw this.badStreamId(header, 'GoAway on a stream');
    if (this.remoteGoAway) this.countEmpty();
    this.remoteGoAway = true;
    this.emit('goaway', header.length);
    if (header.length !== GoAwayCode.Normal) {
      this.localGoAway = true; // the peer is already leaving: no GoAway back
      const what = header.length === GoAwayCode.ProtocolError ? 'a protocol error' : 'an internal error';
      this.destroy(new TunnelError('TUN_ERR_REMOTE_GOAWAY', `peer ended the session with ${what}`));
    }
  }

  private sendGoAway(code: GoAwayCode): void {
    if (this.localGoAway) return;
    this.localGoAway = true;
    this.sendFrame(FrameType.GoAway, 0, 0, code);
  }

  private maybeFinishClose(): void {
    if (!this.closePromise || this.destroyed || this.streams.size > 0) return;
    if (!this.transport.writableEnded) {
      this.transport.end();
      // A peer that never hangs up must not keep us open forever.
      this.clock.setTimeout(() => this.destroy(), this.options.closeTimeoutMs);
    }
  }

  private scheduleKeepalive(): void {
    this.keepaliveTimer = this.clock.setTimeout(() => {
      if (this.destroyed) return;
      void this.checkLiveness().then((alive) => {
        if (alive) this.scheduleKeepalive();
      });
    }, this.options.keepaliveIntervalMs);
  }

  private emitClose(): void {
    if (this.closedEmitted) return;
    this.closedEmitted = true;
    this.destroyed = true;
    this.clock.clearTimeout(this.keepaliveTimer);
    this.resolveClosed?.();
    this.emit('close', this.failure);
  }

  /**
   * A frame sent only because the peer asked for it. Counted until the transport has taken it
   * (its write callback), so a peer that asks without reading cannot grow our write buffer.
   */
  private sendReply(type: FrameType, flags: number, streamId: number, length: number): void {
    if (this.destroyed || this.transport.writableEnded) return;
    this.corkUntilCheck();
    this.unsentReplies++;
    this.transport.write(encodeHeader(type, flags, streamId, length), this.onReplySent);
  }

  private readonly onReplySent = (): void => {
    this.unsentReplies--;
    if (this.readPause !== undefined) this.maybeResumeReading();
  };

  /** After each transport read: stop reading a peer that is over a limit (see SessionOptions). */
  private checkReadLimits(): void {
    if (this.readPause !== undefined || this.destroyed) return;
    const reason: ReadLimit | undefined =
      this.unsentReplies > MAX_UNSENT_REPLIES
        ? 'unsentReplies'
        : this.heldBytes > this.options.maxBufferedBytes
          ? 'maxBufferedBytes'
          : undefined;
    if (reason === undefined) return;
    this.readPause = reason;
    this.transport.pause();
    this.clock.clearTimeout(this.stallTimer);
    this.stallTimer = this.clock.setTimeout(this.onStall, this.options.keepaliveTimeoutMs);
    this.emit('pause', reason);
  }

  private maybeResumeReading(): void {
    // Hysteresis: resume well below the limits, so a peer at the edge does not flap.
    if (this.unsentReplies > MAX_UNSENT_REPLIES / 2) return;
    if (this.heldBytes > (this.options.maxBufferedBytes * 3) / 4) return;
    this.readPause = undefined;
    this.clock.clearTimeout(this.stallTimer);
    if (!this.destroyed) this.transport.resume();
  }

  private readonly onStall = (): void => {
    const reason = this.readPause;
    if (reason === undefined || this.destroyed) return;
    const what =
      reason === 'unsentReplies'
        ? `did not read ${MAX_UNSENT_REPLIES} answers to its own requests`
        : `kept more than ${this.options.maxBufferedBytes} received bytes unread on this side`;
    this.destroy(limitExceeded(reason, `the peer ${what} for ${this.options.keepaliveTimeoutMs} ms`));
  };

  private readonly uncork = (): void => {
    this.corked = false;
    this.transport.uncork();
  };

  private readonly onTransportData = (chunk: Buffer): void => {
    try {
      this.decoder.push(chunk);
      this.checkReadLimits();
    } catch (err) {
      this.destroy(
        err instanceof TunnelError
          ? err
          : new TunnelError('TUN_ERR_PROTOCOL', 'decode failed', { cause: err }),
      );
    }
  };

  private readonly onTransportEnd = (): void => {
    if (this.destroyed) return;
    const clean = this.remoteGoAway && this.streams.size === 0 && this.decoder.atBoundary;
    if (clean || (this.closePromise && this.streams.size === 0)) {
      // The peer said goodbye (or answered ours) and nothing is in flight: a clean close.
      if (!this.transport.writableEnded) this.transport.end();
      return;
    }
    this.destroy(new TunnelError('TUN_ERR_TRANSPORT_CLOSED', 'the connection ended without GoAway'));
  };

  private readonly onTransportError = (err: Error): void => {
    if (this.destroyed) return;
    // The transport's own verdict on a misbehaving peer (a malformed WebSocket frame, a ping
    // flood) keeps its code; anything else is the connection failing.
    const peerFault =
      err instanceof TunnelError && (PROTOCOL_CODES.has(err.code) || err.code === 'TUN_ERR_LIMIT_EXCEEDED');
    this.destroy(
      peerFault
        ? err
        : new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `transport failed: ${err.message}`, { cause: err }),
    );
  };

  private readonly onTransportClose = (): void => {
    if (!this.destroyed) {
      const clean = (this.remoteGoAway || this.closePromise !== undefined) && this.streams.size === 0;
      if (!clean) {
        this.destroy(new TunnelError('TUN_ERR_TRANSPORT_CLOSED', 'the connection closed'));
      } else {
        this.destroyed = true;
        this.clock.clearTimeout(this.keepaliveTimer);
      }
    }
    this.runDrainWaiters();
    this.emitClose();
  };

  private readonly onTransportDrain = (): void => {
    this.runDrainWaiters();
  };

  private runDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }
}
