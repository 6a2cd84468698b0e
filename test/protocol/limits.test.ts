/**
 * A session's memory is bounded whatever its peer sends (docs/SECURITY.md): answers to a peer
 * that asks without reading them (pings, SYNs we refuse) stop our reading of it; bytes held for
 * consumers that are behind count against maxBufferedBytes; tiny Data frames cost about their
 * payload, not a Buffer object each. The peer is a raw pipe end writing crafted frames.
 */
import type { Duplex } from 'node:stream';
import fc from 'fast-check';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  Flag,
  FrameType,
  MAX_UNSENT_REPLIES,
  TunnelError,
  YamuxSession,
  encodeHeader,
  type SessionOptions,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { ManualClock } from '../helpers/manual-clock.js';
import { memoryInUseBytes } from '../helpers/memory.js';
import { closeOf } from '../helpers/sessions.js';
import {
  flushIo,
  pipePairForTest,
  pollUntil,
  readAtLeast,
  readToEnd,
  sha256,
  withDeadline,
} from '../helpers/streams.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** What one TCP read hands a session at most (Node reads 64 KiB at a time). */
const READ_BYTES = 64 * KiB;

function dataFrame(streamId: number, flags: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeHeader(FrameType.Data, flags, streamId, payload.length), payload]);
}

/**
 * Pings the session from a raw peer that receives only 12-byte frames (no Data) and resolves once
 * the answer arrives: by then the session has handled every frame written before the ping.
 */
function pingAnswered(peer: Duplex, id: number): Promise<void> {
  const answer = encodeHeader(FrameType.Ping, Flag.ACK, 0, id);
  const chunks: Buffer[] = [];
  let onData: (chunk: Buffer) => void = () => undefined;
  const answered = new Promise<void>((resolve) => {
    onData = (chunk) => {
      chunks.push(chunk);
      const all = Buffer.concat(chunks);
      for (let at = 0; at + 12 <= all.length; at += 12) {
        if (all.subarray(at, at + 12).equals(answer)) resolve();
      }
    };
  });
  peer.on('data', onData);
  peer.write(encodeHeader(FrameType.Ping, Flag.SYN, 0, id));
  return withDeadline(answered, 5_000, `the answer to ping ${id}`).finally(() => peer.off('data', onData));
}

/** `count` frames from `make`, written in reads of at most 64 KiB, as a TCP peer would deliver them. */
function writeInReads(peer: Duplex, count: number, make: (i: number) => Buffer): void {
  let batch: Buffer[] = [];
  let size = 0;
  for (let i = 0; i < count; i++) {
    const frame = make(i);
    if (size + frame.length > READ_BYTES) {
      peer.write(Buffer.concat(batch));
      batch = [];
      size = 0;
    }
    batch.push(frame);
    size += frame.length;
  }
  if (batch.length > 0) peer.write(Buffer.concat(batch));
}

/** A server session on one end of a pipe; the other end is the raw peer. */
function sessionWithRawPeer(options: Partial<SessionOptions> = {}): {
  session: YamuxSession;
  peer: Duplex;
  transport: Duplex;
  clock: ManualClock;
} {
  const { a, b } = pipePairForTest();
  const clock = new ManualClock();
  const session = new YamuxSession(a, {
    keepaliveIntervalMs: 0,
    keepaliveTimeoutMs: 10_000,
    ...options,
    role: 'server',
    clock,
  });
  session.on('error', () => undefined);
  // Writes the session never read fail when it hangs up: that is the point, not an error here.
  b.on('error', () => undefined);
  onTestFinished(() => session.destroy());
  return { session, peer: b, transport: a, clock };
}

