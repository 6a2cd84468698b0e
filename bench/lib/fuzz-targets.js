/**
 * What bench/fuzz.js (and, briefly, test/fuzz/parsers.test.ts) feeds malformed input to: every
 * parser a peer can reach (docs/SECURITY.md). Each target has seeds (valid inputs), the built
 * files whose coverage guides it, and `run(input, random)`, which returns undefined or a string
 * saying which invariant broke:
 *
 * - only TunnelErrors with a known code come out, and a decoder that threw throws the same
 *   error again;
 * - the same bytes give the same result whole or split anywhere (split invariance), and a
 *   prefix reader leaves the same bytes after what it read;
 * - a session fed anything ends with a coded error or carries on, never throws, and holds a
 *   bounded amount of memory.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import { Duplex, PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

import { captureClientHello } from './client-hello-capture.js';
import { mutate, mutateJson } from './fuzz-engine.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
// By package name: node resolves the builds (dist/), the test runner the sources, one copy each.
const protocol = await import('@cluster-tunnel/protocol');
const clientHello = await import('@cluster-tunnel/server');
const {
  ERROR_CODES,
  TunnelError,
  FrameDecoder,
  FrameType,
  Flag,
  YamuxSession,
  ControlChannel,
  encodeHeader,
  encodeControlMessage,
  decodeControlMessage,
  encodeStreamHeader,
  encodeStreamReply,
  readStreamHeader,
  readStreamReply,
} = protocol;

/** Files whose coverage a target's guided phase follows (paths under the repository). */
const DIST = (file) => path.join(ROOT, file);

function coded(err) {
  return err instanceof TunnelError && Object.hasOwn(ERROR_CODES, err.code);
}

/** Cuts `buf` at random points into 1..8 pieces. */
function splitRandomly(buf, random) {
  const pieces = [];
  const cuts = Math.floor(random() * 8);
  const points = Array.from({ length: cuts }, () => Math.floor(random() * (buf.length + 1))).sort(
    (a, b) => a - b,
  );
  let at = 0;
  for (const p of [...points, buf.length]) {
    pieces.push(buf.subarray(at, p));
    at = p;
  }
  return pieces;
}

/** Runs `push` over `pieces`, recording events; the outcome as a comparable string. */
function decodeAll(makeDecoder, pieces) {
  const events = [];
  const decoder = makeDecoder(events);
  for (const piece of pieces) {
    try {
      // A copy: the WebSocket decoder unmasks in place, and the same input is decoded twice.
      decoder.push(Buffer.from(piece));
    } catch (err) {
      if (!coded(err)) return { broken: `threw ${err?.name}: ${err?.message}` };
      let again;
      try {
        decoder.push(Buffer.from([0]));
      } catch (e) {
        again = e;
      }
      if (again !== err) return { broken: 'a failed decoder did not throw the same error again' };
      return { outcome: `${JSON.stringify(events)} error ${err.code}` };
    }
  }
  return { outcome: JSON.stringify(events) };
}

/** Consecutive data pieces are merged: how the bytes were split must not show. */
function pushData(events, kind, piece) {
  const last = events.at(-1);
  if (last && last[0] === kind) last[1] += piece.toString('hex');
  else events.push([kind, piece.toString('hex')]);
}

function splitInvariant(makeDecoder, input, random) {
  const whole = decodeAll(makeDecoder, [input]);
  if (whole.broken) return whole.broken;
  const split = decodeAll(makeDecoder, splitRandomly(input, random));
  if (split.broken) return split.broken;
  if (whole.outcome !== split.outcome) return 'the result depends on how the bytes are split';
  return undefined;
}

// ---- seeds ----

const data = (id, flags, payload) =>
  Buffer.concat([encodeHeader(FrameType.Data, flags, id, payload.length), payload]);
const yamuxSeeds = [
  Buffer.concat([encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0), data(1, 0, Buffer.from('hello'))]),
  Buffer.concat([data(1, Flag.SYN, Buffer.from('x')), encodeHeader(FrameType.WindowUpdate, Flag.FIN, 1, 0)]),
  Buffer.concat([encodeHeader(FrameType.Ping, Flag.SYN, 0, 7), encodeHeader(FrameType.Ping, Flag.ACK, 0, 7)]),
  Buffer.concat([
    encodeHeader(FrameType.WindowUpdate, Flag.SYN, 3, 1024),
    encodeHeader(FrameType.GoAway, 0, 0, 0),
  ]),
  Buffer.concat([
    data(1, Flag.SYN, Buffer.alloc(300, 1)),
    encodeHeader(FrameType.WindowUpdate, Flag.RST, 1, 0),
  ]),
];

