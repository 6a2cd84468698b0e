import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { isTunnelError } from '../../packages/protocol/src/errors.js';
import {
  WebSocketFrameDecoder,
  WsOpcode,
  isValidCloseCode,
  parseClosePayload,
} from '../../packages/protocol/src/websocket/frame-decoder.js';
import {
  MAX_MASKED_FRAME_BYTES,
  MAX_UNMASKED_FRAME_BYTES,
  encodeControlFrame,
  encodeMasked,
  encodeUnmasked,
  releaseSlabs,
  writeFrameHeader,
} from '../../packages/protocol/src/websocket/frame-encoder.js';
import { nativeMaskLoaded } from '../../packages/protocol/src/websocket/mask.js';

const KiB = 1024;

interface Decoded {
  data: Buffer;
  controls: Array<{ opcode: number; payload: Buffer }>;
}

function decoderFor(expectMasked: boolean): { decoder: WebSocketFrameDecoder; out: Decoded } {
  const pieces: Buffer[] = [];
  const out: Decoded = {
    get data() {
      return Buffer.concat(pieces);
    },
    controls: [],
  };
  const decoder = new WebSocketFrameDecoder(
    {
      // Pieces are views of the pushed chunk: keep copies, as a consumer that holds them would.
      onData: (piece) => pieces.push(Buffer.from(piece)),
      onControl: (opcode, payload) => out.controls.push({ opcode, payload: Buffer.from(payload) }),
    },
    expectMasked,
  );
  return { decoder, out };
}

/** A frame built by hand (independent of the encoder): FIN, opcode, optional mask. */
function frame(
  opcode: number,
  payload: Buffer,
  opts: { mask?: Buffer; fin?: boolean; rsv?: number } = {},
): Buffer {
  const header = Buffer.alloc(14);
  header[0] = (opts.fin === false ? 0 : 0x80) | (opts.rsv ?? 0) | opcode;
  let p = 2;
  if (payload.length > 0xffff) {
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
    p = 10;
  } else if (payload.length > 125) {
    header[1] = 126;
    header.writeUInt16BE(payload.length, 2);
    p = 4;
  } else {
    header[1] = payload.length;
  }
  if (!opts.mask) return Buffer.concat([header.subarray(0, p), payload]);
  header[1] |= 0x80;
  opts.mask.copy(header, p);
  const masked = Buffer.from(payload.map((b, i) => b ^ opts.mask![i & 3]!));
  return Buffer.concat([header.subarray(0, p + 4), masked]);
}

function joined(batch: { buffers: Buffer[] }): Buffer {
  return Buffer.concat(batch.buffers);
}

describe('WebSocketFrameDecoder', () => {
  const payload = randomBytes(300);
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  // A masked stream with every header size, a ping between fragments and a close at the end.
  const wire = Buffer.concat([
    frame(WsOpcode.Binary, payload.subarray(0, 100), { mask, fin: false }),
    frame(WsOpcode.Ping, Buffer.from('ping!'), { mask }),
    frame(WsOpcode.Continuation, payload.subarray(100, 300), { mask }),
    frame(WsOpcode.Binary, Buffer.alloc(0), { mask }),
    frame(WsOpcode.Binary, Buffer.alloc(70 * KiB, 7), { mask }),
    frame(WsOpcode.Close, Buffer.from([0x03, 0xe8]), { mask }),
  ]);
  const expected = Buffer.concat([payload, Buffer.alloc(70 * KiB, 7)]);

  it('decodes the same frames however the bytes are split (every offset through the first frames, then every 97th)', () => {
    for (let split = 0; split <= wire.length; split += split < 400 ? 1 : 97) {
      const { decoder, out } = decoderFor(true);
      // push unmasks in place: give each run its own copy.
      const copy = Buffer.from(wire);
      decoder.push(copy.subarray(0, split));
      decoder.push(copy.subarray(split));
      expect(out.data.equals(expected), `split at ${split}`).toBe(true);
      expect(out.controls.map((c) => c.opcode)).toEqual([WsOpcode.Ping, WsOpcode.Close]);
      expect(out.controls[0]!.payload.toString()).toBe('ping!');
      expect(decoder.atBoundary).toBe(true);
    }
  });

  it('decodes byte by byte', () => {
    const { decoder, out } = decoderFor(true);
    const copy = Buffer.from(wire);
    for (let i = 0; i < copy.length; i++) decoder.push(copy.subarray(i, i + 1));
    expect(out.data.equals(expected)).toBe(true);
  });

  it.each([
    ['an unmasked client frame', true, frame(WsOpcode.Binary, Buffer.from('x'))],
    ['a masked server frame', false, frame(WsOpcode.Binary, Buffer.from('x'), { mask })],
    ['a text frame', false, frame(WsOpcode.Text, Buffer.from('x'))],
    ['RSV1 set', false, frame(WsOpcode.Binary, Buffer.from('x'), { rsv: 0x40 })],
    ['an unknown opcode', false, frame(0x3, Buffer.from('x'))],
    ['a continuation without a message', false, frame(WsOpcode.Continuation, Buffer.from('x'))],
    [
      'a binary frame inside a fragmented message',
      false,
      Buffer.concat([
        frame(WsOpcode.Binary, Buffer.from('x'), { fin: false }),
        frame(WsOpcode.Binary, Buffer.from('y')),
      ]),
    ],
    ['a fragmented ping', false, frame(WsOpcode.Ping, Buffer.from('x'), { fin: false })],
    ['a 126-byte ping', false, frame(WsOpcode.Ping, Buffer.alloc(126))],
    ['a length above 2^53', false, Buffer.from([0x82, 127, 0x00, 0x20, 0, 0, 0, 0, 0, 0])],
  ])('rejects %s with TUN_ERR_PROTOCOL, and stays failed', (_what, expectMasked, bytes) => {
    const { decoder } = decoderFor(expectMasked);
    let first: unknown;
    try {
      decoder.push(Buffer.from(bytes));
    } catch (err) {
      first = err;
    }
    expect(isTunnelError(first, 'TUN_ERR_PROTOCOL')).toBe(true);
    expect(() => decoder.push(Buffer.from([0x82, 0]))).toThrow(first as Error);
  });
});

