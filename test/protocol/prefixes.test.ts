/**
 * The length-prefixed pieces a peer sends before raw bytes: control messages on the control
 * stream, and a user stream's header and reply. However the peer splits them (down to one byte
 * per write), they decode the same, the bytes after them are untouched, and the work is linear
 * in their length. Regression quadratic-prefix-copies: both readers used to concatenate
 * everything received so far on every chunk.
 */
import { PassThrough } from 'node:stream';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  ControlChannel,
  MAX_CONTROL_MESSAGE_BYTES,
  encodeControlMessage,
  encodeStreamHeader,
  encodeStreamReply,
  readStreamHeader,
  readStreamReply,
  type ControlMessage,
  type StreamHeader,
} from '@cluster-tunnel/protocol';
import { readToEnd } from '../helpers/streams.js';

afterEach(() => {
  vi.restoreAllMocks();
});

/** Writes `bytes` to a fresh PassThrough in pieces cut at `cuts` (offsets), then ends it. */
function fed(bytes: Buffer, cuts: number[]): PassThrough {
  const stream = new PassThrough();
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  let at = 0;
  for (const p of [...points, bytes.length]) {
    if (p > at) stream.write(bytes.subarray(at, p));
    at = Math.max(at, p);
  }
  stream.end();
  return stream;
}

/** Every byte on its own write. */
function oneByteAtATime(bytes: Buffer): PassThrough {
  return fed(
    bytes,
    Array.from({ length: bytes.length }, (_, i) => i),
  );
}

function messagesOf(stream: PassThrough): Promise<ControlMessage[]> {
  const channel = new ControlChannel(stream);
  const out: ControlMessage[] = [];
  channel.on('message', (m: ControlMessage) => out.push(m));
  return new Promise((resolve) => channel.once('close', () => resolve(out)));
}

const largestRegister = (): ControlMessage => {
  // Filled up to just under MAX_CONTROL_MESSAGE_BYTES with an error message's text.
  const base = { type: 'error', code: 'TUN_ERR_PROTOCOL', message: '' } as const;
  const room = MAX_CONTROL_MESSAGE_BYTES - JSON.stringify(base).length;
  return { ...base, message: 'x'.repeat(room) };
};

describe('control messages', () => {
  it('decode one 64 KiB message sent 1 byte per write with one copy of its bytes', async () => {
    const message = largestRegister();
    const bytes = encodeControlMessage(message);
    expect(bytes.length).toBe(4 + MAX_CONTROL_MESSAGE_BYTES);
    const concat = vi.spyOn(Buffer, 'concat');
    const alloc = vi.spyOn(Buffer, 'allocUnsafe');
    const received = await messagesOf(oneByteAtATime(bytes));
    expect(received).toEqual([message]);
    // Before: one concat of everything so far per byte, 2^32 bytes copied in all.
    expect(concat).not.toHaveBeenCalled();
    expect(alloc.mock.calls.filter(([n]) => n === bytes.length)).toHaveLength(1);
  });

  it('decode any split of a sequence of messages into the same messages, in order (property)', async () => {
    const message = fc.oneof(
      fc.record({
        type: fc.constant('error' as const),
        code: fc.constantFrom('TUN_ERR_PROTOCOL' as const, 'TUN_ERR_TIMEOUT' as const),
        message: fc.string({ maxLength: 300 }),
      }),
      fc.record({
        type: fc.constant('registered' as const),
        serverId: fc.constantFrom('a', 'server-1', 'replica.2'),
        hostnames: fc.array(fc.constantFrom('cluster-u1.proxy.localhost', 'x.y'), { maxLength: 4 }),
      }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(message, { minLength: 1, maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 30 }),
        async (messages, cuts) => {
          const bytes = Buffer.concat(messages.map((m) => encodeControlMessage(m)));
          expect(await messagesOf(fed(bytes, cuts))).toEqual(messages);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('refuses a length over 64 KiB as soon as the 4 length bytes are in, even one by one', async () => {
    const stream = new PassThrough();
    const channel = new ControlChannel(stream);
    const failed = new Promise<Error>((resolve) => channel.once('error', resolve));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(MAX_CONTROL_MESSAGE_BYTES + 1, 0);
    for (const b of head) stream.write(Buffer.from([b]));
    expect(await failed).toMatchObject({ code: 'TUN_ERR_BAD_CONTROL_MESSAGE' });
  });

  it('treats a stream that was already destroyed as closed: next() rejects at once', async () => {
    const stream = new PassThrough();
    stream.destroy();
    const channel = new ControlChannel(stream);
    await expect(channel.next(60_000)).rejects.toMatchObject({ code: 'TUN_ERR_SESSION_CLOSED' });
  });
});

describe('user stream header and reply', () => {
  it('read the largest refusal reply sent 1 byte per write with a bounded number of copies, the bytes after it untouched', async () => {
    // The reply reader accepts 3 + 65535 bytes: pad the JSON reason to the maximum.
    const body = JSON.stringify({ code: 'TUN_ERR_DIAL_FAILED', message: 'z'.repeat(65535 - 46) });
    const largest = Buffer.concat([Buffer.from([1, 0, 0]), Buffer.from(body)]);
    largest.writeUInt16BE(Buffer.byteLength(body), 1);
    expect(largest.length).toBeLessThanOrEqual(3 + 65535);
    const after = Buffer.from('raw bytes after the reply');
    const concat = vi.spyOn(Buffer, 'concat');
    const stream = oneByteAtATime(Buffer.concat([largest, after]));
    const got = await readStreamReply(stream, 10_000);
    expect(got).toMatchObject({ ok: false, code: 'TUN_ERR_DIAL_FAILED' });
    // A few joins (the 3-byte head, then the whole reply), however long the reply; before the
    // fix, one per byte: about 2 GiB copied for this one.
    expect(concat.mock.calls.length).toBeLessThanOrEqual(4);
    concat.mockRestore();
    stream.resume();
    expect((await readToEnd(stream)).toString()).toBe(after.toString());
  });

  it('read any split of header (either version), reply and payload into the same values and the same bytes after them (property)', async () => {
    const metadata = fc.dictionary(
      fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,31}$/),
      fc.string({ maxLength: 20 }),
      {
        maxKeys: 8,
        noNullPrototype: true,
      },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1 as const, 2 as const),
        fc.stringMatching(/^[a-z0-9-]{1,63}$/),
        fc.stringMatching(/^[0-9.:]{0,40}$/),
        metadata,
        fc.uint8Array({ maxLength: 200 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        async (version, route, remoteAddress, entries, payload, cuts) => {
          const sent: StreamHeader = { type: 'route', route, remoteAddress };
          if (version === 2 && Object.keys(entries).length > 0) sent.metadata = entries;
          const header = encodeStreamHeader(sent, version);
          const ok = encodeStreamReply({ ok: true });
          const bytes = Buffer.concat([header, ok, Buffer.from(payload)]);
          const stream = fed(bytes, cuts);
          expect(await readStreamHeader(stream, 5_000)).toEqual(sent);
          stream.resume(); // each reader leaves the stream paused
          expect(await readStreamReply(stream, 5_000)).toEqual({ ok: true });
          stream.resume();
          // With nothing after the reply the stream may have ended already.
          const rest = stream.readableEnded ? Buffer.alloc(0) : await readToEnd(stream);
          expect(rest.equals(Buffer.from(payload))).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });
});