function wsFrame(opcode, payload, fin = true, mask) {
  const len = payload.length;
  const head = [0x80 * (fin ? 1 : 0) + opcode];
  let ext = Buffer.alloc(0);
  if (len < 126) head.push((mask ? 0x80 : 0) | len);
  else if (len < 65536) {
    head.push((mask ? 0x80 : 0) | 126);
    ext = Buffer.from([len >> 8, len & 0xff]);
  } else {
    head.push((mask ? 0x80 : 0) | 127);
    ext = Buffer.alloc(8);
    ext.writeBigUInt64BE(BigInt(len));
  }
  const body = Buffer.from(payload);
  if (mask) for (let i = 0; i < body.length; i++) body[i] ^= mask[i & 3];
  return Buffer.concat([Buffer.from(head), ext, mask ?? Buffer.alloc(0), body]);
}
const MASK = Buffer.from([1, 2, 3, 4]);
const wsSeeds = (masked) => {
  const m = masked ? MASK : undefined;
  return [
    wsFrame(2, Buffer.from('binary payload'), true, m),
    Buffer.concat([wsFrame(2, Buffer.alloc(200, 5), false, m), wsFrame(0, Buffer.from('end'), true, m)]),
    wsFrame(9, Buffer.from('ping'), true, m),
    wsFrame(8, Buffer.from([3, 0xe8, 0x6f, 0x6b]), true, m),
    wsFrame(2, Buffer.alloc(70_000, 9), true, m),
  ];
};

/** Real ClientHellos: with and without SNI and ALPN, TLS 1.3 and 1.2. */
async function captureHellos() {
  const hellos = [];
  for (const options of [
    { servername: 'proxy.localhost' },
    { servername: 'cluster-u1.proxy.localhost', ALPNProtocols: ['h2', 'http/1.1'] },
    {
      servername: 'cluster-u1-dashboard.proxy.localhost',
      ALPNProtocols: ['http/1.1'],
      maxVersion: 'TLSv1.2',
    },
    {},
  ]) {
    hellos.push(await captureClientHello(options));
  }
  return hellos;
}

const controlSeeds = [
  encodeControlMessage({
    type: 'register',
    protocolVersion: 1,
    agentId: 'agent-1',
    agentVersion: '0.1.0',
    routes: ['cluster-u1', 'cluster-u1-db'],
    capabilities: ['typed-stream-header', 'from-the-future'],
  }),
  encodeControlMessage({
    type: 'registered',
    serverId: 'server-1',
    hostnames: ['cluster-u1.proxy.localhost'],
    serverCount: 3,
    capabilities: ['typed-stream-header'],
  }),
  encodeControlMessage({ type: 'error', code: 'TUN_ERR_ROUTE_FORBIDDEN', message: 'no' }),
];

const userStream = { type: 'route', route: 'cluster-u1', remoteAddress: '203.0.113.9:40000' };
const streamSeeds = [
  Buffer.concat([encodeStreamHeader(userStream, 1), Buffer.from('after')]),
  Buffer.concat([encodeStreamHeader(userStream, 2), Buffer.from('after')]),
  Buffer.concat([
    encodeStreamHeader(
      { ...userStream, metadata: { sni: 'cluster-u1.proxy.localhost', 'trace-id': 'ä1b2' } },
      2,
    ),
    Buffer.from('after'),
  ]),
  encodeStreamHeader(
    {
      ...userStream,
      metadata: Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`key-${i}`, 'v'.repeat(40)])),
    },
    2,
  ),
  Buffer.concat([encodeStreamReply({ ok: true }), Buffer.from('after')]),
  encodeStreamReply({ ok: false, code: 'TUN_ERR_DIAL_FAILED', message: 'cannot connect' }),
];

// ---- targets ----

function yamuxDecoder(events) {
  return new FrameDecoder(
    {
      onDataStart: (h) => events.push(['start', h.streamId, h.flags, h.length]),
      onData: (_h, piece) => pushData(events, 'data', piece),
      onDataEnd: (h) => events.push(['end', h.streamId]),
      onControl: (h) => events.push(['control', h.type, h.flags, h.streamId, h.length]),
    },
    1 << 20,
  );
}

function wsDecoderFor(expectMasked) {
  return (events) =>
    new protocol.WebSocketFrameDecoder(
      {
        onData: (piece) => pushData(events, 'data', Buffer.from(piece)),
        onControl: (opcode, payload) => events.push(['control', opcode, payload.toString('hex')]),
      },
      expectMasked,
    );
}

/** A transport for a session: what the session writes is counted (the peer never reads it). */
class FeedTransport extends Duplex {
  written = 0;
  _read() {}
  _write(chunk, _enc, cb) {
    this.written += chunk.length;
    cb();
  }
}

