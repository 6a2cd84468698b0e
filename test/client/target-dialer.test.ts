// Spare target connections (target-dialer.ts) with real sockets on 127.0.0.1: a spare is opened
// only for a route in use, handed to the next stream, bounded, dropped when the target closes it,
// closed after spareIdleMs (on a fake clock) and on close().
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { describe, expect, onTestFinished, test } from 'vitest';
import { RouteTable } from '../../packages/client/src/route-table.js';
import type { RouteEntry } from '../../packages/client/src/route-table.js';
import { TargetDialer } from '../../packages/client/src/target-dialer.js';
import type { TargetDialerOptions } from '../../packages/client/src/target-dialer.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { flushIo, pollUntil } from '../helpers/streams.js';
import { captureLogs, readBytes } from './fixtures.js';

/**
 * A target that records every connection it accepts; `greeting` is written on accept (a
 * server-speaks-first protocol); otherwise it echoes. `open` counts connections not yet closed.
 */
async function countingTarget(greeting?: string) {
  const connections: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    connections.push(socket);
    socket.on('error', () => undefined);
    if (greeting !== undefined) socket.write(greeting);
    socket.on('data', (chunk: Buffer) => socket.write(chunk));
    socket.on('end', () => socket.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(async () => {
    for (const s of connections) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    connections,
    get open(): number {
      return connections.filter((s) => !s.closed).length;
    },
  };
}

function routeTo(port: number): RouteEntry {
  return new RouteTable('u1', [{ name: 'apiserver', host: '127.0.0.1', port }]).lookup('cluster-u1')!;
}

function dialer(options: Partial<TargetDialerOptions> = {}): TargetDialer {
  const d = new TargetDialer({
    spareConnections: 1,
    spareIdleMs: 60_000,
    dialTimeoutMs: 5_000,
    clock: new ManualClock(),
    logger: captureLogs().logger,
    ...options,
  });
  onTestFinished(() => d.close());
  return d;
}

/** One round trip on a target socket: proves it is connected, open and ours alone. */
async function roundTrip(socket: net.Socket, text: string): Promise<void> {
  onTestFinished(() => {
    socket.destroy();
  });
  const echoed = readBytes(socket, text.length);
  socket.write(text);
  expect((await echoed).toString()).toBe(text);
}

/**
 * The sockets of the dialer's spares: a private field, read only to know when a greeting has
 * reached one (no event says so).
 */
function idleSpareSockets(d: TargetDialer): net.Socket[] {
  const spares = (d as unknown as { spares: Map<string, Array<{ socket: net.Socket }>> }).spares;
  return [...spares.values()].flat().map((s) => s.socket);
}

/**
 * Holds once the dialer can open nothing more on its own: its deferred top-ups have run and no
 * spare is still connecting. Counting the target's connections after this needs no waiting.
 */
async function settled(d: TargetDialer): Promise<void> {
  await flushIo();
  await pollUntil(() => d.connectingSpareCount === 0, 5_000, 'no spare connecting');
}

describe('TargetDialer', () => {
  test('opens nothing for a route nobody used', async () => {
    const target = await countingTarget();
    const d = dialer();
    await settled(d);
    expect(target.connections).toHaveLength(0);
    expect(d.spareCount).toBe(0);
  });

  test('hands the next stream the spare: one target connection per user connection, plus one spare', async () => {
    const target = await countingTarget();
    const d = dialer();
    const route = routeTo(target.port);
    const first = await d.dial(route);
    expect(first.spare).toBe(false);
    await roundTrip(first.socket, 'one');
    // The first use opened one spare behind it.
    await pollUntil(() => target.connections.length === 2, 5_000, 'the spare to connect');
    for (const text of ['two', 'three', 'four']) {
      await pollUntil(() => d.spareCount === 1, 5_000, 'a spare');
      const next = await d.dial(route);
      expect(next.spare).toBe(true);
      await roundTrip(next.socket, text);
    }
    await pollUntil(() => target.connections.length === 5, 5_000, 'the last spare');
    await settled(d);
    // Four user connections, each on its own target connection, and one spare waiting.
    expect(target.connections).toHaveLength(5);
    expect(d.spareCount).toBe(1);
  });

  test('two routes to one address never share a spare: one speaks plain TCP to it, the other TLS', async () => {
    // Found by bench S11: a passthrough and an agent-tls route to the same API server, and the
    // first user of each after the other was handed the other's spare (a TLS socket for raw
    // bytes, a plain one for the agent's TLS).
    const target = await countingTarget();
    const d = dialer();
    const table = new RouteTable('u1', [
      { name: 'apiserver', host: '127.0.0.1', port: target.port },
      { name: 'tls', host: '127.0.0.1', port: target.port, mode: 'agent-tls', insecure: true },
    ]);
    const plain = table.lookup('cluster-u1')!;
    const tlsRoute = table.lookup('cluster-u1-tls')!;
    await roundTrip((await d.dial(plain)).socket, 'one');
    await pollUntil(() => d.spareCount === 1, 5_000, 'the passthrough route spare');
    // The TLS route's dial does not take it (the echo target cannot speak TLS: the dial fails),
    // and the passthrough route's spare is still there for its next user.
    await expect(d.dial(tlsRoute)).rejects.toThrow();
    const next = await d.dial(plain);
    expect(next.spare).toBe(true);
    await roundTrip(next.socket, 'two');
  });

  test('never hands out a spare the target closed, and opens no new one until the next stream', async () => {
    const target = await countingTarget();
    const d = dialer();
    const route = routeTo(target.port);
    await roundTrip((await d.dial(route)).socket, 'one');
    await pollUntil(() => d.spareCount === 1, 5_000, 'the spare to connect');
    const spareSide = await pollUntil(() => target.connections[1], 5_000, 'the target to accept the spare');
    spareSide.end(); // the target closes the idle connection
    await pollUntil(() => d.spareCount === 0, 5_000, 'the closed spare to be dropped');
    await settled(d);
    expect(target.connections).toHaveLength(2);
    const next = await d.dial(route);
    expect(next.spare).toBe(false);
    await roundTrip(next.socket, 'two');
    // The stream counts as use: a spare is opened behind it again.
    await pollUntil(() => target.connections.length === 4, 5_000, 'a new spare');
  });

  test('drops a spare the target reset', async () => {
    const target = await countingTarget();
    const d = dialer();
    const route = routeTo(target.port);
    await roundTrip((await d.dial(route)).socket, 'one');
    await pollUntil(() => d.spareCount === 1, 5_000, 'the spare to connect');
    const spareSide = await pollUntil(() => target.connections[1], 5_000, 'the target to accept the spare');
    spareSide.resetAndDestroy();
    await pollUntil(() => d.spareCount === 0, 5_000, 'the reset spare to be dropped');
    expect((await d.dial(route)).spare).toBe(false);
  });

  test('keeps at most spareConnections, however many streams arrive at once', async () => {
    const target = await countingTarget();
    const d = dialer({ spareConnections: 2 });
    const route = routeTo(target.port);
    const dialed = await Promise.all(Array.from({ length: 6 }, () => d.dial(route)));
    for (const [i, c] of dialed.entries()) await roundTrip(c.socket, `u${i}`);
    await pollUntil(() => target.connections.length === 8, 5_000, 'two spares');
    await settled(d);
    expect(d.spareCount).toBe(2);
    expect(target.connections).toHaveLength(8);
  });

  test('closes an unused spare after spareIdleMs and does not replace it', async () => {
    const target = await countingTarget();
    const clock = new ManualClock();
    const d = dialer({ clock, spareIdleMs: 5_000 });
    const route = routeTo(target.port);
    await roundTrip((await d.dial(route)).socket, 'one');
    await pollUntil(() => target.connections.length === 2 && d.spareCount === 1, 5_000, 'the spare');
    clock.advance(4_999);
    expect(d.spareCount).toBe(1);
    clock.advance(1);
    expect(d.spareCount).toBe(0);
    await pollUntil(() => target.connections[1]?.closed, 5_000, 'the target to see the spare close');
    await settled(d);
    expect(target.connections).toHaveLength(2);
    expect(clock.pending).toBe(0);
    // The route went idle: the next stream connects anew (and opens a spare again).
    expect((await d.dial(route)).spare).toBe(false);
  });

  test('close() closes every spare, and later dials open none', async () => {
    const target = await countingTarget();
    const clock = new ManualClock();
    const d = dialer({ clock });
    const route = routeTo(target.port);
    const first = await d.dial(route);
    await pollUntil(() => target.connections.length === 2 && d.spareCount === 1, 5_000, 'the spare');
    d.close();
    expect(d.spareCount).toBe(0);
    expect(clock.pending).toBe(0);
    await pollUntil(() => target.connections[1]?.closed, 5_000, 'the target to see the spare close');
    // A stream already forwarded is not the dialer's to close.
    await roundTrip(first.socket, 'still open');
    const later = await d.dial(route);
    expect(later.spare).toBe(false);
    await roundTrip(later.socket, 'later');
    await settled(d);
    expect(target.connections).toHaveLength(3);
  });

  test("keeps a server-speaks-first target's greeting for the user who gets the spare", async () => {
    const target = await countingTarget('220 hello\n');
    const d = dialer();
    const route = routeTo(target.port);
    const first = await d.dial(route);
    expect((await readBytes(first.socket, 10)).toString()).toBe('220 hello\n');
    first.socket.destroy();
    await pollUntil(() => d.spareCount === 1, 5_000, 'the spare');
    // The greeting reaches the idle spare before it is handed out: the dialer, not the kernel,
    // must keep it for the user.
    await pollUntil(
      () => idleSpareSockets(d)[0]?.readableLength === 10,
      5_000,
      'the greeting in the idle spare',
    );
    const next = await d.dial(route);
    expect(next.spare).toBe(true);
    onTestFinished(() => {
      next.socket.destroy();
    });
    expect((await readBytes(next.socket, 10)).toString()).toBe('220 hello\n');
  });

  test('with spareConnections 0 it only connects', async () => {
    const target = await countingTarget();
    const d = dialer({ spareConnections: 0 });
    const route = routeTo(target.port);
    for (const text of ['a', 'b']) {
      const c = await d.dial(route);
      expect(c.spare).toBe(false);
      await roundTrip(c.socket, text);
    }
    await settled(d);
    expect(target.connections).toHaveLength(2);
  });

  test('a spare that cannot connect is dropped quietly; the dial reports its own error', async () => {
    const probe = net.createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const d = dialer();
    await expect(d.dial(routeTo(port))).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await settled(d);
    expect(d.spareCount).toBe(0);
  });
});
