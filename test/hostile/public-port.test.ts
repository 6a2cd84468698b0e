/**
 * Anonymous clients on the public port, tried as an attacker would against a real server
 * process (docs/SECURITY.md, "anonymous internet clients"): requests that once killed the server,
 * connections that never finish their handshake, floods of them, and ClientHellos built to
 * burn CPU. Each test names the defect it pins.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { describe, expect, it, onTestFinished } from 'vitest';
import { captureClientHello } from '../../bench/lib/client-hello-capture.js';
import { setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import { serverMetric, startAttacker, underAttack, latencyBoundMs } from '../helpers/hostile.js';
import { pollUntil, withDeadline } from '../helpers/streams.js';
import {
  createToken,
  startAgent,
  startServer,
  writeTokenFile,
  type LogLine,
  type ServerHandle,
} from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;

/** A TLS connection to the server's own name, trusting its CA. */
async function ownTls(server: ServerHandle): Promise<tls.TLSSocket> {
  const ca = await readFile(server.caFile, 'utf8');
  const socket = tls.connect({ host: '127.0.0.1', port: server.port, servername: 'proxy.localhost', ca });
  socket.on('error', () => undefined);
  onTestFinished(() => {
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

/** Sends raw request bytes and resolves with everything answered until the server closes. */
async function rawRequest(server: ServerHandle, request: string): Promise<string> {
  const socket = await ownTls(server);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const closed = new Promise((resolve) => socket.once('close', resolve));
  socket.write(request);
  await withDeadline(closed, 10_000, 'the server closing the connection');
  return Buffer.concat(chunks).toString('latin1');
}

async function healthy(server: ServerHandle): Promise<void> {
  const answer = await rawRequest(server, 'GET /healthz HTTP/1.1\r\nHost: proxy.localhost\r\n\r\n');
  expect(answer).toMatch(/^HTTP\/1\.1 200 /);
  expect(server.proc.child.exitCode).toBeNull();
}

/** A raw TCP connection from `localAddress` that sends nothing; resolves once connected. */
async function silentConnection(server: ServerHandle, localAddress = '127.0.0.1'): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port: server.port, localAddress });
  socket.on('error', () => undefined);
  onTestFinished(() => {
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

/** A connection the server is expected to reset at once: resolves when it is gone. */
async function resetAtOnce(server: ServerHandle, localAddress: string): Promise<void> {
  const socket = net.connect({ host: '127.0.0.1', port: server.port, localAddress });
  socket.on('error', () => undefined);
  socket.resume();
  await withDeadline(
    new Promise((r) => socket.once('close', r)),
    5_000,
    `the connection from ${localAddress} to be reset`,
  );
}

/** How long after `since` the socket was closed by the server (whatever it sent is read and dropped). */
function closedAfterMs(socket: net.Socket, since: number): Promise<number> {
  socket.resume();
  return new Promise((resolve) => socket.once('close', () => resolve(performance.now() - since)));
}

describe('requests on the own name', () => {
  it("regression own-request-url-crash: answers 400 to a request-target URL() rejects ('GET //%') and keeps serving", async () => {
    const server = await startServer();
    for (const target of ['//%', '//[', 'http://%zz']) {
      const answer = await rawRequest(server, `GET ${target} HTTP/1.1\r\nHost: proxy.localhost\r\n\r\n`);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toContain('TUN_ERR_PROTOCOL');
    }
    // The same target on the agent endpoint's upgrade path and on the admin port.
    const upgrade = await rawRequest(
      server,
      'GET //% HTTP/1.1\r\nHost: proxy.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
    );
    expect(upgrade).toMatch(/^HTTP\/1\.1 400 /);
    const admin = await fetchRaw(
      server.adminPort!,
      'GET //% HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(admin).toMatch(/^HTTP\/1\.1 400 /);
    await healthy(server);
  });

  it('answers 431 with a coded body to request headers over 16 KiB, where it used to close without a word', async () => {
    const server = await startServer();
    const big = 'a'.repeat(20_000);
    const { stdout } = await execFileAsync('curl', [
      '-sS',
      '--max-time',
      '10',
      '--cacert',
      server.caFile,
      '--resolve',
      `proxy.localhost:${server.port}:127.0.0.1`,
      '-H',
      `X-Big: ${big}`,
      '-w',
      '\n%{http_code}',
      `https://proxy.localhost:${server.port}/healthz`,
    ]);
    const [body, status] = stdout.split('\n');
    expect(status).toBe('431');
    expect(JSON.parse(body!)).toMatchObject({ code: 'TUN_ERR_LIMIT_EXCEEDED' });
    await healthy(server);
  });

  it('answers one request per connection: a probe cannot park a connection in keep-alive', async () => {
    const server = await startServer();
    const answer = await rawRequest(server, 'GET /healthz HTTP/1.1\r\nHost: proxy.localhost\r\n\r\n');
    expect(answer).toMatch(/\r\nConnection: close\r\n/i);
  });
});

async function fetchRaw(port: number, request: string): Promise<string> {
  const socket = net.connect({ host: '127.0.0.1', port });
  onTestFinished(() => {
    socket.destroy();
  });
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.write(request);
  await withDeadline(new Promise((r) => socket.once('close', r)), 10_000, 'the admin port closing');
  return Buffer.concat(chunks).toString('latin1');
}

describe('connections that never finish their handshake', () => {
  /*
   * regression unauthenticated-no-deadline: the own-name HTTP server is never listen()ed, so
   * Node never enforced its header timeouts, and the hand-made TLS socket had no handshake
   * deadline: these connections stayed open forever.
   */
  it('closes each at the one handshake deadline, whatever phase it stalls in, and logs the phase', async () => {
    const deadlineMs = 1_000;
    const server = await startServer({ args: ['--handshake-timeout-ms', String(deadlineMs)] });
    const ca = await readFile(server.caFile, 'utf8');
    const started = performance.now();

    // 1. TCP only: no ClientHello.
    const silent = await silentConnection(server);
    const silentClosed = closedAfterMs(silent, started);

    // 2. A ClientHello, then the client never finishes the TLS handshake.
    const helloOnly = await silentConnection(server);
    const helloOnlyClosed = closedAfterMs(helloOnly, started);
    const stalled = tls.connect({
      socket: swallowAfterFirstWrite(helloOnly),
      servername: 'proxy.localhost',
      ca,
    });
    stalled.on('error', () => undefined);

    // 3. TLS done, then silence.
    const quiet = await ownTls(server);
    const quietClosed = closedAfterMs(quiet, started);

    // 4. Slowloris: a header line every 200 ms, never the blank line.
    const slow = await ownTls(server);
    const slowClosed = closedAfterMs(slow, started);
    slow.write('GET /healthz HTTP/1.1\r\nHost: proxy.localhost\r\n');
    const drip = setInterval(() => slow.write('X-Slow: 1\r\n'), 200);
    onTestFinished(() => clearInterval(drip));

    const times = await withDeadline(
      Promise.all([silentClosed, helloOnlyClosed, quietClosed, slowClosed]),
      10_000,
      'every stalled connection to be closed',
    );
    clearInterval(drip);
    for (const ms of times) {
      expect(ms).toBeGreaterThanOrEqual(deadlineMs - 50);
      expect(ms).toBeLessThan(deadlineMs + 3_000);
    }
    // The server logs each as it closes it; the lines cross a pipe after the closes.
    const timedOut = (): LogLine[] =>
      server.proc.logs.filter((l) => l.msg === 'connection timed out before it was routed');
    await pollUntil(() => timedOut().length >= 4, 5_000, 'four timeout log lines');
    const phases = timedOut()
      .map((l) => l.phase)
      .sort();
    expect(phases).toEqual(['client-hello', 'request-headers', 'request-headers', 'tls-handshake']);
    expect(await serverMetric(server, 'tunnel_connections_total', { outcome: 'timeout' })).toBe(4);
    await healthy(server);
  });

  it('caps connections not yet routed per source address and in all; a real agent from another address still registers', async () => {
    const server = await startServer({
      args: ['--max-pending-connections-per-address', '20', '--max-pending-connections', '50'],
    });
    // One address holds its 20; the 21st is reset at once.
    const held = await Promise.all(Array.from({ length: 20 }, () => silentConnection(server, '127.0.0.2')));
    await pollUntil(async () => (await serverMetric(server, 'tunnel_pending_connections')) === 20, 5_000);
    await resetAtOnce(server, '127.0.0.2');
    expect(held.every((s) => !s.destroyed)).toBe(true);

    // Another address is unaffected: a real agent registers from 127.0.0.1.
    const dir = tempDir();
    const tokenFile = await writeTokenFile(dir, await createToken(server.dataDir, 'u1'));
    await startAgent({ server, tokenFile, routes: ['apiserver=127.0.0.1:1'] });

    // In all: 50, whatever the addresses.
    const more = await Promise.all(
      Array.from({ length: 30 }, (_, i) => silentConnection(server, `127.0.0.${3 + (i % 3)}`)),
    );
    await pollUntil(async () => (await serverMetric(server, 'tunnel_pending_connections')) === 50, 5_000);
    await resetAtOnce(server, '127.0.0.9');
    expect(more.every((s) => !s.destroyed)).toBe(true);
    expect(await serverMetric(server, 'tunnel_connections_total', { outcome: 'over-limit' })).toBe(2);
    const line = await server.proc.waitForLog((l) => l.msg === 'connections refused: too many pending');
    expect(line.code).toBe('TUN_ERR_LIMIT_EXCEEDED');

    // Connections that leave free their slots.
    for (const s of [...held, ...more]) s.destroy();
    await pollUntil(async () => (await serverMetric(server, 'tunnel_pending_connections')) === 0, 5_000);
    await healthy(server);
  });
});

describe('ClientHellos built to burn CPU', () => {
  it('regression client-hello-quadratic: 50 ClientHellos in 1-byte TLS records are refused after 32 records and cost little CPU', async () => {
    const server = await startServer();
    const hello = await captureClientHello({ servername: 'proxy.localhost' });
    // Every handshake byte in a record of its own: about 500 records per hello.
    const records = Buffer.concat([...hello.subarray(5)].map((b) => Buffer.from([22, 3, 1, 0, 1, b])));
    const cpuBefore = await serverMetric(server, 'process_cpu_seconds_total');
    const answers = await Promise.all(
      Array.from({ length: 50 }, async () => {
        const socket = await silentConnection(server);
        const chunks: Buffer[] = [];
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.write(records);
        await withDeadline(new Promise((r) => socket.once('close', r)), 10_000, 'the refusal');
        return Buffer.concat(chunks);
      }),
    );
    // A fatal handshake_failure alert (40) for each.
    for (const a of answers) expect([...a]).toEqual([21, 3, 1, 0, 2, 2, 40]);
    const cpuSeconds = (await serverMetric(server, 'process_cpu_seconds_total')) - cpuBefore;
    // Before the fix, parsing from the start on every record cost over 5 s for 50 of these.
    expect(cpuSeconds).toBeLessThan(1);
    const line = await server.proc.waitForLog((l) => l.msg === 'connection refused before TLS');
    expect(line.code).toBe('TUN_ERR_CLIENT_HELLO');
    await healthy(server);
  });
});

/**
 * A Duplex in front of `socket` that passes the first write (the ClientHello) and swallows the
 * rest, and never delivers what the server answers: a TLS client stuck mid-handshake.
 */
function swallowAfterFirstWrite(socket: net.Socket): Duplex {
  let first = true;
  return new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      if (first) socket.write(chunk);
      first = false;
      cb();
    },
  });
}

describe('anonymous floods cost their own connections, not the server or a cluster in use', () => {
  it.each([
    // [attack, connections held at once, what the server logs for them]
    ['silent', 64, 'connection timed out before it was routed'],
    ['slow-headers', 64, 'connection timed out before it was routed'],
    ['hello-records', 64, 'connection refused before TLS'],
  ])(
    '%s ×%i from another address: memory bounded, kubectl to a cluster within 2× idle (+250 ms floor)',
    async (kind, connections, logged) => {
      const good = await setupClusterTunnel({ uid: 'good' });
      const { server } = good;
      const effect = await underAttack(
        server,
        good.kubeconfig,
        () => startAttacker(server, kind, { connections, localAddress: '127.0.0.2' }),
        // On when the server holds its connections (or has refused some).
        async () =>
          (await serverMetric(server, 'tunnel_pending_connections')) >= connections / 2 ||
          server.proc.logs.some((l) => l.msg === logged),
        `${kind} ×${connections}`,
      );
      expect(effect.rssGrowthBytes).toBeLessThan(96 * MiB);
      expect(effect.attack.medianMs).toBeLessThanOrEqual(latencyBoundMs(effect.idle));
      // No request waits behind the attack (a refused connection retried, a stalled handshake).
      expect(effect.attack.maxMs).toBeLessThan(2_000);
      expect(server.proc.child.exitCode).toBeNull();
    },
  );
});

describe('password guessing on an http route with basic access', () => {
  it('costs the worker thread, not the event loop: kubectl to a cluster within 2× idle (+250 ms floor), the excess refused with 429', async () => {
    const dir = tempDir();
    const htpasswd = join(dir, 'htpasswd');
    // The costliest hash the server accepts: each wrong guess is a full bcrypt at cost 12.
    writeFileSync(htpasswd, `admin:${bcrypt.hashSync('the real one', 12)}\n`);
    const server = await startServer({ args: ['--http-access', 'basic', '--http-htpasswd-file', htpasswd] });
    const good = await setupClusterTunnel({
      uid: 'good',
      server,
      agentArgs: ['--route', 'dash=http://127.0.0.1:1'],
    });
    const host = 'cluster-good-dash.proxy.localhost';
    const refused = (code: string): number =>
      server.proc.logs.filter((l) => l.msg === 'http request refused' && l.code === code).length;
    let attacker: ReturnType<typeof startAttacker> | undefined;
    const effect = await underAttack(
      server,
      good.kubeconfig,
      () =>
        (attacker = startAttacker(server, 'password-guess', {
          connections: 8,
          localAddress: '127.0.0.2',
          host,
        })),
      // On once the password checks are all taken: the server refuses guesses unhashed.
      () => refused('TUN_ERR_LIMIT_EXCEEDED') > 0,
      'password-guess ×8',
    );
    expect(effect.attack.medianMs).toBeLessThanOrEqual(latencyBoundMs(effect.idle));
    expect(effect.attack.maxMs).toBeLessThan(2_000);
    // Every guess was refused: hashed and wrong, or refused unhashed beyond the checks in flight.
    await pollUntil(() => refused('TUN_ERR_ACCESS_DENIED') > 0, 5_000, 'a hashed guess refused');
    const answered = attacker!.rounds.flatMap((r) => Object.keys(r.statuses ?? {}));
    expect(answered.every((status) => status === '401' || status === '429')).toBe(true);
    expect(server.proc.child.exitCode).toBeNull();
  });
});