function runSession(role, input, random) {
  const transport = new FeedTransport();
  let broken;
  const session = new YamuxSession(transport, { role, keepaliveIntervalMs: 0 });
  session.on('stream', (s) => {
    s.on('error', () => {});
    if (random() < 0.5) s.resume();
  });
  session.on('error', () => {});
  session.once('close', (err) => {
    if (err !== undefined && !coded(err)) broken = `the session closed with ${err?.name}: ${err?.message}`;
  });
  try {
    for (const piece of splitRandomly(input, random)) transport.push(piece);
  } catch (err) {
    return `a transport push threw ${err?.name}: ${err?.message}`;
  }
  const stats = session.stats;
  // Held bytes: at most the input itself plus per-piece overhead; replies: bounded by the input.
  if (stats.bufferedBytes > 2 * input.length + 64 * 1024)
    broken ??= `holds ${stats.bufferedBytes} bytes for ${input.length} fed`;
  session.destroy();
  return broken;
}

function runControl(input, random) {
  try {
    const message = decodeControlMessage(input.subarray(4));
    const again = decodeControlMessage(encodeControlMessage(message).subarray(4));
    if (JSON.stringify(again) !== JSON.stringify(message)) return 'a decoded message does not round-trip';
  } catch (err) {
    if (!coded(err)) return `decodeControlMessage threw ${err?.name}: ${err?.message}`;
  }
  // The channel's framing, fed the same bytes in pieces: the same messages or the same failure.
  const outcome = (pieces) => {
    const stream = new PassThrough();
    const channel = new ControlChannel(stream);
    const seen = [];
    channel.on('message', (m) => seen.push(m));
    channel.on('error', (e) => seen.push(`error ${e.code}`));
    for (const p of pieces) if (!stream.destroyed) stream.emit('data', p);
    return JSON.stringify(seen);
  };
  try {
    if (outcome([input]) !== outcome(splitRandomly(input, random)))
      return 'control framing depends on the split';
  } catch (err) {
    return `the control channel threw ${err?.name}: ${err?.message}`;
  }
  return undefined;
}

function runClientHello(input, random) {
  let whole;
  try {
    whole = JSON.stringify(clientHello.parseClientHello(input));
  } catch (err) {
    if (!(coded(err) && err.code === 'TUN_ERR_CLIENT_HELLO'))
      return `parseClientHello threw ${err?.name}: ${err?.message}`;
    whole = `error ${err.code}`;
  }
  const parser = new clientHello.ClientHelloParser();
  let split;
  try {
    for (const piece of splitRandomly(input, random)) split = JSON.stringify(parser.push(piece));
  } catch (err) {
    if (!(coded(err) && err.code === 'TUN_ERR_CLIENT_HELLO'))
      return `the parser threw ${err?.name}: ${err?.message}`;
    split = `error ${err.code}`;
  }
  return whole === split ? undefined : 'the ClientHello result depends on how the bytes are split';
}

/** What a prefix reader makes of `pieces`: its value and the bytes left after it, or its error. */
async function prefixOutcome(read, pieces) {
  const stream = new PassThrough();
  for (const piece of pieces) stream.write(piece);
  stream.end();
  try {
    const value = await read(stream, 1_000);
    const rest = [];
    if (!stream.readableEnded) {
      const ended = new Promise((resolve) => stream.once('end', resolve));
      stream.on('data', (chunk) => rest.push(chunk));
      stream.resume(); // the reader leaves it paused
      await ended;
    }
    return { outcome: `${JSON.stringify(value)} then ${Buffer.concat(rest).toString('hex')}` };
  } catch (err) {
    if (!coded(err)) return { broken: `${read.name} rejected with ${err?.name}: ${err?.message}` };
    return { outcome: `error ${err.code}: ${err.message}` };
  }
}

async function runStreamPrefix(input, random) {
  for (const read of [readStreamHeader, readStreamReply]) {
    const whole = await prefixOutcome(read, [input]);
    if (whole.broken) return whole.broken;
    const split = await prefixOutcome(read, splitRandomly(input, random));
    if (split.broken) return split.broken;
    if (split.outcome !== whole.outcome) return `${read.name}: the result depends on how the bytes are split`;
  }
  return undefined;
}

/**
 * Half the time a structural edit of the JSON behind a `prefixBytes`-byte prefix (the control
 * message's length, the refusal's status and length), the prefix rewritten to match; else bytes.
 */
function jsonMutator(prefixBytes, writeLength) {
  return (input, other, random) => {
    if (input.length > prefixBytes && random() < 0.5) {
      const text = mutateJson(input.subarray(prefixBytes).toString('utf8'), random);
      if (text !== undefined) {
        const body = Buffer.from(text);
        const head = Buffer.from(input.subarray(0, prefixBytes));
        writeLength(head, body.length);
        return Buffer.concat([head, body]);
      }
    }
    return mutate(input, other, random);
  };
}

