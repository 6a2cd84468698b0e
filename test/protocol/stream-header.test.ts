/**
 * Stream headers and replies (stream-header.ts): the v2 (typed) header's layout and limits, and
 * peers that send what the parser does not expect (the readStreamReply cases are regressions
 * found by a fuzzer).
 */
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it, onTestFinished, vi } from 'vitest';
import {
  MAX_STREAM_HEADER_BYTES,
  MAX_STREAM_METADATA_BYTES,
  MAX_STREAM_METADATA_ENTRIES,
  STREAM_HEADER_VERSIONS,
  STREAM_TYPES,
  encodeStreamHeader,
  readStreamHeader,
  readStreamReply,
  type StreamHeader,
} from '@cluster-tunnel/protocol';

afterEach(() => {
  vi.restoreAllMocks();
});

/** Feeds `bytes` to readStreamHeader in pieces of `pieceBytes` (all at once by default). */
function headerOf(bytes: Buffer, pieceBytes = bytes.length || 1): ReturnType<typeof readStreamHeader> {
  const stream = new PassThrough();
  onTestFinished(() => {
    stream.destroy();
  });
  const header = readStreamHeader(stream, 5_000);
  for (let at = 0; at < bytes.length; at += pieceBytes) stream.write(bytes.subarray(at, at + pieceBytes));
  stream.end();
  return header;
}

/** A v2 header by hand: version, type, route, address, then raw metadata bytes. */
function v2(type: number, metadata: Buffer, count: number): Buffer {
  return Buffer.concat([Buffer.from([2, type, 2]), Buffer.from('r1'), Buffer.from([0, count]), metadata]);
}

/** One metadata entry by hand: u8 key length, key, u16 value length, value. */
function entry(key: string, value: Buffer | string): Buffer {
  const v = Buffer.from(value);
  const head = Buffer.alloc(1 + key.length + 2);
  head[0] = key.length;
  head.write(key, 1, 'latin1');
  head.writeUInt16BE(v.length, 1 + key.length);
  return Buffer.concat([head, v]);
}

/** The most metadata one header may carry: 16 entries, exactly 1 KiB. */
function fullMetadata(): Record<string, string> {
  const out: Record<string, string> = {};
  let left = MAX_STREAM_METADATA_BYTES;
  for (let i = 0; i < MAX_STREAM_METADATA_ENTRIES; i++) {
    const key = `k${String(i).padStart(2, '0')}`;
    const size = i === MAX_STREAM_METADATA_ENTRIES - 1 ? left - (1 + key.length + 2) : 60;
    out[key] = 'v'.repeat(size);
    left -= 1 + key.length + 2 + size;
  }
  return out;
}

