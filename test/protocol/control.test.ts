/**
 * Control messages (control.ts) against peers that send what the validators do not expect: the
 * bounds of `capabilities`, and regressions found by a fuzzer (names every object inherits, and
 * objects where a string was expected).
 */
import { describe, expect, it } from 'vitest';
import {
  CAPABILITIES,
  MAX_CAPABILITIES,
  TunnelError,
  decodeControlMessage,
  negotiateCapabilities,
} from '@cluster-tunnel/protocol';

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

describe('capabilities in register and registered', () => {
  const register = { type: 'register', protocolVersion: 1, agentId: 'a', agentVersion: '0.1.0', routes: [] };
  const registered = { type: 'registered', serverId: 's', hostnames: [] };

  it.each([register, registered])('accepts $type without capabilities (an older peer)', (m) => {
    expect(decodeControlMessage(Buffer.from(JSON.stringify(m)))).toEqual(m);
  });

  it.each([register, registered])('accepts $type with names it does not know, up to the bound', (m) => {
    const capabilities = [
      'typed-stream-header',
      'from-the-future',
      ...Array.from({ length: MAX_CAPABILITIES - 2 }, (_, i) => `x${i}`),
    ];
    const decoded = decodeControlMessage(Buffer.from(JSON.stringify({ ...m, capabilities })));
    expect(decoded).toMatchObject({ capabilities });
  });

  it.each([
    ['33 names', Array.from({ length: MAX_CAPABILITIES + 1 }, (_, i) => `x${i}`)],
    ['a name with upper case', ['Typed-Stream-Header']],
    ['a name of 33 characters', ['a'.repeat(33)]],
    ['an empty name', ['']],
    ['a name starting with -', ['-x']],
    ['a name that is not a string', [7]],
    ['a string instead of a list', 'typed-stream-header'],
    ['null', null],
  ])('refuses capabilities that are %s with TUN_ERR_BAD_CONTROL_MESSAGE', (_what, capabilities) => {
    for (const m of [register, registered]) {
      const err = refusal(JSON.stringify({ ...m, capabilities }));
      expect(err).toBeInstanceOf(TunnelError);
      expect(err).toMatchObject({
        code: 'TUN_ERR_BAD_CONTROL_MESSAGE',
        message: expect.stringMatching(/capabilities/),
      });
    }
  });

  it('negotiates the names both sides know: unknown ones ignored, absent meaning none', () => {
    expect([...negotiateCapabilities(['from-the-future', CAPABILITIES.typedStreamHeader])]).toEqual([
      'typed-stream-header',
    ]);
    expect(negotiateCapabilities(['from-the-future']).size).toBe(0);
    expect(negotiateCapabilities(undefined).size).toBe(0);
  });
});

/** A `register` for two routes with `extra` fields, as the bytes of its JSON body. */
const registerWith = (extra: Record<string, unknown>): Buffer =>
  Buffer.from(
    JSON.stringify({
      type: 'register',
      protocolVersion: 1,
      agentId: 'a-1',
      agentVersion: '0.1.0',
      routes: ['cluster-u1', 'cluster-u1-dash'],
      ...extra,
    }),
  );

describe('routeModes in register', () => {
  const register = registerWith;

  it('maps some of the routes to mode names, or is left out', () => {
    expect(decodeControlMessage(register({ routeModes: { 'cluster-u1-dash': 'http' } }))).toMatchObject({
      routeModes: { 'cluster-u1-dash': 'http' },
    });
    expect(decodeControlMessage(register({}))).not.toHaveProperty('routeModes');
  });

  it.each([
    ['a label it does not register', { 'cluster-u1-other': 'http' }],
    ['a mode name outside the pattern', { 'cluster-u1-dash': 'HTTP!' }],
    ['a mode that is not a string', { 'cluster-u1-dash': 7 }],
    ['a list', ['http']],
    ['null', null],
    ['an inherited name as the label', JSON.parse('{"__proto__": "http"}')],
  ])('refuses %s with TUN_ERR_BAD_CONTROL_MESSAGE', (_name, routeModes) => {
    expect(() => decodeControlMessage(register({ routeModes }))).toThrow(
      expect.objectContaining({ code: 'TUN_ERR_BAD_CONTROL_MESSAGE' }),
    );
  });
});

describe('hostHeaders in register', () => {
  const register = (hostHeaders: unknown) => registerWith({ hostHeaders });

  it('maps some of the routes to Host values', () => {
    expect(decodeControlMessage(register({ 'cluster-u1-dash': 'dash.internal:8080' }))).toMatchObject({
      hostHeaders: { 'cluster-u1-dash': 'dash.internal:8080' },
    });
  });

  it.each([
    ['a label it does not register', { 'cluster-u1-x': 'a' }],
    ['a value with a space or CRLF', { 'cluster-u1-dash': 'a\r\nX-Evil: 1' }],
    ['an empty value', { 'cluster-u1-dash': '' }],
  ])('refuses %s', (_name, hostHeaders) => {
    expect(() => decodeControlMessage(register(hostHeaders))).toThrow(
      expect.objectContaining({ code: 'TUN_ERR_BAD_CONTROL_MESSAGE' }),
    );
  });
});