/**
 * A certificate signing request as an agent sends it (DER here; PEM-wrapped per case) to a route
 * CA that allows one hostname: what comes out is a certificate or a coded refusal, never another
 * error. The CA lives in a temporary directory made once.
 */
const CSR_HOST = 'cluster-u1.proxy.localhost';
let routeCa;
async function csrSeeds() {
  const { Pkcs10CertificateRequestGenerator, SubjectAlternativeNameExtension, cryptoProvider } =
    await import('@peculiar/x509');
  const { webcrypto } = await import('node:crypto');
  cryptoProvider.set(webcrypto);
  const seeds = [];
  for (const [curve, hash] of [
    ['P-256', 'SHA-256'],
    ['P-384', 'SHA-384'],
  ]) {
    const keys = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: curve }, true, [
      'sign',
      'verify',
    ]);
    for (const names of [[CSR_HOST], [CSR_HOST, 'cluster-u2.proxy.localhost']]) {
      const csr = await Pkcs10CertificateRequestGenerator.create({
        name: `CN=${names[0]}`,
        keys,
        signingAlgorithm: { name: 'ECDSA', hash },
        extensions: [new SubjectAlternativeNameExtension(names.map((value) => ({ type: 'dns', value })))],
      });
      seeds.push(Buffer.from(csr.rawData));
    }
  }
  return seeds;
}

async function runCsr(input) {
  const server = await import('@cluster-tunnel/server');
  routeCa ??= await server.RouteCertificateAuthority.load(
    await server.RouteCertificateAuthority.dataDirFiles(
      mkdtempSync(path.join(os.tmpdir(), 'fuzz-route-ca-')),
    ),
    { create: true },
  );
  const lines = input.toString('base64').match(/.{1,64}/g) ?? [];
  const pem = `-----BEGIN CERTIFICATE REQUEST-----\n${lines.join('\n')}\n-----END CERTIFICATE REQUEST-----\n`;
  try {
    const issued = await routeCa.sign(pem, new Set([CSR_HOST]), 60_000);
    if (issued.hostnames.some((h) => h !== CSR_HOST))
      return `signed a name it does not allow: ${issued.hostnames}`;
    return undefined;
  } catch (err) {
    if (!coded(err)) return `sign threw ${err?.name}: ${err?.message}`;
    if (err.code !== 'TUN_ERR_CSR_INVALID' && err.code !== 'TUN_ERR_CERT_NAME_FORBIDDEN')
      return `sign refused with ${err.code}`;
    return undefined;
  }
}

/** Every target: name → { seeds(), files, run(input, random) (may return a promise), mutate? }. */
export const FUZZ_TARGETS = {
  'yamux-decoder': {
    seeds: async () => yamuxSeeds,
    files: [DIST('packages/protocol/dist/yamux/decoder.js'), DIST('packages/protocol/dist/yamux/frame.js')],
    run: (input, random) => splitInvariant(yamuxDecoder, input, random),
  },
  'yamux-session': {
    seeds: async () => yamuxSeeds,
    files: [DIST('packages/protocol/dist/yamux/session.js'), DIST('packages/protocol/dist/yamux/stream.js')],
    run: (input, random) => runSession(random() < 0.5 ? 'server' : 'client', input, random),
  },
  'websocket-decoder': {
    seeds: async () => [...wsSeeds(true), ...wsSeeds(false)],
    files: [DIST('packages/protocol/dist/websocket/frame-decoder.js')],
    run: (input, random) => splitInvariant(wsDecoderFor(random() < 0.5), input, random),
  },
  'client-hello': {
    seeds: captureHellos,
    files: [DIST('packages/server/dist/client-hello.js')],
    run: runClientHello,
  },
  control: {
    seeds: async () => controlSeeds,
    files: [DIST('packages/protocol/dist/tunnel/control.js')],
    run: runControl,
    mutate: jsonMutator(4, (head, n) => head.writeUInt32BE(n, 0)),
  },
  csr: {
    seeds: csrSeeds,
    files: [DIST('packages/server/dist/route-ca.js')],
    run: runCsr,
  },
  'stream-prefix': {
    seeds: async () => streamSeeds,
    files: [DIST('packages/protocol/dist/tunnel/stream-header.js')],
    run: runStreamPrefix,
    // The refusal's reason is JSON behind status and a 2-byte length.
    mutate: jsonMutator(3, (head, n) => head.writeUInt16BE(Math.min(n, 0xffff), 1)),
  },
};
