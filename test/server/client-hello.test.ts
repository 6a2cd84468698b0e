import { once } from 'node:events';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import fc from 'fast-check';
import { generate } from 'selfsigned';
import { beforeAll, describe, expect, it, onTestFinished, vi } from 'vitest';
import {
  DEFAULT_MAX_CLIENT_HELLO_BYTES,
  ClientHelloParser,
  MAX_CLIENT_HELLO_RECORDS,
  parseClientHello,
  readClientHello,
} from '../../packages/server/src/client-hello.js';
import type { ClientHello, ReadClientHelloOptions } from '../../packages/server/src/client-hello.js';
import { captureClientHello } from '../../bench/lib/client-hello-capture.js';
import { withDeadline } from '../helpers/streams.js';

const HOST = '127.0.0.1';
const LISTENER_EVENTS = ['data', 'end', 'close', 'error'] as const;

let echoKeyPem: string;
let echoCertPem: string;

beforeAll(async () => {
  const pems = await generate([{ name: 'commonName', value: 'echo.test' }], {
    keySize: 2048,
    algorithm: 'sha256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: 'echo.test' }] }],
  });
  echoKeyPem = pems.private;
  echoCertPem = pems.cert;
});

async function listen(server: net.Server): Promise<number> {
  server.listen(0, HOST);
  await once(server, 'listening');
  onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as AddressInfo).port;
}

/** A server whose every connection is handed to `onSocket`; sockets are destroyed after the test. */
async function startRawServer(onSocket: (socket: net.Socket) => void): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    onSocket(socket);
  });
  onTestFinished(() => sockets.forEach((socket) => socket.destroy()));
  return listen(server);
}

/**
 * Counts what the server side of a connection receives (`attach` it to the socket): `bytes`,
 * `segments` (reads), and `until(n)`, which resolves once `n` bytes have arrived.
 */
function receivedCounter() {
  let bytes = 0;
  let segments = 0;
  const waiters = new Set<() => void>();
  return {
    get segments(): number {
      return segments;
    },
    attach(socket: net.Socket): void {
      socket.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        segments++;
        for (const waiter of waiters) waiter();
      });
    },
    until(n: number): Promise<void> {
      let waiter: () => void = () => undefined;
      const arrived = new Promise<void>((resolve) => {
        waiter = () => {
          if (bytes >= n) resolve();
        };
        waiter();
        waiters.add(waiter);
      });
      return withDeadline(arrived, 5_000, () => `${n} bytes at the server (got ${bytes})`).finally(() =>
        waiters.delete(waiter),
      );
    },
  };
}

/** Runs readClientHello on the next connection to a fresh server; `onSocket` sees the socket first. */
async function serverReading(
  opts: ReadClientHelloOptions,
  onSocket: (socket: net.Socket) => void = () => {},
): Promise<{ port: number; result: Promise<ClientHello> }> {
  let deliver!: (result: Promise<ClientHello>) => void;
  const accepted = new Promise<Promise<ClientHello>>((resolve) => (deliver = resolve));
  const port = await startRawServer((socket) => {
    onSocket(socket);
    deliver(readClientHello(socket, opts));
  });
  const result = accepted.then((inner) => inner);
  result.catch(() => {}); // observed by the test; avoid an unhandled rejection before it awaits
  return { port, result };
}

function tlsClient(options: tls.ConnectionOptions): tls.TLSSocket {
  const client = tls.connect({ host: HOST, rejectUnauthorized: false, ...options });
  client.on('error', () => {});
  onTestFinished(() => {
    client.destroy();
  });
  return client;
}

function rawClient(port: number): net.Socket {
  const client = net.connect({ host: HOST, port, noDelay: true });
  client.on('error', () => {});
  onTestFinished(() => {
    client.destroy();
  });
  return client;
}

/** Re-frames the handshake bytes of `hello` into TLS records of at most `fragmentBytes` each. */
/** TLS records in `wire` (whole records only). */
function recordCount(wire: Buffer): number {
  let n = 0;
  for (let offset = 0; offset + 5 <= wire.length; n++) offset += 5 + wire.readUInt16BE(offset + 3);
  return n;
}