describe('a peer that asks without reading the answers', () => {
  it('sends pings and never reads: the session stops reading it, its write buffer stays small, and it is ended after keepaliveTimeoutMs', async () => {
    // No ping rate limit here: this is about answers nobody reads, not about the rate.
    const { session, peer, transport, clock } = sessionWithRawPeer({ pingsPerSecond: Infinity });
    const closed = closeOf(session);
    peer.pause();
    const pings = 200_000; // 2.4 MB of pings, 2.4 MB of answers if all were written
    writeInReads(peer, pings, (i) => encodeHeader(FrameType.Ping, Flag.SYN, 0, i));
    await pollUntil(() => session.stats.readPaused, 5_000);
    await flushIo();
    // At most the limit plus the answers to one read (64 KiB of 12-byte pings) wait to be sent.
    const bound = (MAX_UNSENT_REPLIES + READ_BYTES / 12) * 12;
    expect(transport.writableLength).toBeLessThanOrEqual(bound);
    expect(session.stats.bytesIn).toBe(0); // pings carry no payload; nothing else was read
    expect(peer.writableLength).toBeGreaterThan(pings * 12 - 20 * READ_BYTES); // most are still unread

    // The stall deadline, then the second the GoAway gets before the transport is cut.
    clock.advance(11_000);
    const err = await closed;
    expect(err?.code).toBe('TUN_ERR_LIMIT_EXCEEDED');
    expect(err?.details).toEqual({ limit: 'unsentReplies' });
  });

  it('a peer that reads again is read again: every ping is answered, in order', async () => {
    const { session, peer } = sessionWithRawPeer({ pingsPerSecond: Infinity });
    peer.pause();
    const pings = 50_000;
    writeInReads(peer, pings, (i) => encodeHeader(FrameType.Ping, Flag.SYN, 0, i));
    await pollUntil(() => session.stats.readPaused, 5_000);
    const answers = readAtLeast(peer, pings * 12);
    peer.resume();
    const bytes = await answers;
    expect(bytes.length).toBe(pings * 12);
    for (const i of [0, 1, pings / 2, pings - 1]) {
      expect(bytes.readUInt16BE(i * 12 + 2)).toBe(Flag.ACK);
      expect(bytes.readUInt32BE(i * 12 + 8)).toBe(i);
    }
    expect(session.stats.readPaused).toBe(false);
    expect(session.isClosed).toBe(false);
  });

  it('opens streams beyond maxInboundStreams and never reads: each is refused with RST, and the refusals are bounded like ping answers', async () => {
    const { session, peer, transport } = sessionWithRawPeer({
      maxInboundStreams: 2,
      emptyFramesPerSecond: Infinity, // refused SYNs count as empty frames: not the point here
    });
    const accepted: YamuxStream[] = [];
    session.on('stream', (s: YamuxStream) => accepted.push(s));
    peer.pause();
    const syns = 100_000;
    writeInReads(peer, syns, (i) => encodeHeader(FrameType.WindowUpdate, Flag.SYN, 2 * i + 1, 0));
    await pollUntil(() => session.stats.readPaused, 5_000);
    await flushIo();
    expect(accepted.map((s) => s.id)).toEqual([1, 3]);
    expect(transport.writableLength).toBeLessThanOrEqual((MAX_UNSENT_REPLIES + READ_BYTES / 12) * 12);

    // Once the peer reads, every refusal arrives as an RST for its stream.
    const refusals = syns - 2;
    const answers = readAtLeast(peer, refusals * 12);
    peer.resume();
    const bytes = await answers;
    expect(bytes.readUInt16BE(2) & Flag.RST).toBe(Flag.RST);
    expect(bytes.readUInt32BE(4)).toBe(5);
    expect(bytes.readUInt32BE((refusals - 1) * 12 + 4)).toBe(2 * (syns - 1) + 1);
  });
});

