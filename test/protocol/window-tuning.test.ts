/**
 * Window auto-tuning: on a long link one stream must not be capped at 256 KiB per round trip
 * (frp had to raise its window to 6 MiB for this). The receiver doubles its window when a whole
 * window is used within a few measured round trips, up to maxWindowBytes, and no further.
 */
import { Duplex } from 'node:stream';
import { describe, expect, it, onTestFinished } from 'vitest';
import { YamuxSession, type YamuxStream } from '@cluster-tunnel/protocol';
import { pollUntil } from '../helpers/streams.js';

/** An in-memory link that delivers every chunk `delayMs` after it was written, in order. */
function delayedPipePair(delayMs: number): { a: Duplex; b: Duplex } {
  const make = (): Duplex & { peer?: Duplex } => {
    const end: Duplex & { peer?: Duplex } = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        const peer = end.peer!;
        setTimeout(() => peer.push(chunk), delayMs);
        cb();
      },
      final(cb) {
        const peer = end.peer!;
        setTimeout(() => peer.push(null), delayMs);
        cb();
      },
    });
    return end;
  };
  const a = make();
  const b = make();
  a.peer = b;
  b.peer = a;
  return { a, b };
}

async function transfer(
  delayMs: number,
  totalBytes: number,
  maxWindowBytes: number,
): Promise<{ window: number; receiverBuffered: number[] }> {
  const { a, b } = delayedPipePair(delayMs);
  const client = new YamuxSession(a, { role: 'client', keepaliveIntervalMs: 0 });
  const server = new YamuxSession(b, { role: 'server', keepaliveIntervalMs: 0, maxWindowBytes });
  onTestFinished(() => {
    client.destroy();
    server.destroy();
  });
  // The server measures the round trip, as the session's first ping does in production.
  await server.ping();
  const inbound = new Promise<YamuxStream>((resolve) => server.once('stream', resolve));
  const stream = client.open();
  const chunk = Buffer.alloc(256 * 1024, 1);
  void (async () => {
    for (let sent = 0; sent < totalBytes; sent += chunk.length) {
      if (!stream.write(chunk)) await new Promise((r) => stream.once('drain', r));
    }
    stream.end();
  })();
  const receiver = await inbound;
  const receiverBuffered: number[] = [];
  await new Promise<void>((resolve) => {
    receiver.on('data', () => receiverBuffered.push(server.stats.bufferedBytes));
    receiver.on('end', resolve);
  });
  return { window: receiver.receiveWindowBytes, receiverBuffered };
}

describe('receive window auto-tuning', () => {
  it('grows the window on a 40 ms round trip so one stream is not capped at 256 KiB per RTT', async () => {
    const { window } = await transfer(20, 32 * 1024 * 1024, 16 * 1024 * 1024);
    expect(window).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    expect(window).toBeLessThanOrEqual(16 * 1024 * 1024);
  }, 30_000);

  it('never grows past maxWindowBytes, so memory stays within one window per stream', async () => {
    const max = 1024 * 1024;
    const { window, receiverBuffered } = await transfer(20, 16 * 1024 * 1024, max);
    expect(window).toBe(max);
    expect(Math.max(...receiverBuffered)).toBeLessThanOrEqual(max);
  }, 30_000);
});

describe('window sharing', () => {
  it('shares maxWindowBytes among open streams, so the stream that grows first cannot starve the rest', async () => {
    const { a, b } = delayedPipePair(20);
    const max = 4 * 1024 * 1024;
    const client = new YamuxSession(a, { role: 'client', keepaliveIntervalMs: 0 });
    const server = new YamuxSession(b, { role: 'server', keepaliveIntervalMs: 0, maxWindowBytes: max });
    onTestFinished(() => {
      client.destroy();
      server.destroy();
    });
    await server.ping();
    const receivers: YamuxStream[] = [];
    server.on('stream', (s: YamuxStream) => receivers.push(s));
    const chunk = Buffer.alloc(256 * 1024, 3);
    const streams = Array.from({ length: 4 }, () => client.open());
    const peaks = new Map<YamuxStream, number>();
    const done = Promise.all(
      streams.map(async (stream) => {
        for (let sent = 0; sent < 8 * 1024 * 1024; sent += chunk.length) {
          if (!stream.write(chunk)) await new Promise((r) => stream.once('drain', r));
        }
        stream.end();
      }),
    );
    // Every stream has reached the server before its reader is attached.
    await pollUntil(() => receivers.length === streams.length, 10_000, 'every stream at the server');
    await Promise.all(
      receivers.map(
        (r) =>
          new Promise<void>((resolve) => {
            r.on('data', () => peaks.set(r, Math.max(peaks.get(r) ?? 0, r.receiveWindowBytes)));
            r.on('end', resolve);
          }),
      ),
    );
    await done;
    expect(receivers).toHaveLength(4);
    // Four streams open: none may aim above a quarter of the session's maximum.
    for (const peak of peaks.values()) expect(peak).toBeLessThanOrEqual(max / 4);
    expect(Math.max(...peaks.values())).toBeGreaterThan(256 * 1024); // they did grow
  }, 30_000);
});
