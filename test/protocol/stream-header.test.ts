/**
 * Stream headers and replies (stream-header.ts) from peers that send what the parser does not
 * expect. Each case here is a regression found by a fuzzer.
 */
import { PassThrough } from 'node:stream';
import { describe, expect, it, onTestFinished } from 'vitest';
import { readStreamReply } from '@cluster-tunnel/protocol';

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