function reframe(hello: Buffer, fragmentBytes: number[]): Buffer {
  const records: Buffer[] = [];
  let offset = 0;
  while (offset < hello.length) {
    expect(hello[offset]).toBe(22);
    const length = hello.readUInt16BE(offset + 3);
    records.push(hello.subarray(offset + 5, offset + 5 + length));
    offset += 5 + length;
  }
  const handshake = Buffer.concat(records);
  const out: Buffer[] = [];
  let i = 0;
  for (let position = 0; position < handshake.length; i++) {
    const size = Math.max(1, fragmentBytes[i % fragmentBytes.length] ?? 1);
    const payload = handshake.subarray(position, position + size);
    const header = Buffer.from([22, 3, 1, 0, 0]);
    header.writeUInt16BE(payload.length, 3);
    out.push(header, payload);
    position += payload.length;
  }
  return Buffer.concat(out);
}

async function echoOnce(client: tls.TLSSocket, message: string): Promise<string> {
  await once(client, 'secureConnect');
  client.write(message);
  const [chunk] = (await once(client, 'data')) as [Buffer];
  return chunk.toString();
}

describe('readClientHello', () => {
  it('reads the SNI, lower-cased, and the ALPN list of a real TLS client', async () => {
    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000 });
    tlsClient({ port, servername: 'Cluster-U1.Proxy.Localhost', ALPNProtocols: ['h2', 'http/1.1'] });
    const hello = await result;
    expect(hello.serverName).toBe('cluster-u1.proxy.localhost');
    expect(hello.alpn).toEqual(['h2', 'http/1.1']);
    expect(parseClientHello(hello.bytes)).toMatchObject({
      complete: true,
      consumedBytes: hello.bytes.length,
    });
  });

  it('reports no server name when the client connects to an IP address without servername', async () => {
    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000 });
    tlsClient({ port });
    const hello = await result;
    expect(hello.serverName).toBeUndefined();
    expect(hello.alpn).toEqual([]);
  });

  it('leaves the socket paused with none of its listeners after success and after failure', async () => {
    const sockets: net.Socket[] = [];
    const before: number[][] = [];
    const results: Promise<ClientHello>[] = [];
    const port = await startRawServer((socket) => {
      sockets.push(socket);
      before.push(LISTENER_EVENTS.map((event) => socket.listenerCount(event)));
      const result = readClientHello(socket, { handshakeTimeoutMs: 5_000 });
      result.catch(() => {});
      results.push(result);
    });
    tlsClient({ port, servername: 'a.proxy.localhost' });
    await expect.poll(() => results.length).toBe(1);
    await results[0];
    rawClient(port).write('GET / HTTP/1.1\r\n\r\n');
    await expect.poll(() => results.length).toBe(2);
    await expect(results[1]).rejects.toMatchObject({ code: 'TUN_ERR_CLIENT_HELLO' });
    for (const [i, socket] of sockets.entries()) {
      expect(LISTENER_EVENTS.map((event) => socket.listenerCount(event))).toEqual(before[i]);
      expect(socket.isPaused()).toBe(true);
    }
  });

  it('assembles a ClientHello written one byte per TCP segment', async () => {
    const captured = await captureClientHello({
      servername: 'cluster-u2.proxy.localhost',
      ALPNProtocols: ['h2'],
    });
    const received = receivedCounter();
    const { port, result } = await serverReading({ handshakeTimeoutMs: 20_000 }, (socket) =>
      received.attach(socket),
    );
    const client = rawClient(port);
    await once(client, 'connect');
    // Each byte is written once the one before it has arrived: one byte per read.
    for (const [i, byte] of captured.entries()) {
      client.write(Buffer.from([byte]));
      await received.until(i + 1);
    }
    const hello = await result;
    expect(hello).toEqual({ serverName: 'cluster-u2.proxy.localhost', alpn: ['h2'], bytes: captured });
    expect(received.segments).toBe(captured.length); // the hello really arrived byte by byte
  });

  it('assembles a ClientHello fragmented across several TLS records', async () => {
    const captured = await captureClientHello({
      servername: 'cluster-u3.proxy.localhost',
      ALPNProtocols: ['http/1.1'],
    });
    const fragmented = reframe(captured, [7, 1, 50, 3]);
    const received = receivedCounter();
    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000 }, (socket) =>
      received.attach(socket),
    );
    const client = rawClient(port);
    client.write(fragmented.subarray(0, 100));
    // The rest only once the first part has arrived: two reads at the server.
    await received.until(100);
    client.write(fragmented.subarray(100));
    const hello = await result;
    expect(hello).toEqual({
      serverName: 'cluster-u3.proxy.localhost',
      alpn: ['http/1.1'],
      bytes: fragmented,
    });
  });

  it('reads a real hello that the TLS client itself split over two records when allowed its size', async () => {
    // 90 ALPN ids of 250 bytes make a ~23 KB hello: more than one 16 KiB record.
    const alpn = Array.from({ length: 90 }, (_, i) => `p${i}`.padEnd(250, 'x'));
    const captured = await captureClientHello({ servername: 'big.proxy.localhost', ALPNProtocols: alpn });
    expect(captured.readUInt16BE(3)).toBeLessThan(captured.length - 5); // more than one record
    const hello = parseClientHello(captured, 64 * 1024);
    expect(hello).toMatchObject({ complete: true, serverName: 'big.proxy.localhost', alpn });

    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000 });
    tlsClient({ port, servername: 'big.proxy.localhost', ALPNProtocols: alpn });
    await expect(result).rejects.toMatchObject({
      code: 'TUN_ERR_CLIENT_HELLO',
      details: { reason: 'ClientHello too large' },
    });
  });

  it('rejects plain HTTP with TUN_ERR_CLIENT_HELLO on its first byte', async () => {
    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000 });
    rawClient(port).write('G');
    await expect(result).rejects.toMatchObject({ code: 'TUN_ERR_CLIENT_HELLO' });
  });

  it('fails with TUN_ERR_HANDSHAKE_TIMEOUT when the client stays silent', async () => {
    const { port, result } = await serverReading({ handshakeTimeoutMs: 100 });
    const client = rawClient(port);
    const startedMs = Date.now();
    await expect(result).rejects.toMatchObject({ code: 'TUN_ERR_HANDSHAKE_TIMEOUT' });
    expect(Date.now() - startedMs).toBeLessThan(2_000);
    expect(client.destroyed).toBe(false); // the caller decides what to do with the socket
  });

  it('fails with TUN_ERR_HANDSHAKE_TIMEOUT when the hello stops half way', async () => {
    const captured = await captureClientHello({ servername: 'x.proxy.localhost' });
    const { port, result } = await serverReading({ handshakeTimeoutMs: 150 });
    rawClient(port).write(captured.subarray(0, 40));
    await expect(result).rejects.toMatchObject({
      code: 'TUN_ERR_HANDSHAKE_TIMEOUT',
      details: { readBytes: 40 },
    });
  });

  it('fails with TUN_ERR_TRANSPORT_CLOSED when the client ends before the hello is complete', async () => {
    const captured = await captureClientHello({ servername: 'x.proxy.localhost' });
    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000 });
    rawClient(port).end(captured.subarray(0, 60));
    await expect(result).rejects.toMatchObject({ code: 'TUN_ERR_TRANSPORT_CLOSED' });
  });

  it('rejects a hello larger than maxClientHelloBytes', async () => {
    const captured = await captureClientHello({ servername: 'x.proxy.localhost' });
    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000, maxClientHelloBytes: 64 });
    rawClient(port).write(captured);
    await expect(result).rejects.toMatchObject({ code: 'TUN_ERR_CLIENT_HELLO' });
  });

  it('rejects a hello that declares an oversized length before its bytes arrive', async () => {
    const { port, result } = await serverReading({ handshakeTimeoutMs: 5_000 });
    // One full record announcing a 1 MiB ClientHello.
    rawClient(port).write(Buffer.from([22, 3, 1, 0x40, 0, 1, 0x10, 0, 0]));
    await expect(result).rejects.toMatchObject({ code: 'TUN_ERR_CLIENT_HELLO' });
  });
});

