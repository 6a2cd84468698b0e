/**
 * Control messages (control.ts) against peers that send what the validators do not expect. Each
 * case here is a regression found by a fuzzer (names every object inherits, and objects where a
 * string was expected).
 */
import { describe, expect, it } from 'vitest';
import { TunnelError, decodeControlMessage } from '@cluster-tunnel/protocol';

const INHERITED = ['toString', 'hasOwnProperty', '__proto__', 'constructor', 'valueOf', 'isPrototypeOf'];

function refusal(body: string): unknown {
  try {
    decodeControlMessage(Buffer.from(body));
  } catch (err) {
    return err;
  }
  return undefined;
}

describe('decodeControlMessage', () => {
  it.each(INHERITED)(
    'refuses type %s, a name every object inherits, with TUN_ERR_BAD_CONTROL_MESSAGE (most threw a TypeError)',
    (type) => {
      const err = refusal(JSON.stringify({ type, serverId: 's', hostnames: [] }));
      expect(err).toBeInstanceOf(TunnelError);
      expect(err).toMatchObject({ code: 'TUN_ERR_BAD_CONTROL_MESSAGE' });
    },
  );

  it.each(INHERITED)(
    'refuses an error message with code %s (it was accepted as a TUN_ERR_* code)',
    (code) => {
      const err = refusal(JSON.stringify({ type: 'error', code, message: 'm' }));
      expect(err).toBeInstanceOf(TunnelError);
      expect(err).toMatchObject({ code: 'TUN_ERR_BAD_CONTROL_MESSAGE' });
    },
  );

  it('refuses a type that is an object with a toString field, naming it (String() of it threw a TypeError)', () => {
    const err = refusal('{"type":{"toString":2}}');
    expect(err).toBeInstanceOf(TunnelError);
    expect(err).toMatchObject({
      code: 'TUN_ERR_BAD_CONTROL_MESSAGE',
      message: 'unknown control message type {"toString":2}',
    });
  });
});
