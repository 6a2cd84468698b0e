/**
 * The frame decoder must turn a byte stream split or joined in any way into the same frames
 * (docs/PROTOCOL.md, "WebSocket transport": frames may split or join across messages anywhere).
 * The input is a real session's bytes, recorded off an in-memory pipe, not hand-made frames.
 */
import { Transform } from 'node:stream';
import fc from 'fast-check';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  Flag,
  FrameDecoder,
  FrameType,
  HEADER_BYTES,
  YamuxSession,
  type FrameHeader,
  type FrameSink,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { seededRandom } from '../helpers/random.js';
import { recordClientToServerBytes } from '../helpers/session-recording.js';
import {
  pipePairForTest,
  readToEnd,
  readToEndWithForAwait,
  sha256,
  withDeadline,
} from '../helpers/streams.js';
import { pipePair } from '../helpers/transports.js';

const KiB = 1024;

/** One decoded frame; a Data frame's payload pieces are joined, so any split compares equal. */
interface DecodedFrame {
  header: FrameHeader;
  payload: Buffer;
}

/**
 * Collects frames and checks the sink contract on the way: payload pieces arrive only between
 * start and end of their own frame, are never empty, and add up to the header's length.
 */
class RecordingSink implements FrameSink {
  readonly frames: DecodedFrame[] = [];
  private open: { header: FrameHeader; pieces: Buffer[]; bytes: number } | undefined;

  onDataStart(header: FrameHeader): void {
    if (this.open) throw new Error('onDataStart inside another Data frame');
    this.open = { header, pieces: [], bytes: 0 };
  }

  onData(header: FrameHeader, payload: Buffer): void {
    if (this.open?.header !== header) throw new Error('onData outside its Data frame');
    if (payload.length === 0) throw new Error('empty payload piece');
    this.open.pieces.push(payload);
    this.open.bytes += payload.length;
    if (this.open.bytes > header.length) throw new Error('more payload than the header announced');
  }

  onDataEnd(header: FrameHeader): void {
    const open = this.open;
    if (open?.header !== header) throw new Error('onDataEnd outside its Data frame');
    if (open.bytes !== header.length)
      throw new Error(`payload of ${open.bytes} bytes, header said ${header.length}`);
    this.frames.push({ header, payload: Buffer.concat(open.pieces, open.bytes) });
    this.open = undefined;
  }

  onControl(header: FrameHeader): void {
    if (this.open) throw new Error('control frame inside a Data frame');
    this.frames.push({ header, payload: Buffer.alloc(0) });
  }
}

/** Decodes `pieces` in order with one fresh decoder. */
function decodePieces(pieces: readonly Buffer[]): { frames: DecodedFrame[]; atBoundary: boolean } {
  const sink = new RecordingSink();
  const decoder = new FrameDecoder(sink, 16 * 1024 * 1024);
  for (const piece of pieces) decoder.push(piece);
  return { frames: sink.frames, atBoundary: decoder.atBoundary };
}

function sameHeader(a: FrameHeader, b: FrameHeader): boolean {
  return (
    a.version === b.version &&
    a.type === b.type &&
    a.flags === b.flags &&
    a.streamId === b.streamId &&
    a.length === b.length
  );
}

/** The first difference between two frame sequences, or undefined; cheap enough for thousands of calls. */
function difference(expected: readonly DecodedFrame[], actual: readonly DecodedFrame[]): string | undefined {
  if (expected.length !== actual.length) return `${actual.length} frames, expected ${expected.length}`;
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]!;
    const a = actual[i]!;
    if (!sameHeader(e.header, a.header))
      return `frame ${i}: header ${JSON.stringify(a.header)}, expected ${JSON.stringify(e.header)}`;
    if (!e.payload.equals(a.payload)) return `frame ${i}: payload differs`;
  }
  return undefined;
}

/** Byte offsets where a frame starts (and the end of the recording). */
function frameBoundaries(frames: readonly DecodedFrame[]): Set<number> {
  const boundaries = new Set<number>([0]);
  let offset = 0;
  for (const { header } of frames) {
    offset += HEADER_BYTES + (header.type === FrameType.Data ? header.length : 0);
    boundaries.add(offset);
  }
  return boundaries;
}

/** Fills `n` bytes from a seeded PRNG, so a failing case replays byte for byte. */
function pseudoRandomBytes(n: number, random: () => number): Buffer {
  const buf = Buffer.alloc(n);
  for (let i = 0; i < n; i++) buf[i] = Math.floor(random() * 256);
  return buf;
}