describe('parseClosePayload', () => {
  const withCode = (code: number, reason: Buffer = Buffer.alloc(0)): Buffer => {
    const payload = Buffer.alloc(2 + reason.length);
    payload.writeUInt16BE(code);
    reason.copy(payload, 2);
    return payload;
  };

  it('accepts exactly 1000–1003, 1007–1014 and 3000–4999 of all 65536 codes, echoing them; the rest fail with 1002', () => {
    const accepted: number[] = [];
    const wrong: string[] = [];
    // Checked in plain code and asserted once: 65536 expect() calls take seconds.
    for (let code = 0; code <= 0xffff; code++) {
      const close = parseClosePayload(withCode(code));
      if (close.valid !== isValidCloseCode(code)) wrong.push(`${code}: valid ${close.valid}`);
      if (close.valid) {
        accepted.push(code);
        if (close.code !== code || close.reply !== code || close.reason !== '')
          wrong.push(`${code}: not echoed`);
      } else if (
        close.reply !== 1002 ||
        !isTunnelError(close.error, 'TUN_ERR_PROTOCOL') ||
        close.error.details?.code !== code
      ) {
        wrong.push(`${code}: ${close.reply} ${close.error.code}`);
      }
    }
    expect(wrong).toEqual([]);
    const ranges = [
      [1000, 1003],
      [1007, 1014],
      [3000, 4999],
    ].flatMap(([from, to]) => Array.from({ length: to! - from! + 1 }, (_, i) => from! + i));
    expect(accepted).toEqual(ranges);
  });

  it('answers a close without a code with 1000, and never answers with 1005, 1006 or 1015', () => {
    expect(parseClosePayload(Buffer.alloc(0))).toEqual({
      valid: true,
      code: undefined,
      reason: '',
      reply: 1000,
    });
    const replies = new Set<number>();
    for (let code = 0; code <= 0xffff; code++) replies.add(parseClosePayload(withCode(code)).reply);
    for (const reserved of [1005, 1006, 1015]) expect(replies.has(reserved)).toBe(false);
  });

  it('fails a 1-byte payload with 1002', () => {
    const close = parseClosePayload(Buffer.from([0x03]));
    expect(close.valid).toBe(false);
    expect(close.reply).toBe(1002);
  });

  it.each([
    ['0xff', [0x6f, 0xff]],
    ['a character cut short', [0xe2, 0x82]],
    ['a UTF-16 surrogate', [0xed, 0xa0, 0x80]],
    ['an overlong encoding', [0xc0, 0xaf]],
    ['a code point above U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
  ])('fails a reason holding %s with 1007 and TUN_ERR_PROTOCOL', (_what, bytes) => {
    const close = parseClosePayload(withCode(4000, Buffer.from(bytes)));
    expect(close.valid).toBe(false);
    expect(close.reply).toBe(1007);
    if (!close.valid) {
      expect(isTunnelError(close.error, 'TUN_ERR_PROTOCOL')).toBe(true);
      expect(close.error.details).toMatchObject({ code: 4000, websocket: expect.stringMatching(/UTF-8/) });
    }
  });

  it('decodes a UTF-8 reason of multi-byte characters (120 bytes)', () => {
    const reason = 'fermé \u{1f512} '.repeat(10);
    const bytes = Buffer.from(reason);
    expect(bytes.length).toBeLessThanOrEqual(123);
    expect(parseClosePayload(withCode(1001, bytes))).toEqual({
      valid: true,
      code: 1001,
      reason,
      reply: 1001,
    });
  });
});

describe('WebSocket frame encoder', () => {
  it('masks with the native bufferutil addon (the JS loop is a fallback for other platforms)', () => {
    expect(nativeMaskLoaded).toBe(true);
  });

  it('unmasked: one frame per batch, chunks uncopied, read back by the decoder', () => {
    const chunks = [Buffer.from('head'), randomBytes(64 * KiB), Buffer.alloc(0), randomBytes(10)];
    const batch = encodeUnmasked(chunks);
    expect(batch.buffers.length).toBe(4); // a header, then the three non-empty chunks
    expect(batch.buffers[2]).toBe(chunks[1]); // the payload itself, not a copy
    const { decoder, out } = decoderFor(false);
    decoder.push(joined(batch));
    expect(out.data.equals(Buffer.concat(chunks))).toBe(true);
  });

  it('masked: every frame has its own mask key and the decoder unmasks it', () => {
    const chunks = Array.from({ length: 8 }, () => randomBytes(64 * KiB + 12));
    const batch = encodeMasked(chunks);
    const bytes = joined(batch);
    releaseSlabs(batch.slabs);
    const { decoder, out } = decoderFor(true);
    decoder.push(Buffer.from(bytes));
    expect(out.data.equals(Buffer.concat(chunks))).toBe(true);
    // Frames end at chunk boundaries (one chunk per frame here) and each key differs.
    expect(batch.buffers.length).toBe(8);
    const keys = new Set(batch.buffers.map((b) => b.subarray(10, 14).toString('hex')));
    expect(keys.size).toBe(8);
  });

  it('splits a chunk larger than a frame and keeps whole chunks together otherwise', () => {
    for (const [encode, limit, masked] of [
      [encodeMasked, MAX_MASKED_FRAME_BYTES, true],
      [encodeUnmasked, MAX_UNMASKED_FRAME_BYTES, false],
    ] as const) {
      const chunks = [randomBytes(100), randomBytes(limit * 2 + 5), randomBytes(limit - 1)];
      const batch = encode(chunks);
      const { decoder, out } = decoderFor(masked);
      decoder.push(Buffer.from(joined(batch)));
      releaseSlabs(batch.slabs);
      expect(out.data.equals(Buffer.concat(chunks))).toBe(true);
    }
  });

  it('reuses slabs only after release and never leaks stale bytes into a frame', () => {
    const first = encodeMasked([Buffer.alloc(100 * KiB, 0xaa)]);
    releaseSlabs(first.slabs);
    const second = encodeMasked([Buffer.alloc(10 * KiB, 0x55)]);
    const { decoder, out } = decoderFor(true);
    decoder.push(Buffer.from(joined(second)));
    expect(out.data.equals(Buffer.alloc(10 * KiB, 0x55))).toBe(true);
    expect(joined(second).length).toBe(10 * KiB + 8); // header of 4 + mask of 4, nothing else
  });

  it('writes control frames and every header length form', () => {
    for (const masked of [false, true]) {
      const { decoder, out } = decoderFor(masked);
      decoder.push(encodeControlFrame(WsOpcode.Pong, Buffer.from('abc'), masked));
      expect(out.controls).toEqual([{ opcode: WsOpcode.Pong, payload: Buffer.from('abc') }]);
    }
    const header = Buffer.alloc(14);
    expect(writeFrameHeader(header, 0, WsOpcode.Binary, 125)).toBe(2);
    expect(writeFrameHeader(header, 0, WsOpcode.Binary, 126)).toBe(4);
    expect(writeFrameHeader(header, 0, WsOpcode.Binary, 0x10000)).toBe(10);
    expect(writeFrameHeader(header, 0, WsOpcode.Binary, 0x10000, Buffer.alloc(4))).toBe(14);
    expect(header.readBigUInt64BE(2)).toBe(0x10000n);
  });
});