describe('rates of things a peer may do now and then', () => {
  it('answers pingsPerSecond × 4 pings at once and the rate after that; one more ends the session', async () => {
    const { session, peer, clock } = sessionWithRawPeer({ pingsPerSecond: 10 });
    const closed = closeOf(session);
    const answered = readAtLeast(peer, 40 * 12);
    writeInReads(peer, 40, (i) => encodeHeader(FrameType.Ping, Flag.SYN, 0, i));
    await answered;
    clock.advance(1_000); // ten more
    const answeredAgain = readAtLeast(peer, 10 * 12);
    peer.resume(); // the first read paused it
    writeInReads(peer, 10, (i) => encodeHeader(FrameType.Ping, Flag.SYN, 0, 100 + i));
    await withDeadline(answeredAgain, 5_000, 'the ten answers'); // the ten were handled
    expect(session.isClosed).toBe(false);
    peer.write(encodeHeader(FrameType.Ping, Flag.SYN, 0, 999));
    const err = await closed;
    expect(err?.code).toBe('TUN_ERR_LIMIT_EXCEEDED');
    expect(err?.details).toEqual({ limit: 'pingsPerSecond' });
  });

  it.each([
    ['empty WindowUpdates on an open stream', () => encodeHeader(FrameType.WindowUpdate, 0, 1, 0)],
    ['empty Data frames on an open stream', () => encodeHeader(FrameType.Data, 0, 1, 0)],
    ['WindowUpdates for a stream that is gone', () => encodeHeader(FrameType.WindowUpdate, 0, 3, 5)],
    ['ping answers nobody asked for', () => encodeHeader(FrameType.Ping, Flag.ACK, 0, 7)],
    // Stream 1 is open and maxInboundStreams is 1: each of these is refused (a rapid-reset flood).
    [
      'SYNs beyond maxInboundStreams',
      (i: number) => encodeHeader(FrameType.WindowUpdate, Flag.SYN, 5 + 2 * i, 0),
    ],
  ])('ends a session flooded with %s (emptyFramesPerSecond)', async (_what, frame) => {
    const { session, peer } = sessionWithRawPeer({ emptyFramesPerSecond: 100, maxInboundStreams: 1 });
    const closed = closeOf(session);
    session.on('stream', (s: YamuxStream) => s.resume());
    peer.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0));
    // Stream 3 opens while 1 is open: refused, the first of the 400 the burst allows.
    peer.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 3, 0));
    writeInReads(peer, 399, frame);
    await pingAnswered(peer, 1); // a ping is no empty frame: it only shows the 399 were handled
    expect(session.isClosed).toBe(false); // 4 × 100 is the burst
    peer.write(frame(399));
    const err = await closed;
    expect(err?.code).toBe('TUN_ERR_LIMIT_EXCEEDED');
    expect(err?.details).toEqual({ limit: 'emptyFramesPerSecond' });
  });
});

describe('frames we send', () => {
  it('sends no empty Data frame for an empty write: it would count against the peer limit', async () => {
    const { session, peer } = sessionWithRawPeer();
    const frames: number[][] = [];
    peer.on('data', (chunk: Buffer) => {
      for (
        let at = 0;
        at + 12 <= chunk.length;
        at += 12 + (chunk[at + 1] === FrameType.Data ? chunk.readUInt32BE(at + 8) : 0)
      ) {
        frames.push([chunk[at + 1]!, chunk.readUInt16BE(at + 2), chunk.readUInt32BE(at + 8)]);
      }
    });
    const stream = session.open();
    stream.write(Buffer.alloc(0));
    stream.end();
    await pollUntil(() => frames.length >= 2, 2_000);
    await flushIo();
    expect(frames).toEqual([
      [FrameType.WindowUpdate, Flag.SYN, 0],
      [FrameType.WindowUpdate, Flag.FIN, 0],
    ]);
  });
});

