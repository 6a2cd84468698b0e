/**
 * One body of session behaviour run over every transport the tunnel uses: an in-memory pipe,
 * TCP, TLS and WebSocket over TLS (hashicorp/yamux's habit). Real sockets on 127.0.0.1.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it, onTestFinished } from 'vitest';
import type { TunnelError } from '@cluster-tunnel/protocol';
import { YamuxSession, type SessionOptions, type YamuxStream } from '@cluster-tunnel/protocol';
import { closeOf, echoStreams } from '../helpers/sessions.js';
import { pollUntil, readToEnd, sha256 } from '../helpers/streams.js';
import { transports, type Transport } from '../helpers/transports.js';

interface Pair {
  client: YamuxSession;
  server: YamuxSession;
}

async function sessions(
  transport: Transport,
  clientOptions: Partial<SessionOptions> = {},
  serverOptions: Partial<SessionOptions> = {},
): Promise<Pair> {
  const pair = await transport.pair();
  const client = new YamuxSession(pair.a, { keepaliveIntervalMs: 0, ...clientOptions, role: 'client' });
  const server = new YamuxSession(pair.b, { keepaliveIntervalMs: 0, ...serverOptions, role: 'server' });
  onTestFinished(async () => {
    client.destroy();
    server.destroy();
    await pair.close();
  });
  return { client, server };
}

/** Resolves once neither session has a stream left in its table. */
function untilStreamTablesEmpty(client: YamuxSession, server: YamuxSession): Promise<unknown> {
  return pollUntil(
    () => client.stats.openStreams === 0 && server.stats.openStreams === 0,
    10_000,
    'empty tables',
  );
}

/** The next stream the peer opens to `session`. */
async function nextStream(session: YamuxSession): Promise<YamuxStream> {
  const [stream] = (await once(session, 'stream')) as [YamuxStream];
  return stream;
}

function errorOf(stream: YamuxStream): Promise<TunnelError> {
  return new Promise((resolve) => stream.once('error', (err) => resolve(err as TunnelError)));
}