describe('replaying the bytes read', () => {
  it('completes a handshake and an echo after unshifting the bytes into a local TLS server', async () => {
    const secureContext = tls.createSecureContext({ key: echoKeyPem, cert: echoCertPem });
    const port = await startRawServer((socket) => {
      void readClientHello(socket, { handshakeTimeoutMs: 5_000 }).then((hello) => {
        expect(hello.serverName).toBe('echo.test');
        socket.unshift(hello.bytes);
        const secure = new tls.TLSSocket(socket, { isServer: true, secureContext });
        secure.on('error', () => {});
        secure.pipe(secure);
      });
    });
    const client = tlsClient({ port, servername: 'echo.test', ca: echoCertPem, rejectUnauthorized: true });
    expect(await echoOnce(client, 'ping')).toBe('ping');
    expect(client.authorized).toBe(true);
  });

  it('completes a handshake and an echo after replaying the bytes to an upstream TLS server', async () => {
    const upstream = tls.createServer({ key: echoKeyPem, cert: echoCertPem }, (secure) => {
      secure.on('error', () => {});
      secure.pipe(secure);
    });
    const upstreamPort = await listen(upstream);
    const port = await startRawServer((socket) => {
      void readClientHello(socket, { handshakeTimeoutMs: 5_000 }).then((hello) => {
        const onward = net.connect({ host: HOST, port: upstreamPort });
        onward.on('error', () => socket.destroy());
        onTestFinished(() => {
          onward.destroy();
        });
        onward.write(hello.bytes);
        socket.pipe(onward).pipe(socket);
      });
    });
    const client = tlsClient({ port, servername: 'echo.test', ca: echoCertPem, rejectUnauthorized: true });
    expect(await echoOnce(client, 'pong')).toBe('pong');
  });
});