describe('the v2 stream header', () => {
  const header: StreamHeader = {
    type: 'route',
    route: 'cluster-u1',
    remoteAddress: '203.0.113.9:51234',
    metadata: { sni: 'cluster-u1.proxy.localhost', 'user-agent': 'kubectl/v1.31 ✓' },
  };

  it('is version 2, type, route, address, count, then each key and UTF-8 value with their lengths', () => {
    const bytes = encodeStreamHeader(header, STREAM_HEADER_VERSIONS.v2);
    const route = Buffer.from('cluster-u1');
    const address = Buffer.from('203.0.113.9:51234');
    expect(bytes).toEqual(
      Buffer.concat([
        Buffer.from([2, STREAM_TYPES.route, route.length]),
        route,
        Buffer.from([address.length]),
        address,
        Buffer.from([2]),
        entry('sni', 'cluster-u1.proxy.localhost'),
        entry('user-agent', 'kubectl/v1.31 ✓'),
      ]),
    );
  });

  it('reads back what was encoded, metadata included, and leaves metadata out when there is none', async () => {
    await expect(headerOf(encodeStreamHeader(header, 2))).resolves.toEqual(header);
    const bare: StreamHeader = { type: 'route', route: 'cluster-u1', remoteAddress: '' };
    await expect(headerOf(encodeStreamHeader({ ...bare, metadata: {} }, 2))).resolves.toEqual(bare);
  });

  it('reads a v1 header as a route stream without metadata', async () => {
    const v1 = Buffer.concat([Buffer.from([1, 2]), Buffer.from('r1'), Buffer.from([3]), Buffer.from('a:1')]);
    await expect(headerOf(v1)).resolves.toEqual({ type: 'route', route: 'r1', remoteAddress: 'a:1' });
  });

  it('reads the largest legal header sent 1 byte per write with a bounded number of joins', async () => {
    const largest = encodeStreamHeader(
      { type: 'route', route: 'r'.repeat(255), remoteAddress: 'a'.repeat(255), metadata: fullMetadata() },
      2,
    );
    expect(largest.length).toBe(MAX_STREAM_HEADER_BYTES);
    const concat = vi.spyOn(Buffer, 'concat');
    const read = await headerOf(largest, 1);
    expect(Object.keys(read.metadata ?? {})).toHaveLength(MAX_STREAM_METADATA_ENTRIES);
    // One join per parser step (three per entry, four for the fixed fields), not one per byte.
    expect(concat.mock.calls.length).toBeLessThanOrEqual(3 * MAX_STREAM_METADATA_ENTRIES + 4);
  });

  it.each([
    ['an unknown header version', Buffer.from([3, 1, 1, 0x61, 0, 0]), 'TUN_ERR_BAD_STREAM_HEADER'],
    ['stream type 0', v2(0, Buffer.alloc(0), 0), 'TUN_ERR_UNKNOWN_STREAM_TYPE'],
    ['a stream type this build does not know', v2(200, Buffer.alloc(0), 0), 'TUN_ERR_UNKNOWN_STREAM_TYPE'],
    ['an empty route label', Buffer.from([2, 1, 0, 0, 0]), 'TUN_ERR_BAD_STREAM_HEADER'],
    ['17 metadata entries', v2(1, Buffer.alloc(0), 17), 'TUN_ERR_BAD_STREAM_HEADER'],
    ['an empty key', v2(1, Buffer.from([0, 0, 0]), 1), 'TUN_ERR_BAD_STREAM_HEADER'],
    ['a key of 33 bytes', v2(1, entry('k'.repeat(33), ''), 1), 'TUN_ERR_BAD_STREAM_HEADER'],
    ['an upper-case key', v2(1, entry('Host', 'x'), 1), 'TUN_ERR_BAD_STREAM_HEADER'],
    ['a key with a byte above 127', v2(1, entry('k\u00e9', 'x'), 1), 'TUN_ERR_BAD_STREAM_HEADER'],
    [
      'a key given twice',
      v2(1, Buffer.concat([entry('a', '1'), entry('a', '2')]), 2),
      'TUN_ERR_BAD_STREAM_HEADER',
    ],
    [
      'a value that is not UTF-8',
      v2(1, entry('a', Buffer.from([0xc3, 0x28])), 1),
      'TUN_ERR_BAD_STREAM_HEADER',
    ],
    ['a value over the 1 KiB budget', v2(1, entry('a', 'x'.repeat(1021)), 1), 'TUN_ERR_BAD_STREAM_HEADER'],
    ['a header cut short', encodeStreamHeader(header, 2).subarray(0, 40), 'TUN_ERR_BAD_STREAM_HEADER'],
  ])('refuses %s with its code, whole or 1 byte per write', async (_what, bytes, code) => {
    await expect(headerOf(bytes)).rejects.toMatchObject({ code });
    await expect(headerOf(bytes, 1)).rejects.toMatchObject({ code });
  });

  it('refuses a value length over the budget before its bytes arrive', async () => {
    // 65535 announced, nothing sent: the reader must not wait for (or buffer) them.
    const stream = new PassThrough();
    onTestFinished(() => {
      stream.destroy();
    });
    const read = readStreamHeader(stream, 60_000);
    const announced = entry('a', '');
    announced.writeUInt16BE(0xffff, 2);
    stream.write(v2(1, announced, 1));
    await expect(read).rejects.toMatchObject({ code: 'TUN_ERR_BAD_STREAM_HEADER' });
  });

  it('encodes no header it would refuse to read', () => {
    const refused = (h: Partial<StreamHeader>, version: 1 | 2 = 2): unknown => {
      try {
        encodeStreamHeader({ ...header, ...h } as StreamHeader, version);
      } catch (err) {
        return (err as { code?: string }).code;
      }
      return undefined;
    };
    expect(refused({ metadata: { Bad: 'x' } })).toBe('TUN_ERR_BAD_STREAM_HEADER');
    const seventeen = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, '']));
    expect(refused({ metadata: seventeen })).toBe('TUN_ERR_BAD_STREAM_HEADER');
    expect(refused({ metadata: { a: 'x'.repeat(1021) } })).toBe('TUN_ERR_BAD_STREAM_HEADER');
    expect(refused({ metadata: fullMetadata() })).toBeUndefined();
    expect(refused({ type: 'tunnel' as StreamHeader['type'] })).toBe('TUN_ERR_UNKNOWN_STREAM_TYPE');
    // v1 has no room for metadata or a type.
    expect(refused({}, 1)).toBe('TUN_ERR_BAD_STREAM_HEADER');
    expect(refused({ metadata: undefined }, 1)).toBeUndefined();
  });
});

/** A refusal (status 1) whose reason is `json`, as the agent's bytes. */
function refusal(json: string): Buffer {
  const body = Buffer.from(json);
  const head = Buffer.from([1, 0, 0]);
  head.writeUInt16BE(body.length, 1);
  return Buffer.concat([head, body]);
}

function replyTo(bytes: Buffer): ReturnType<typeof readStreamReply> {
  const stream = new PassThrough();
  onTestFinished(() => {
    stream.destroy();
  });
  const reply = readStreamReply(stream, 5_000);
  stream.end(bytes);
  return reply;
}

describe('readStreamReply', () => {
  it('reads a refusal whose reason is JSON null as TUN_ERR_PROTOCOL (it rejected with a TypeError)', async () => {
    await expect(replyTo(refusal('null'))).resolves.toEqual({
      ok: false,
      code: 'TUN_ERR_PROTOCOL',
      message: '',
    });
  });

  it.each(['toString', '__proto__', 'hasOwnProperty', 'constructor'])(
    'reads the code %s, a name every object inherits, as TUN_ERR_PROTOCOL (it was passed on as a code)',
    async (code) => {
      await expect(replyTo(refusal(JSON.stringify({ code, message: 'm' })))).resolves.toEqual({
        ok: false,
        code: 'TUN_ERR_PROTOCOL',
        message: 'm',
      });
    },
  );

  it('shows a message that is not a string as its JSON (String() of {"toString":1} threw a TypeError)', async () => {
    await expect(
      replyTo(refusal('{"code":"TUN_ERR_DIAL_FAILED","message":{"toString":1}}')),
    ).resolves.toEqual({ ok: false, code: 'TUN_ERR_DIAL_FAILED', message: '{"toString":1}' });
  });
});
