// The agent against a real minimal tunnel-server peer (HTTPS + WebSocket + yamux on 127.0.0.1):
// registration, forwarding with half-close, refusals, slow retry after refused credentials,
// reconnects, readiness, egress proxy and graceful drain.
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { SignJWT } from 'jose';
import { describe, expect, onTestFinished, test } from 'vitest';
import { resolveClientConfig } from '../../packages/client/src/config.js';
import { dial, isCredentialRefusal } from '../../packages/client/src/server-dialer.js';
import { AGENT_VERSION, TunnelAgent } from '../../packages/client/src/tunnel-agent.js';
import type { AgentDisconnectedEvent, TunnelAgentOptions } from '../../packages/client/src/tunnel-agent.js';
import {
  LEVEL,
  captureLogs,
  closed,
  connectProxy,
  deadPort,
  echoTarget,
  greeterTarget,
  httpGet,
  readAll,
  readBytes,
  tempDir,
  until,
  writeFile,
} from './fixtures.js';
import { DOMAIN, TunnelPeer, USER_ADDRESS, jsonRefusal } from './tunnel-peer.js';
import type { PeerOptions, PeerSession } from './tunnel-peer.js';

const SIGNING_KEY = new TextEncoder().encode('agent-tests-hmac-key-agent-tests-hmac-key');

/** A token shaped like the server's (the agent reads only the `cluster` claim; it never verifies). */
function agentToken(cluster: string): Promise<string> {
  return new SignJWT({ cluster })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(`cluster:${cluster}`)
    .setJti(randomBytes(8).toString('hex'))
    .sign(SIGNING_KEY);
}

interface SetupOptions {
  /** Flags after the defaults (later flags win). */
  argv?: string[];
  env?: Record<string, string>;
  /** Token file content; default the token the peer accepts. */
  tokenFileText?: string;
  peer?: PeerOptions;
  agent?: Partial<TunnelAgentOptions>;
}

async function setup(options: SetupOptions = {}) {
  const dir = tempDir();
  const token = await agentToken('u1');
  const peer = await TunnelPeer.start(token, options.peer);
  onTestFinished(() => peer.close());
  const echo = await echoTarget();
  const greeter = await greeterTarget();
  const dead = await deadPort();
  const tokenFile = writeFile(dir, 'token', `${options.tokenFileText ?? token}\n`);
  const argv = [
    ...[
      '--server',
      peer.url,
      '--token-file',
      tokenFile,
      '--ca-file',
      peer.caFile,
      '--server-name',
      'localhost',
    ],
    ...['--route', `apiserver=127.0.0.1:${echo.port}`, '--route', `greeter=127.0.0.1:${greeter.port}`],
    ...['--route', `dead=127.0.0.1:${dead}`, '--agent-id', 'agent-test', '--health-listen', '127.0.0.1:0'],
    ...['--backoff-initial-ms', '10', '--backoff-max-ms', '50', '--healthy-reset-ms', '1s'],
    ...['--auth-retry-ms', '400', '--keepalive-interval-ms', '2s', '--drain-timeout-ms', '3s'],
    ...(options.argv ?? []),
  ];
  const config = resolveClientConfig({ argv, env: options.env ?? {}, cwd: dir, hostname: 'test-host' });
  const logs = captureLogs();
  const agent = new TunnelAgent(config, { logger: logs.logger, ...options.agent });
  onTestFinished(async () => {
    agent.destroy();
    await agent.close();
  });
  let registrations = 0;
  agent.on('registered', () => (registrations += 1));
  let taken = 0;
  /** The next session, once the agent too has seen `registered` (the peer knows first). */
  const nextSession = async (timeoutMs?: number): Promise<PeerSession> => {
    const session = await peer.nextSession(timeoutMs);
    const n = ++taken;
    await until(() => registrations >= n, 'the agent to see registered');
    return session;
  };
  await agent.start();
  const healthPort = agent.healthAddress?.port ?? 0;
  return { agent, peer, logs, echo, greeter, token, tokenFile, healthPort, nextSession };
}