describe('parseClientHello', () => {
  const helloError = expect.objectContaining({ code: 'TUN_ERR_CLIENT_HELLO' });
  const capture = (): Promise<Buffer> =>
    captureClientHello({ servername: 'cluster-p.proxy.localhost', ALPNProtocols: ['h2', 'http/1.1'] });

  it('says how many bytes it needs while the hello is incomplete', async () => {
    const captured = await capture();
    expect(parseClientHello(Buffer.alloc(0))).toEqual({ complete: false, neededBytes: 1 });
    expect(parseClientHello(captured.subarray(0, 3))).toEqual({ complete: false, neededBytes: 5 });
    expect(parseClientHello(captured.subarray(0, 10))).toEqual({
      complete: false,
      neededBytes: captured.length,
    });
  });

  it('rejects records that are not handshake records, bad versions and invalid host names', async () => {
    const captured = await capture();
    expect(() => parseClientHello(Buffer.from([23]))).toThrow(helloError);
    expect(() => parseClientHello(Buffer.from([22, 2]))).toThrow(helloError);
    expect(() => parseClientHello(Buffer.from([22, 3, 1, 0, 4, 2, 0, 0, 0]))).toThrow(helloError);
    const sniAt = captured.indexOf('cluster-p.proxy.localhost');
    const badName = Buffer.from(captured);
    badName.write('/', sniAt + 3, 'latin1');
    expect(() => parseClientHello(badName)).toThrow(
      expect.objectContaining({
        code: 'TUN_ERR_CLIENT_HELLO',
        details: expect.objectContaining({ reason: 'invalid SNI host name' }),
      }),
    );
  });

  it('rejects a hello whose inner lengths overrun the message', async () => {
    const captured = await capture();
    const truncated = Buffer.from(captured);
    // Shrink the handshake length (and the record) by 10 bytes so the extensions overrun it.
    truncated.writeUInt16BE(truncated.readUInt16BE(3) - 10, 3);
    truncated.writeUIntBE(truncated.readUIntBE(6, 3) - 10, 6, 3);
    expect(() => parseClientHello(truncated.subarray(0, truncated.length - 10))).toThrow(helloError);
  });

  it('gives the same answer however the bytes are split into segments and records', async () => {
    const captured = await capture();
    const expected = parseClientHello(captured);
    expect(expected).toMatchObject({
      complete: true,
      serverName: 'cluster-p.proxy.localhost',
      alpn: ['h2', 'http/1.1'],
    });
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 600 }), { minLength: 1, maxLength: 8 }),
        fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 20 }),
        fc.boolean(),
        (fragmentBytes, segmentBytes, refragment) => {
          const wire = refragment ? reframe(captured, fragmentBytes) : captured;
          const records = recordCount(wire);
          // Feed segments as readClientHello would: once to a fresh parse of everything so far,
          // and piece by piece to one incremental parser; both must agree.
          const parser = new ClientHelloParser(DEFAULT_MAX_CLIENT_HELLO_BYTES);
          let received = 0;
          let i = 0;
          // Each step reads at least one more byte: the whole hello is in after wire.length steps.
          for (let step = 0; step <= wire.length; step++) {
            const from = received;
            received = Math.min(wire.length, received + (segmentBytes[i++ % segmentBytes.length] ?? 1));
            if (records > MAX_CLIENT_HELLO_RECORDS) {
              // Over the cap: refused, by both, at the record after the last one allowed.
              let refused: unknown;
              try {
                parser.push(wire.subarray(from, received));
              } catch (err) {
                refused = err;
              }
              if (refused === undefined) continue;
              expect(refused).toMatchObject({ code: 'TUN_ERR_CLIENT_HELLO' });
              expect(() => parseClientHello(wire.subarray(0, received))).toThrow(/more than 32 records/);
              return;
            }
            const parsed = parseClientHello(wire.subarray(0, received), DEFAULT_MAX_CLIENT_HELLO_BYTES);
            expect(parser.push(wire.subarray(from, received))).toEqual(parsed);
            if (parsed.complete) {
              expect(received).toBe(wire.length);
              expect(parsed).toEqual({ ...expected, consumedBytes: wire.length });
              return;
            }
            expect(parsed.neededBytes).toBeGreaterThan(received);
          }
          expect.unreachable(`no complete parse after all ${wire.length} bytes`);
        },
      ),
      { numRuns: 300 },
    );
  });
});