describe('frame decoder on a recorded session', () => {
  it('decodes the same frames however the recording is split in two, and byte by byte', async () => {
    const recording = await recordClientToServerBytes();
    const reference = decodePieces([recording]);
    expect(reference.atBoundary).toBe(true);

    // The recording holds every kind of frame the brief cares about.
    const frames = reference.frames;
    const has = (p: (h: FrameHeader) => boolean): boolean => frames.some((f) => p(f.header));
    expect(has((h) => h.type === FrameType.Data && h.length > 0)).toBe(true);
    expect(has((h) => h.type === FrameType.WindowUpdate && (h.flags & Flag.SYN) !== 0)).toBe(true);
    expect(has((h) => h.type === FrameType.WindowUpdate && h.flags === 0 && h.length > 0)).toBe(true);
    expect(has((h) => (h.flags & Flag.FIN) !== 0)).toBe(true);
    expect(has((h) => (h.flags & Flag.RST) !== 0)).toBe(true);
    expect(has((h) => h.type === FrameType.Ping && h.flags === Flag.SYN)).toBe(true);
    expect(has((h) => h.type === FrameType.Ping && h.flags === Flag.ACK)).toBe(true);
    expect(frames.at(-1)?.header).toMatchObject({ type: FrameType.GoAway, length: 0 });

    const boundaries = frameBoundaries(frames);
    expect(boundaries.has(recording.length)).toBe(true);
    const failures: string[] = [];
    for (let offset = 1; offset < recording.length; offset++) {
      const sink = new RecordingSink();
      const decoder = new FrameDecoder(sink, 16 * 1024 * 1024);
      decoder.push(recording.subarray(0, offset));
      // Between the pieces the decoder knows whether it stopped inside a frame.
      if (decoder.atBoundary !== boundaries.has(offset)) failures.push(`offset ${offset}: atBoundary wrong`);
      decoder.push(recording.subarray(offset));
      const diff =
        difference(frames, sink.frames) ?? (decoder.atBoundary ? undefined : 'not at a boundary at the end');
      if (diff) failures.push(`offset ${offset}: ${diff}`);
      if (failures.length >= 5) break;
    }
    expect(failures).toEqual([]);

    const bytes: Buffer[] = [];
    for (let i = 0; i < recording.length; i++) bytes.push(recording.subarray(i, i + 1));
    const byteByByte = decodePieces(bytes);
    expect(difference(frames, byteByByte.frames)).toBeUndefined();
    expect(byteByByte.atBoundary).toBe(true);
  });

  it('decodes random splits of the recording identically (property)', async () => {
    const recording = await recordClientToServerBytes();
    const reference = decodePieces([recording]).frames;
    const cuts = fc.uniqueArray(fc.integer({ min: 1, max: recording.length - 1 }), { maxLength: 64 });
    fc.assert(
      fc.property(cuts, (points) => {
        const sorted = [...points].sort((x, y) => x - y);
        const pieces: Buffer[] = [];
        let from = 0;
        for (const to of [...sorted, recording.length]) {
          pieces.push(recording.subarray(from, to));
          from = to;
        }
        const decoded = decodePieces(pieces);
        expect(difference(reference, decoded.frames)).toBeUndefined();
        expect(decoded.atBoundary).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

/**
 * Passes bytes on at random boundaries: each chunk is cut into up to four pieces, and the last
 * piece is sometimes held back and joined to the next chunk (or let go on the next turn of the
 * event loop, so a held tail never stalls a conversation).
 */
function rechunker(random: () => number): Transform {
  let held: Buffer | undefined;
  let timer: NodeJS.Immediate | undefined;
  return new Transform({
    transform(chunk: Buffer, _encoding, cb) {
      if (timer) clearImmediate(timer);
      timer = undefined;
      let buf = held ? Buffer.concat([held, chunk]) : chunk;
      held = undefined;
      const pieces = 1 + Math.floor(random() * 4);
      for (let i = 1; i < pieces && buf.length > 1; i++) {
        const cut = 1 + Math.floor(random() * (buf.length - 1));
        this.push(buf.subarray(0, cut));
        buf = buf.subarray(cut);
      }
      if (random() < 0.5) {
        this.push(buf);
      } else {
        held = buf;
        timer = setImmediate(() => {
          timer = undefined;
          if (held) this.push(held);
          held = undefined;
        });
      }
      cb();
    },
    flush(cb) {
      if (timer) clearImmediate(timer);
      cb(null, held);
    },
    destroy(err, cb) {
      if (timer) clearImmediate(timer);
      cb(err);
    },
  });
}

interface Received {
  bytes: number;
  sha256: string;
}

describe('yamux session over a randomly re-chunking pipe', () => {
  it('delivers exactly the bytes written on 1-20 interleaved streams (property)', async () => {
    const size = fc.oneof(
      { arbitrary: fc.integer({ min: 0, max: 16 * KiB }), weight: 4 },
      { arbitrary: fc.integer({ min: 0, max: 320 * KiB }), weight: 1 },
    );
    const scenario = fc.record({
      sizes: fc.array(size, { minLength: 1, maxLength: 20 }),
      seed: fc.integer(),
    });
    await fc.assert(
      fc.asyncProperty(scenario, async ({ sizes, seed }) => {
        const random = seededRandom(seed);
        const left = pipePair();
        const right = pipePair();
        const toServer = rechunker(random);
        const toClient = rechunker(random);
        left.b.pipe(toServer).pipe(right.a);
        right.a.pipe(toClient).pipe(left.b);
        // Plumbing between the sessions: teardown may write into an end already gone (EPIPE).
        const plumbing = [left.b, right.a, toServer, toClient];
        for (const d of plumbing) d.on('error', () => undefined);
        const client = new YamuxSession(left.a, { role: 'client', keepaliveIntervalMs: 0 });
        const server = new YamuxSession(right.b, { role: 'server', keepaliveIntervalMs: 0 });
        const received = new Map<number, Received>();
        let allReceived: () => void = () => undefined;
        let failed: (err: Error) => void = () => undefined;
        const done = new Promise<void>((resolve, reject) => {
          allReceived = resolve;
          failed = reject;
        });
        // Handled now, awaited later: a session may fail while the writer is still writing.
        done.catch(() => undefined);
        for (const session of [client, server]) {
          session.on('close', (err?: Error) => failed(err ?? new Error('a session closed early')));
        }
        function finished(stream: YamuxStream, payload: Buffer): void {
          received.set(stream.id, { bytes: payload.length, sha256: sha256(payload) });
          stream.end();
          if (received.size === sizes.length) allReceived();
        }
        // Half the streams are read in flowing mode, half with `for await` (paused mode).
        server.on('stream', (stream: YamuxStream) => {
          const read = stream.id % 4 === 1 ? readToEnd(stream) : readToEndWithForAwait(stream);
          read.then((payload) => finished(stream, payload), failed);
        });
        try {
          // Each stream's payload goes out in 1-4 writes; the writes of all streams are shuffled
          // together, and the writer sometimes yields so they land on different ticks.
          const streams = sizes.map(() => client.open());
          const payloads = sizes.map((n) => pseudoRandomBytes(n, random));
          const queues = payloads.map((payload) => {
            const pieces: Buffer[] = [];
            let rest = payload;
            const writes = 1 + Math.floor(random() * 4);
            for (let i = 1; i < writes && rest.length > 1; i++) {
              const cut = 1 + Math.floor(random() * (rest.length - 1));
              pieces.push(rest.subarray(0, cut));
              rest = rest.subarray(cut);
            }
            pieces.push(rest);
            return pieces;
          });
          const pending = queues.map((_, i) => i);
          for (let op = 0; pending.length > 0 && op < 200; op++) {
            const slot = Math.floor(random() * pending.length);
            const i = pending[slot]!;
            const piece = queues[i]!.shift()!;
            if (queues[i]!.length === 0) {
              streams[i]!.end(piece);
              pending.splice(slot, 1);
            } else {
              streams[i]!.write(piece);
            }
            if (random() < 0.3) await new Promise((r) => setImmediate(r));
          }
          expect(pending).toEqual([]);
          await withDeadline(done, 10_000, `${sizes.length} streams delivered`);
          streams.forEach((stream, i) => {
            expect(received.get(stream.id)).toEqual({ bytes: sizes[i], sha256: sha256(payloads[i]!) });
          });
        } finally {
          client.destroy();
          server.destroy();
          for (const d of [left.a, right.b, ...plumbing]) d.destroy();
        }
      }),
      { numRuns: 60, interruptAfterTimeLimit: 15_000 },
    );
  });
});

describe('regressions found while recording', () => {
  /**
   * Regression window-update-before-read (stream.ts): Node calls `_read` from inside `read()`
   * *before* it removes the bytes it returns, so a window update computed there saw them as still
   * unread and granted nothing; Node calls `_read` again only after the next push, which a sender
   * without window never makes. A paused-mode reader (`for await`, `pipeline`, 'readable' +
   * `read()`) that let a whole window pile up stalled for ever. Flowing readers were unaffected.
   */
  it('regression window-update-before-read: a for-await reader receives a reply larger than one window', async () => {
    const { a, b } = pipePairForTest();
    const client = new YamuxSession(a, { role: 'client', keepaliveIntervalMs: 0 });
    const server = new YamuxSession(b, { role: 'server', keepaliveIntervalMs: 0 });
    onTestFinished(() => {
      client.destroy();
      server.destroy();
    });
    server.on('stream', (stream: YamuxStream) => {
      stream.resume();
      stream.end(Buffer.alloc(300 * KiB, 7));
    });
    const stream = client.open();
    stream.end();
    const reply = await withDeadline(
      readToEndWithForAwait(stream),
      2_000,
      'a 300 KiB reply read with for await',
    );
    expect(reply.length).toBe(300 * KiB);
  });
});
