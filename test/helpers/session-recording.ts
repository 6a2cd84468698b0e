/**
 * A real session's bytes, recorded off an in-memory pipe, for tests that feed a decoder or a
 * session recorded input rather than hand-made frames.
 */
import { once } from 'node:events';
import { expect } from 'vitest';
import { YamuxSession, type YamuxStream } from '@cluster-tunnel/protocol';
import { pipePairForTest, readToEnd, withDeadline } from './streams.js';

const KiB = 1024;

/**
 * Runs a client and a server session over an in-memory pipe (destroyed when the test finishes)
 * and returns every byte the client wrote, in order. The recording holds: SYNs (WindowUpdate),
 * Data both ways on several streams, window updates (the client reads 400 KiB back, more than
 * one window), FIN, RST, pings in both directions (the client's Ping SYN and its Ping ACK) and
 * the closing GoAway as the last frame.
 */
export async function recordClientToServerBytes(): Promise<Buffer> {
  const { a, b } = pipePairForTest();
  const recorded: Buffer[] = [];
  b.on('data', (chunk: Buffer) => recorded.push(Buffer.from(chunk)));
  const client = new YamuxSession(a, { role: 'client', keepaliveIntervalMs: 0 });
  const server = new YamuxSession(b, { role: 'server', keepaliveIntervalMs: 0 });
  server.on('stream', (stream: YamuxStream) => {
    stream.on('error', () => undefined);
    let received = 0;
    stream.on('data', (chunk: Buffer) => {
      received += chunk.length;
      stream.write(chunk);
    });
    // Enough back on the first stream that the client's reads must grant window.
    stream.on('end', () =>
      stream.end(stream.id === 1 ? Buffer.alloc(400 * KiB, 7) : Buffer.from(`${received}`)),
    );
  });

  const first = client.open();
  const firstReply = readToEnd(first);
  first.write(Buffer.alloc(1500, 1));
  first.write(Buffer.alloc(1500, 2));
  first.end(Buffer.from('last words'));
  expect((await firstReply).length).toBe(3010 + 400 * KiB);

  const second = client.open();
  second.on('error', () => undefined);
  second.write(Buffer.alloc(1000, 3));
  await once(second, 'data');
  second.destroy(); // RST

  const third = client.open();
  const thirdReply = readToEnd(third);
  third.end(Buffer.from('x'));
  await thirdReply;

  await client.ping(); // Ping SYN from the client
  await server.ping(); // Ping ACK from the client
  await withDeadline(Promise.all([client.close(), once(server, 'close')]), 5_000, 'sessions closing');
  return Buffer.concat(recorded);
}