describe('received bytes held for consumers that are behind', () => {
  it('keeps 1-byte Data frames at about their payload: 8 streams of a full 256 KiB window each', async () => {
    const { session, peer } = sessionWithRawPeer();
    const held: YamuxStream[] = [];
    session.on('stream', (s: YamuxStream) => held.push(s));
    const streams = 8;
    const window = 256 * KiB;
    for (let id = 1; id <= 2 * streams; id += 2)
      peer.write(encodeHeader(FrameType.WindowUpdate, Flag.SYN, id, 0));
    await pollUntil(() => held.length === streams, 2_000);
    const before = memoryInUseBytes();
    const one = Buffer.from([0x61]);
    writeInReads(peer, streams * window, (i) => dataFrame(2 * (i % streams) + 1, 0, one));
    await pollUntil(() => session.stats.bytesIn === streams * window, 10_000);
    const grown = memoryInUseBytes() - before;
    // 2 MiB of payload; as one Buffer per byte it was over 280 MiB.
    expect(grown).toBeLessThan(3 * streams * window);
    expect(held.map((s) => s.bufferedBytes)).toEqual(Array(streams).fill(window));
    // And every byte is there, in order, when the consumer reads.
    const first = await readAtLeast(held[0]!, window);
    expect(first.equals(Buffer.alloc(window, 0x61))).toBe(true);
  });

  it('stops reading the peer above maxBufferedBytes, reads again once the consumers catch up, and ends a session that stays above it', async () => {
    const budget = 1 * MiB;
    const { session, peer, clock } = sessionWithRawPeer({ maxBufferedBytes: budget });
    const closed = closeOf(session);
    const held: YamuxStream[] = [];
    session.on('stream', (s: YamuxStream) => held.push(s));
    const chunk = Buffer.alloc(64 * KiB, 0x62);
    // Eight streams, each sending its whole 256 KiB window: 2 MiB, twice the budget.
    for (let n = 0; n < 8; n++) {
      const id = 2 * n + 1;
      for (let i = 0; i < 4; i++) peer.write(dataFrame(id, i === 0 ? Flag.SYN : 0, chunk));
    }
    await pollUntil(() => session.stats.readPaused, 5_000);
    await flushIo();
    const readWhilePaused = session.stats.bytesIn;
    expect(readWhilePaused).toBeGreaterThanOrEqual(budget);
    expect(readWhilePaused).toBeLessThan(budget + 2 * READ_BYTES + 256 * KiB);

    // Consumers catch up, with the streams that arrive once reading resumes: the rest arrives.
    const drained = held.map((s) => readAtLeast(s, 256 * KiB));
    expect(drained.length).toBeLessThan(8);
    const drainNew = (s: YamuxStream): void => void drained.push(readAtLeast(s, 256 * KiB));
    session.on('stream', drainNew);
    await pollUntil(() => session.stats.bytesIn === 8 * 256 * KiB && drained.length === 8, 5_000);
    session.off('stream', drainNew);
    expect((await Promise.all(drained)).every((b) => b.length === 256 * KiB)).toBe(true);
    expect(session.stats.readPaused).toBe(false);

    // Now the consumers stop for good: after keepaliveTimeoutMs above the budget the session ends.
    for (const s of held) s.write('more, please');
    for (let n = 8; n < 16; n++) {
      const id = 2 * n + 1;
      for (let i = 0; i < 4; i++) peer.write(dataFrame(id, i === 0 ? Flag.SYN : 0, chunk));
    }
    await pollUntil(() => session.stats.readPaused, 5_000);
    clock.advance(11_000);
    const err = await closed;
    expect(err).toBeInstanceOf(TunnelError);
    expect(err?.code).toBe('TUN_ERR_LIMIT_EXCEEDED');
    expect(err?.details).toEqual({ limit: 'maxBufferedBytes' });
  });

  it('delivers exactly the bytes sent when frames of any size meet a consumer that pauses and resumes (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 20_000 }), { minLength: 1, maxLength: 40 }),
        fc.array(fc.boolean(), { minLength: 1, maxLength: 40 }),
        async (sizes, pauses) => {
          const { session, peer } = sessionWithRawPeer();
          const got = new Promise<YamuxStream>((resolve) => session.once('stream', resolve));
          let offset = 0;
          const sent: Buffer[] = [];
          const frames = sizes.map((size, i) => {
            const payload = Buffer.alloc(size);
            for (let j = 0; j < size; j++) payload[j] = (offset + j) & 0xff;
            offset += size;
            sent.push(payload);
            return dataFrame(1, i === 0 ? Flag.SYN : 0, payload);
          });
          const total = offset;
          if (total > 256 * KiB) return; // stay within the initial window: no grant needed
          const stream = await (async () => {
            peer.write(frames[0]!);
            return got;
          })();
          const received = readToEnd(stream);
          for (let i = 1; i < frames.length; i++) {
            if (pauses[i % pauses.length]) stream.pause();
            peer.write(frames[i]!);
            if (i % 3 === 0) await flushIo(1);
            stream.resume();
          }
          peer.write(encodeHeader(FrameType.WindowUpdate, Flag.FIN, 1, 0));
          const bytes = await received;
          expect(sha256(bytes)).toBe(sha256(Buffer.concat(sent)));
          session.destroy();
        },
      ),
      { numRuns: 60 },
    );
  });
});