/** A ClientHello for `serverName` with a padding extension (type 21) of `paddingBytes`, in one record. */
function syntheticHello(serverName: string, paddingBytes: number): Buffer {
  const name = Buffer.from(serverName);
  const sni = Buffer.concat([
    Buffer.from([0, 0]), // extension type server_name
    u16(name.length + 5),
    u16(name.length + 3),
    Buffer.from([0]), // host_name
    u16(name.length),
    name,
  ]);
  const padding = Buffer.concat([Buffer.from([0, 21]), u16(paddingBytes), Buffer.alloc(paddingBytes)]);
  const extensions = Buffer.concat([sni, padding]);
  const body = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7), // random
    Buffer.from([0]), // empty session id
    u16(2),
    Buffer.from([0x13, 0x01]), // one cipher suite
    Buffer.from([1, 0]), // null compression
    u16(extensions.length),
    extensions,
  ]);
  const handshake = Buffer.concat([
    Buffer.from([1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff]),
    body,
  ]);
  return Buffer.concat([Buffer.from([22, 3, 1]), u16(handshake.length), handshake]);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n, 0);
  return b;
}

describe('ClientHellos split to cost CPU', () => {
  it(`parses a hello in ${MAX_CLIENT_HELLO_RECORDS} records and refuses one in ${MAX_CLIENT_HELLO_RECORDS + 1}`, () => {
    const hello = syntheticHello('cluster-u1.proxy.localhost', 2_000);
    const handshakeBytes = hello.length - 5;
    const inRecords = (n: number): Buffer => reframe(hello, [Math.ceil(handshakeBytes / n)]);
    expect(recordCount(inRecords(MAX_CLIENT_HELLO_RECORDS))).toBe(MAX_CLIENT_HELLO_RECORDS);
    expect(parseClientHello(inRecords(MAX_CLIENT_HELLO_RECORDS))).toMatchObject({
      complete: true,
      serverName: 'cluster-u1.proxy.localhost',
    });
    const tooMany = reframe(hello, [Math.floor(handshakeBytes / (MAX_CLIENT_HELLO_RECORDS + 1))]);
    expect(recordCount(tooMany)).toBeGreaterThan(MAX_CLIENT_HELLO_RECORDS);
    expect(() => parseClientHello(tooMany)).toThrow(/spans more than 32 records/);
    // One byte per record is refused at the 33rd record, after 33 × 6 bytes, not at the end.
    const oneByteRecords = reframe(hello, [1]);
    const parser = new ClientHelloParser();
    let refusedAt = -1;
    for (let i = 0; i < oneByteRecords.length && refusedAt < 0; i++) {
      try {
        parser.push(oneByteRecords.subarray(i, i + 1));
      } catch {
        refusedAt = i;
      }
    }
    expect(refusedAt).toBe(MAX_CLIENT_HELLO_RECORDS * 6 + 4);
  });

  it('regression client-hello-quadratic: reads a 16 KiB hello in 32 records, one byte per TCP segment, copying each byte a bounded number of times', async () => {
    const hello = reframe(syntheticHello('cluster-u1.proxy.localhost', 16_000), [Math.ceil(16_100 / 32)]);
    expect(recordCount(hello)).toBeLessThanOrEqual(MAX_CLIENT_HELLO_RECORDS);
    const copied: number[] = [];
    const realConcat = Buffer.concat.bind(Buffer);
    vi.spyOn(Buffer, 'concat').mockImplementation((list: readonly Uint8Array[], total?: number) => {
      const out = realConcat(list, total);
      copied.push(out.length);
      return out;
    });
    const parser = new ClientHelloParser();
    let result;
    for (let i = 0; i < hello.length; i++) result = parser.push(hello.subarray(i, i + 1));
    vi.restoreAllMocks();
    expect(result).toMatchObject({ complete: true, serverName: 'cluster-u1.proxy.localhost' });
    // Each record is joined when its header and when its payload is whole, and the hello once at
    // the end: a small multiple of its size. Parsing from the start on every record copied
    // about records × size / 2 (over 250 KiB here), and more with more records.
    const total = copied.reduce((a, b) => a + b, 0);
    expect(total).toBeLessThan(4 * hello.length);
  });
});