describe.each(transports)('yamux session over $name', (transport) => {
  it('echoes data on streams opened from either side', async () => {
    const { client, server } = await sessions(transport);
    echoStreams(server);
    echoStreams(client);
    const payload = randomBytes(300_000);
    const fromClient = client.open();
    fromClient.end(payload);
    expect(sha256(await readToEnd(fromClient))).toBe(sha256(payload));
    const fromServer = server.open();
    fromServer.end(payload);
    expect(sha256(await readToEnd(fromServer))).toBe(sha256(payload));
    expect(fromClient.id % 2).toBe(1);
    expect(fromServer.id % 2).toBe(0);
  });

  it('carries 1,000 concurrent streams of random sizes without losing or mixing a byte', async () => {
    const { client, server } = await sessions(transport);
    echoStreams(server);
    const results = await Promise.all(
      Array.from({ length: 1000 }, async (_, i) => {
        const payload = randomBytes(i % 10 === 0 ? 200_000 + i : Math.floor(Math.random() * 20_000));
        const stream = client.open();
        stream.end(payload);
        return sha256(await readToEnd(stream)) === sha256(payload);
      }),
    );
    expect(results.filter((ok) => !ok)).toHaveLength(0);
    await untilStreamTablesEmpty(client, server);
  });

  it('half-closes in each direction: the other direction keeps flowing', async () => {
    const { client, server } = await sessions(transport);
    const inbound = nextStream(server);
    const stream = client.open();
    stream.end('request');
    const serverStream = await inbound;
    expect((await readToEnd(serverStream)).toString()).toBe('request');
    // The client has finished writing, yet still reads what the server sends after that.
    serverStream.write('response part 1, ');
    serverStream.end('part 2');
    expect((await readToEnd(stream)).toString()).toBe('response part 1, part 2');
    await untilStreamTablesEmpty(client, server);

    // And the other way: the server ends first while the client keeps writing.
    const inbound2 = nextStream(server);
    const stream2 = client.open();
    stream2.write('hello');
    const serverStream2 = await inbound2;
    serverStream2.end('bye');
    expect((await readToEnd(stream2)).toString()).toBe('bye');
    stream2.end(' and more after your FIN');
    expect((await readToEnd(serverStream2)).toString()).toBe('hello and more after your FIN');
  });

  it('propagates a reset in both directions with TUN_ERR_STREAM_RESET', async () => {
    const { client, server } = await sessions(transport);
    let inbound = nextStream(server);
    const a = client.open();
    a.write('x');
    let b = await inbound;
    const bError = errorOf(b);
    a.destroy();
    expect((await bError).code).toBe('TUN_ERR_STREAM_RESET');

    inbound = nextStream(server);
    const c = client.open();
    c.write('y');
    b = await inbound;
    const cError = errorOf(c);
    b.destroy();
    expect((await cError).code).toBe('TUN_ERR_STREAM_RESET');
    await untilStreamTablesEmpty(client, server);
    // The session itself is unharmed.
    echoStreams(server);
    const d = client.open();
    d.end('still alive');
    expect((await readToEnd(d)).toString()).toBe('still alive');
  });

  it('GoAway refuses new streams while open streams finish, then both sessions close cleanly', async () => {
    const { client, server } = await sessions(transport);
    const inbound = nextStream(server);
    const open = client.open();
    open.write('before goaway');
    const serverSide = await inbound;
    const goaway = once(server, 'goaway');
    const serverClose = closeOf(server);
    const clientClosed = client.close();
    await goaway;
    expect(() => server.open()).toThrow(expect.objectContaining({ code: 'TUN_ERR_SESSION_CLOSED' }));
    expect(() => client.open()).toThrow(expect.objectContaining({ code: 'TUN_ERR_SESSION_CLOSED' }));
    // The stream opened before GoAway still works both ways.
    serverSide.end('answer');
    expect((await readToEnd(open)).toString()).toBe('answer');
    open.end(' tail');
    expect((await readToEnd(serverSide)).toString()).toBe('before goaway tail');
    await clientClosed;
    const serverErr = await serverClose;
    expect(serverErr).toBeUndefined();
    expect(client.isClosed && server.isClosed).toBe(true);
  });

  it('detects a peer that stops answering pings within keepaliveTimeoutMs', async () => {
    const pair = await transport.pair();
    onTestFinished(() => pair.close());
    // The far end reads (so TCP does not stall) but never answers: a hung agent.
    pair.b.resume();
    const session = new YamuxSession(pair.a, {
      role: 'client',
      keepaliveIntervalMs: 50,
      keepaliveTimeoutMs: 150,
    });
    const started = Date.now();
    const err = await closeOf(session);
    expect(err?.code).toBe('TUN_ERR_TIMEOUT');
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('keeps memory bounded behind a stalled reader while 1 GiB is offered', async () => {
    const { client, server } = await sessions(transport);
    const inbound = nextStream(server);
    const stream = client.open();
    stream.on('error', () => undefined);
    let offered = 0;
    const chunk = Buffer.alloc(64 * 1024, 7);
    const source = Readable.from(
      (function* () {
        for (let i = 0; i < (1024 * 1024 * 1024) / chunk.length; i++) {
          offered += chunk.length;
          yield chunk;
        }
      })(),
    );
    const sending = pipeline(source, stream).catch(() => undefined);
    const serverStream = await inbound;
    serverStream.on('error', () => undefined);
    serverStream.pause(); // the reader stops
    await pollUntil(() => client.stats.blockedStreams === 1, 10_000, 'the writer to block on the window');
    const offeredWhenBlocked = offered;
    // A ping answered: the server has handled everything before it and sent no window in the
    // meantime, and the round trip gave a writer not held by the window every chance to go on.
    await client.ping(10_000);
    expect(stream.writableNeedDrain).toBe(true);
    // Nothing more leaves the producer: its writes wait for window that never comes.
    expect(offered - offeredWhenBlocked).toBeLessThanOrEqual(256 * 1024);
    expect(offered).toBeLessThan(8 * 1024 * 1024);
    expect(client.stats.bufferedBytes).toBeLessThan(2 * 1024 * 1024);
    expect(server.stats.bufferedBytes).toBeLessThanOrEqual(client.options.maxWindowBytes);
    expect(serverStream.readableLength).toBeLessThanOrEqual(256 * 1024);
    // The reader resumes: the flow restarts.
    let received = 0;
    serverStream.on('data', (d: Buffer) => (received += d.length));
    serverStream.resume();
    await pollUntil(() => received > 16 * 1024 * 1024, 20_000, 'the flow to resume');
    source.destroy();
    stream.destroy();
    await sending;
  });

  it('leaves an empty stream table after 100,000 short streams', async () => {
    const { client, server } = await sessions(transport);
    echoStreams(server);
    const total = 100_000;
    const concurrency = 200;
    let next = 0;
    let ok = 0;
    const worker = async (): Promise<void> => {
      while (next < total) {
        next++;
        const s = client.open();
        s.end('ping');
        if ((await readToEnd(s)).toString() === 'ping') ok++;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    expect(ok).toBe(total);
    await untilStreamTablesEmpty(client, server);
  }, 180_000);
});