describe('TunnelAgent', () => {
  test('registers its routes under the cluster id from the token and serves /healthz', async () => {
    const { agent, peer, logs, token, healthPort, nextSession } = await setup();
    const registered = once(agent, 'registered');
    const session = await nextSession();
    expect(session.register).toEqual({
      type: 'register',
      protocolVersion: 1,
      agentId: 'agent-test',
      agentVersion: AGENT_VERSION,
      routes: ['cluster-u1', 'cluster-u1-greeter', 'cluster-u1-dead'],
      capabilities: ['typed-stream-header'],
    });
    expect(peer.upgrades.map((u) => u.token)).toEqual([token]);
    expect((await registered)[0]).toEqual({
      serverId: 'peer-1',
      hostnames: [`cluster-u1.${DOMAIN}`, `cluster-u1-greeter.${DOMAIN}`, `cluster-u1-dead.${DOMAIN}`],
    });
    const line = await until(() => logs.find('agent registered')[0], 'the registered log line');
    // The peer's `registered` announces no capabilities, as an older server's: none negotiated.
    expect(line).toMatchObject({ level: LEVEL.info, serverId: 'peer-1', capabilities: [] });
    expect(agent.servers.map((s) => s.serverId)).toEqual(['peer-1']);
    expect(await httpGet(healthPort, '/healthz')).toBe(200);
    expect(await httpGet(healthPort, '/nope')).toBe(404);
    expect(JSON.stringify(logs.lines)).not.toContain(token);
  });

  test('forwards a user stream to its target: early bytes kept, bytes round-trip, user FIN reaches the target', async () => {
    const { logs, echo, nextSession } = await setup();
    const session = await nextSession();
    // Bytes right behind the header arrive before the agent has dialed: they must not be lost.
    const { stream, reply } = await session.openUserStream('cluster-u1', Buffer.from('early bytes|'));
    expect(reply).toEqual({ ok: true });
    expect((await readBytes(stream, 12)).toString()).toBe('early bytes|');
    // A megabyte each way: more than one yamux window, so flow control is exercised.
    const payload = randomBytes(1024 * 1024);
    const echoed = readBytes(stream, payload.length);
    stream.write(payload);
    expect((await echoed).equals(payload)).toBe(true);
    stream.end();
    // The target saw our FIN, wrote after it (half-open), then ended: the agent carried both.
    expect((await readAll(stream)).toString()).toBe('<eof>');
    expect(echo.connections[0]?.readableEnded).toBe(true);
    const closed = await until(() => logs.find('user connection closed')[0], 'the closed log line');
    expect(closed).toMatchObject({
      level: LEVEL.info,
      route: 'cluster-u1',
      remoteAddress: USER_ADDRESS,
      bytesIn: 12 + payload.length,
      bytesOut: 12 + payload.length + '<eof>'.length,
    });
    expect(closed.durationMs).toEqual(expect.any(Number));
    expect(closed.reset).toBeUndefined();
  });

  test('hands the next user stream a spare target connection, and closes the spare when it stops', async () => {
    const { agent, echo, logs, nextSession } = await setup();
    const session = await nextSession();
    for (const [i, text] of ['one', 'two', 'three'].entries()) {
      // From the second stream on, a spare opened behind the previous one is waiting.
      if (i > 0) await until(() => agent.spareTargetConnections === 1, 'the spare to connect');
      const { stream, reply } = await session.openUserStream('cluster-u1', Buffer.from(text));
      expect(reply).toEqual({ ok: true });
      expect((await readBytes(stream, text.length)).toString()).toBe(text);
      stream.end();
      expect((await readAll(stream)).toString()).toBe('<eof>');
    }
    // One target connection per user stream, each carrying only its own bytes, and one spare.
    await until(() => echo.connections.length === 4, 'the last spare');
    expect(echo.connections.slice(0, 3).map((c) => c.bytesRead)).toEqual([3, 3, 5]);
    expect(logs.find('user connection opened').map((l) => l.spare)).toEqual([false, true, true]);
    await agent.close();
    await until(() => echo.connections[3]?.closed, 'the spare to close when the agent stops');
    expect(echo.connections[3]?.bytesRead).toBe(0);
  });

  test("a target's FIN reaches the user while the user's direction stays open", async () => {
    const { greeter, nextSession } = await setup();
    const session = await nextSession();
    const { stream, reply } = await session.openUserStream('cluster-u1-greeter');
    expect(reply).toEqual({ ok: true });
    expect((await readAll(stream)).toString()).toBe('hi');
    stream.end('late data');
    await until(() => greeter.received[0], 'the greeter connection');
    expect(await greeter.received[0]).toBe('late data');
  });

  test('a reset on either side resets the other: user RST → target RST, target RST → user RST', async () => {
    const { logs, echo, nextSession } = await setup();
    const session = await nextSession();
    const user = await session.openUserStream('cluster-u1', Buffer.from('ping'));
    await readBytes(user.stream, 4);
    user.stream.destroy(); // RST to the agent
    const targetSide = await until(() => echo.connections[0], 'the first target connection');
    await until(() => targetSide.closed, 'the target connection to close');
    const line = await until(() => logs.find('user connection closed')[0], 'the closed log line');
    expect(line).toMatchObject({ route: 'cluster-u1', reset: true, code: 'TUN_ERR_STREAM_RESET' });

    const second = await session.openUserStream('cluster-u1', Buffer.from('pong'));
    await readBytes(second.stream, 4);
    const secondTarget = await until(() => echo.connections[1], 'the second target connection');
    secondTarget.resetAndDestroy(); // TCP RST from the target
    await closed(second.stream);
    expect(second.stream.readableEnded).toBe(false);
    expect(second.stream.resetReason?.code).toBe('TUN_ERR_STREAM_RESET');
  });

  test('refuses a route it does not serve with TUN_ERR_UNKNOWN_ROUTE, then resets the stream', async () => {
    const { logs, nextSession } = await setup();
    const session = await nextSession();
    for (const route of ['cluster-u1-nope', 'cluster-u2']) {
      const { stream, reply } = await session.openUserStream(route);
      expect(reply).toMatchObject({ ok: false, code: 'TUN_ERR_UNKNOWN_ROUTE' });
      await closed(stream);
      expect(stream.resetReason?.code).toBe('TUN_ERR_STREAM_RESET');
    }
    expect(logs.find('route not configured').map((l) => l.route)).toEqual(['cluster-u1-nope', 'cluster-u2']);
  });

  test('answers TUN_ERR_DIAL_FAILED with the errno when the target refuses', async () => {
    const { logs, nextSession } = await setup();
    const session = await nextSession();
    const { stream, reply } = await session.openUserStream(
      'cluster-u1-dead',
      Buffer.from('GET / HTTP/1.1\r\n'),
    );
    expect(reply).toMatchObject({ ok: false, code: 'TUN_ERR_DIAL_FAILED' });
    expect(reply.ok === false && reply.message).toContain('ECONNREFUSED');
    await closed(stream);
    const line = await until(() => logs.find('target dial failed')[0], 'the dial failure log line');
    expect(line).toMatchObject({ level: LEVEL.warn, route: 'cluster-u1-dead', errno: 'ECONNREFUSED' });
  });

  test('after a 401 it logs the code, waits authRetryMs, and picks up a rotated token file', async () => {
    const good = await agentToken('u1');
    const revoked = await agentToken('u1');
    const { agent, peer, logs, tokenFile, healthPort, nextSession } = await setup({
      tokenFileText: revoked,
      peer: {
        verdict: (t) => (t === good ? 'accept' : jsonRefusal(401, 'TUN_ERR_TOKEN_REVOKED', 'token revoked')),
      },
    });
    await until(() => peer.upgrades.length >= 2, 'a second attempt');
    const gapMs = peer.upgrades[1]!.at - peer.upgrades[0]!.at;
    expect(gapMs).toBeGreaterThanOrEqual(400 - 5); // authRetryMs, not the 10-50 ms backoff
    const refused = logs.find('agent credentials refused');
    expect(refused[0]).toMatchObject({ level: LEVEL.error, code: 'TUN_ERR_TOKEN_REVOKED', status: 401 });
    expect(agent.isReady).toBe(false);
    expect(await httpGet(healthPort, '/readyz')).toBe(503);
    expect(await httpGet(healthPort, '/healthz')).toBe(200);
    // The Secret is rotated: the next attempt reads the new token.
    writeFileSync(tokenFile, `${good}\n`);
    await nextSession(3_000);
    expect(peer.upgrades.at(-1)?.token).toBe(good);
    const text = JSON.stringify(logs.lines);
    expect(text).not.toContain(revoked);
    expect(text).not.toContain(good);
  });

  test('a refused registration (TUN_ERR_ROUTE_FORBIDDEN) is an operator error: slow retry', async () => {
    const { agent, peer, logs } = await setup({
      peer: { onRegister: () => ({ type: 'error', code: 'TUN_ERR_ROUTE_FORBIDDEN', message: 'not yours' }) },
    });
    await until(() => peer.upgrades.length >= 2, 'a second attempt');
    expect(peer.upgrades[1]!.at - peer.upgrades[0]!.at).toBeGreaterThanOrEqual(400 - 5);
    expect(logs.find('registration refused')[0]).toMatchObject({
      level: LEVEL.error,
      code: 'TUN_ERR_ROUTE_FORBIDDEN',
    });
    expect(agent.isReady).toBe(false);
  });

  test('a token without a cluster claim is never sent: error log, slow retry', async () => {
    const { peer, logs } = await setup({ tokenFileText: 'not-a-jwt' });
    const lines = await until(
      () => (logs.find('agent token unusable').length >= 2 ? logs.find('agent token unusable') : undefined),
      'two attempts',
    );
    expect(lines[0]).toMatchObject({ level: LEVEL.error, code: 'TUN_ERR_TOKEN_INVALID' });
    expect(
      Date.parse(lines[1]!.time as string) - Date.parse(lines[0]!.time as string),
    ).toBeGreaterThanOrEqual(390);
    expect(peer.upgrades).toHaveLength(0);
  });

  test('reconnects after the server drops the WebSocket, and serves streams again', async () => {
    const { agent, peer, logs, nextSession } = await setup();
    const first = await nextSession();
    const disconnected = once(agent, 'disconnected') as Promise<[AgentDisconnectedEvent]>;
    first.socket.destroy();
    const [event] = await disconnected;
    expect(event.serverId).toBe('peer-1');
    expect(event.err?.code).toBe('TUN_ERR_TRANSPORT_CLOSED');
    const second = await nextSession();
    expect(logs.find('session ended')[0]).toMatchObject({ level: LEVEL.warn, serverId: 'peer-1' });
    const { stream, reply } = await second.openUserStream('cluster-u1', Buffer.from('again'));
    expect(reply).toEqual({ ok: true });
    stream.end();
    expect((await readAll(stream)).toString()).toBe('again<eof>');
    expect(peer.upgrades).toHaveLength(2);
  });

  test('/readyz answers 503 until registered, 200 while registered, 503 after losing the server', async () => {
    let open = false;
    const good = await agentToken('u1');
    const { peer, healthPort, nextSession } = await setup({
      tokenFileText: good,
      peer: { verdict: () => (open ? 'accept' : { status: 503, body: '' }) },
    });
    await until(() => peer.upgrades.length >= 2, 'retries against an unavailable server');
    expect(await httpGet(healthPort, '/readyz')).toBe(503);
    open = true;
    const session = await nextSession();
    await until(async () => (await httpGet(healthPort, '/readyz')) === 200, '/readyz 200');
    open = false;
    session.socket.destroy();
    await until(async () => (await httpGet(healthPort, '/readyz')) === 503, '/readyz 503');
    expect(await httpGet(healthPort, '/healthz')).toBe(200);
  });

  test('GoAway from the server: the agent redials at once while the open stream finishes', async () => {
    const { nextSession } = await setup();
    const first = await nextSession();
    const { stream } = await first.openUserStream('cluster-u1', Buffer.from('a'));
    expect((await readBytes(stream, 1)).toString()).toBe('a');
    const firstClosed = first.session.close(); // GoAway(normal): no new streams, old ones finish
    const second = await nextSession();
    expect(second.register.routes).toContain('cluster-u1');
    stream.write('b');
    expect((await readBytes(stream, 1)).toString()).toBe('b');
    stream.end();
    expect((await readAll(stream)).toString()).toBe('<eof>');
    await firstClosed;
  });

  test('close() sends GoAway, lets the open stream finish, then closes the health port', async () => {
    const { agent, peer, logs, healthPort, nextSession } = await setup();
    const session = await nextSession();
    const { stream } = await session.openUserStream('cluster-u1', Buffer.from('x'));
    await readBytes(stream, 1);
    let closed = false;
    const closing = agent.close().then(() => {
      closed = true;
    });
    await until(() => session.goAwayReceived, 'GoAway at the server');
    expect(agent.isReady).toBe(false);
    expect(await httpGet(healthPort, '/readyz')).toBe(503);
    stream.write('y');
    expect((await readBytes(stream, 1)).toString()).toBe('y');
    expect(closed).toBe(false);
    stream.end();
    expect((await readAll(stream)).toString()).toBe('<eof>');
    await closing;
    await session.sessionClosed;
    await expect(httpGet(healthPort, '/healthz')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(logs.find('agent stopped')).toHaveLength(1);
    expect(logs.find('user connection closed')[0]).toMatchObject({ route: 'cluster-u1' });
    expect(peer.upgrades).toHaveLength(1);
    await agent.close(); // idempotent
  });

  test('close() resets streams still open at the drain deadline', async () => {
    const { agent, logs, nextSession } = await setup({ argv: ['--drain-timeout-ms', '300ms'] });
    const session = await nextSession();
    const { stream } = await session.openUserStream('cluster-u1');
    const started = performance.now();
    await agent.close();
    expect(performance.now() - started).toBeGreaterThanOrEqual(295);
    await closed(stream);
    expect(stream.readableEnded).toBe(false);
    expect(logs.find('drain deadline passed')[0]).toMatchObject({ level: LEVEL.warn, streams: 1 });
  });

  test('dials through an HTTP CONNECT proxy with the credentials from the proxy URL', async () => {
    const proxy = await connectProxy('agent', 'p@ss word');
    const proxyUrl = `http://agent:p%40ss%20word@127.0.0.1:${proxy.port}`;
    const { peer, logs, nextSession } = await setup({ env: { HTTPS_PROXY: proxyUrl } });
    const session = await nextSession();
    expect(proxy.requests).toEqual([{ target: new URL(peer.url).host, authorized: true }]);
    const { stream, reply } = await session.openUserStream('cluster-u1', Buffer.from('via proxy'));
    expect(reply).toEqual({ ok: true });
    stream.end();
    expect((await readAll(stream)).toString()).toBe('via proxy<eof>');
    const connected = logs.find('connected')[0];
    expect(connected?.proxy).toBe(`http://***@127.0.0.1:${proxy.port}/`);
    expect(JSON.stringify(logs.lines)).not.toContain('p%40ss');
  });

  test('NO_PROXY sends matching servers around the proxy', async () => {
    const proxy = await connectProxy('agent', 'secret');
    const { nextSession } = await setup({
      env: { HTTPS_PROXY: `http://agent:secret@127.0.0.1:${proxy.port}`, NO_PROXY: 'example.com,127.0.0.1' },
    });
    await nextSession();
    expect(proxy.requests).toEqual([]);
  });

  test('a proxy that refuses the credentials (407) is retried with backoff, not as a token refusal', async () => {
    const proxy = await connectProxy('agent', 'right');
    const { peer, logs } = await setup({
      env: { HTTPS_PROXY: `http://agent:wrong@127.0.0.1:${proxy.port}` },
    });
    await until(() => proxy.requests.length >= 3, 'three attempts at the proxy');
    expect(proxy.requests.every((r) => !r.authorized)).toBe(true);
    expect(peer.upgrades).toHaveLength(0);
    expect(logs.find('agent credentials refused')).toHaveLength(0);
    expect(logs.find('connect failed')[0]).toMatchObject({ level: LEVEL.warn });
    expect(JSON.stringify(logs.lines)).not.toContain('agent:wrong');
  });
});

describe('dial', () => {
  async function peerAnswering(verdict: PeerOptions['verdict']) {
    const peer = await TunnelPeer.start('unused', { verdict });
    onTestFinished(() => peer.close());
    return peer;
  }
  const base = { token: 't', noProxy: [], timeoutMs: 5_000 };

  test("a 403 without our coded JSON body (a proxy's or load balancer's page) is a retryable transport failure", async () => {
    const peer = await peerAnswering(() => ({ status: 403, body: '<html>forbidden</html>' }));
    const err = await dial({ ...base, server: peer.url, caFile: peer.caFile }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'TUN_ERR_TRANSPORT_CLOSED',
      retryable: true,
      details: { status: 403 },
    });
    expect(isCredentialRefusal(err)).toBe(false);
  });

  test('other statuses are retryable transport failures', async () => {
    const peer = await peerAnswering(() => jsonRefusal(503, 'TUN_ERR_NO_ROUTE', 'busy'));
    const err = await dial({ ...base, server: peer.url, caFile: peer.caFile }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'TUN_ERR_TRANSPORT_CLOSED',
      retryable: true,
      details: { status: 503 },
    });
  });

  test('the server certificate is verified: unknown CA and wrong server name both fail', async () => {
    const peer = await peerAnswering(() => 'accept');
    const untrusted = await dial({ ...base, server: peer.url }).catch((e: unknown) => e);
    expect(untrusted).toMatchObject({ code: 'TUN_ERR_TRANSPORT_CLOSED', retryable: true });
    expect(String((untrusted as { details: { errno: string } }).details.errno)).toMatch(
      /SELF_SIGNED|UNABLE_TO_VERIFY/,
    );
    const wrongName = await dial({
      ...base,
      server: peer.url,
      caFile: peer.caFile,
      serverName: 'other.example',
    }).catch((e: unknown) => e);
    expect(wrongName).toMatchObject({ details: { errno: 'ERR_TLS_CERT_ALTNAME_INVALID' } });
    const ok = await dial({ ...base, server: peer.url, caFile: peer.caFile, serverName: 'localhost' });
    ok.socket.destroy();
  });

  test('a server URL without a path dials /connect', async () => {
    const peer = await peerAnswering(() => 'accept');
    const root = peer.url.replace(/\/connect$/, '');
    const { socket, url } = await dial({ ...base, server: root, caFile: peer.caFile });
    socket.destroy();
    expect(new URL(url).pathname).toBe('/connect');
  });

  test('an aborted dial rejects with TUN_ERR_SESSION_CLOSED', async () => {
    const peer = await peerAnswering(() => 'accept');
    const controller = new AbortController();
    const pending = dial({ ...base, server: peer.url, caFile: peer.caFile, signal: controller.signal });
    controller.abort();
    await expect(pending).rejects.toMatchObject({ code: 'TUN_ERR_SESSION_CLOSED' });
  });
});