describe('ClientHelloParser, regressions the fuzzer found (bench/fuzz.js)', () => {
  it('keeps the whole hello as its answer: bytes pushed after it change nothing', async () => {
    const hello = await captureClientHello({ servername: 'cluster-u1.proxy.localhost' });
    const parser = new ClientHelloParser();
    const first = parser.push(hello);
    expect(first).toMatchObject({ complete: true, consumedBytes: hello.length });
    // Before: the bytes after were parsed as the hello's next record, and consumedBytes doubled.
    expect(parser.push(hello)).toEqual(first);
  });

  it.each([
    ['announced too large', Buffer.from([22, 3, 1, 1, 0x8d, 1, 0, 0x50, 4, 0x30, 0xd3])],
    ['not a ClientHello', Buffer.from([22, 3, 1, 1, 0x8d, 2])],
  ])('judges a handshake header %s as soon as its bytes arrive, however they are split', (_what, bytes) => {
    let whole: unknown;
    try {
      parseClientHello(bytes);
    } catch (err) {
      whole = err;
    }
    expect(whole).toMatchObject({ code: 'TUN_ERR_CLIENT_HELLO' });
    for (let cut = 0; cut <= bytes.length; cut++) {
      const parser = new ClientHelloParser();
      // Before: after a record header alone, the parser waited for the whole record.
      expect(() => {
        parser.push(bytes.subarray(0, cut));
        parser.push(bytes.subarray(cut));
      }).toThrow((whole as Error).message);
    }
  });
});
