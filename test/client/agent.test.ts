// The agent against the real TunnelServer, in-process (test/helpers/in-process.ts): registration,
// forwarding with half-close, refusals, slow retry after refused credentials, reconnects,
// readiness, egress proxy and graceful drain. What the real server never does (refuse a
// registration, ask for a route the agent does not serve, answer through a middlebox) comes
// from the scripted server, test/helpers/raw-server.ts.
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { describe, expect, onTestFinished, test } from 'vitest';
import { isTunnelError, type YamuxStream } from '@cluster-tunnel/protocol';
import { createToken, loadOrCreateSigningKeyPair, type AgentEvent } from '@cluster-tunnel/server';
import { resolveClientConfig } from '../../packages/client/src/config.js';
import { dial, isCredentialRefusal } from '../../packages/client/src/server-dialer.js';
import { AGENT_VERSION, TunnelAgent } from '../../packages/client/src/tunnel-agent.js';
import type { AgentDisconnectedEvent, TunnelAgentOptions } from '../../packages/client/src/tunnel-agent.js';
import { startInProcessServer, type InProcessServer } from '../helpers/in-process.js';
import { RAW_USER_ADDRESS, RawServer, codedRefusal } from '../helpers/raw-server.js';
import { withDeadline, pollUntil } from '../helpers/streams.js';
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
  writeFile,
} from './fixtures.js';
import { tempDir } from '../helpers/temp-dir.js';

const DOMAIN = 'proxy.localhost';
const USER_ADDRESS = '203.0.113.9:40000';

interface SetupOptions {
  /** Flags after the defaults (later flags win). */
  argv?: string[];
  env?: Record<string, string>;
  /** Token file content; default a token of cluster u1 from the server's own key. */
  tokenFileText?: string;
  /** Server flags on top of the in-process defaults. */
  serverArgs?: string[];
  /** A server to use instead of a new one. */
  server?: InProcessServer;
  /** The agent's server URL and CA, when it should dial something else (a scripted server). */
  dialTo?: { url: string; caFile: string };
  agent?: Partial<TunnelAgentOptions>;
}

/** An agent of cluster u1 against a real in-process server, with echo, greeter and dead routes. */
async function setup(options: SetupOptions = {}) {
  const dir = tempDir();
  const s = options.server ?? (await startInProcessServer(options.serverArgs ?? []));
  // Every 'agent' event, timestamped on arrival: registrations, refusals, departures.
  const agentEvents: (AgentEvent & { at: number })[] = [];
  s.server.on('agent', (e) => agentEvents.push({ ...e, at: performance.now() }));
  const token = await s.token('u1');
  const echo = await echoTarget();
  const greeter = await greeterTarget();
  const dead = await deadPort();
  const tokenFile = writeFile(dir, 'token', `${options.tokenFileText ?? token}\n`);
  const url = options.dialTo?.url ?? `wss://127.0.0.1:${s.port}/connect`;
  const argv = [
    ...['--server', url, '--token-file', tokenFile, '--ca-file', options.dialTo?.caFile ?? s.caFile],
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
  /** Resolves once the server has registered the agent `n` times and the agent has seen it. */
  const registered = async (n = 1, timeoutMs = 5_000): Promise<void> => {
    await pollUntil(
      () => agentEvents.filter((e) => e.type === 'registered').length >= n && registrations >= n,
      timeoutMs,
      `registration ${n}`,
    );
  };
  /** The agent's current session on the server. */
  const serverSide = () => {
    const [held] = s.server.registry.all();
    if (!held) throw new Error('the server holds no agent');
    return held;
  };
  /** A user stream through the server to `route`, with `firstBytes` behind its header. */
  const open = async (route: string, firstBytes?: Buffer): Promise<YamuxStream> =>
    (await s.server.openRouteStream({ route, remoteAddress: USER_ADDRESS, firstBytes })).stream;
  const refusals = () => agentEvents.filter((e) => e.type === 'refused');
  await agent.start();
  const healthPort = agent.healthAddress?.port ?? 0;
  return {
    s,
    agent,
    logs,
    echo,
    greeter,
    token,
    tokenFile,
    healthPort,
    registered,
    serverSide,
    open,
    refusals,
    agentEvents,
  };
}

describe('TunnelAgent', () => {
  test('registers its routes under the cluster id from the token and serves /healthz', async () => {
    const { s, agent, logs, token, healthPort, registered, serverSide, agentEvents } = await setup();
    const seen = once(agent, 'registered');
    await registered();
    const held = serverSide();
    expect(held.identity).toMatchObject({
      agentId: 'agent-test',
      agentVersion: AGENT_VERSION,
      clusterId: 'u1',
    });
    expect(held.labels).toEqual(['cluster-u1', 'cluster-u1-greeter', 'cluster-u1-dead']);
    expect([...held.capabilities]).toEqual([
      'typed-stream-header',
      'route-modes',
      'probe-streams',
      'route-certificates',
    ]);
    expect(agentEvents.filter((e) => e.type === 'refused')).toEqual([]);
    expect((await seen)[0]).toEqual({
      serverId: s.server.config.serverId,
      hostnames: [`cluster-u1.${DOMAIN}`, `cluster-u1-greeter.${DOMAIN}`, `cluster-u1-dead.${DOMAIN}`],
    });
    const line = await pollUntil(() => logs.find('agent registered')[0], 5_000, 'the registered log line');
    expect(line).toMatchObject({
      level: LEVEL.info,
      serverId: s.server.config.serverId,
      capabilities: ['typed-stream-header', 'route-modes', 'probe-streams', 'route-certificates'],
    });
    expect(agent.servers.map((x) => x.serverId)).toEqual([s.server.config.serverId]);
    expect(await httpGet(healthPort, '/healthz')).toBe(200);
    expect(await httpGet(healthPort, '/nope')).toBe(404);
    expect(JSON.stringify(logs.lines)).not.toContain(token);
  });

  test('forwards a user stream to its target: early bytes kept, bytes round-trip, user FIN reaches the target', async () => {
    const { logs, echo, registered, open } = await setup();
    await registered();
    // Bytes right behind the header arrive before the agent has dialed: they must not be lost.
    const stream = await open('cluster-u1', Buffer.from('early bytes|'));
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
    const closed = await pollUntil(
      () => logs.find('user connection closed')[0],
      5_000,
      'the closed log line',
    );
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
    const { agent, echo, logs, registered, open } = await setup();
    await registered();
    for (const [i, text] of ['one', 'two', 'three'].entries()) {
      // From the second stream on, a spare opened behind the previous one is waiting.
      if (i > 0) await pollUntil(() => agent.spareTargetConnections === 1, 5_000, 'the spare to connect');
      const stream = await open('cluster-u1', Buffer.from(text));
      expect((await readBytes(stream, text.length)).toString()).toBe(text);
      stream.end();
      expect((await readAll(stream)).toString()).toBe('<eof>');
    }
    // One target connection per user stream, each carrying only its own bytes, and one spare.
    await pollUntil(() => echo.connections.length === 4, 5_000, 'the last spare');
    expect(echo.connections.slice(0, 3).map((c) => c.bytesRead)).toEqual([3, 3, 5]);
    expect(logs.find('user connection opened').map((l) => l.spare)).toEqual([false, true, true]);
    await agent.close();
    await pollUntil(() => echo.connections[3]?.closed, 5_000, 'the spare to close when the agent stops');
    expect(echo.connections[3]?.bytesRead).toBe(0);
  });

  test("a target's FIN reaches the user while the user's direction stays open", async () => {
    const { greeter, registered, open } = await setup();
    await registered();
    const stream = await open('cluster-u1-greeter');
    expect((await readAll(stream)).toString()).toBe('hi');
    stream.end('late data');
    await pollUntil(() => greeter.received[0], 5_000, 'the greeter connection');
    expect(await greeter.received[0]).toBe('late data');
  });

  test('a reset on either side resets the other: user RST → target RST, target RST → user RST', async () => {
    const { logs, echo, registered, open } = await setup();
    await registered();
    const user = await open('cluster-u1', Buffer.from('ping'));
    await readBytes(user, 4);
    user.destroy(); // RST to the agent
    const targetSide = await pollUntil(() => echo.connections[0], 5_000, 'the first target connection');
    await pollUntil(() => targetSide.closed, 5_000, 'the target connection to close');
    const line = await pollUntil(() => logs.find('user connection closed')[0], 5_000, 'the closed log line');
    expect(line).toMatchObject({ route: 'cluster-u1', reset: true, code: 'TUN_ERR_STREAM_RESET' });

    const second = await open('cluster-u1', Buffer.from('pong'));
    await readBytes(second, 4);
    const secondTarget = await pollUntil(() => echo.connections[1], 5_000, 'the second target connection');
    secondTarget.resetAndDestroy(); // TCP RST from the target
    await closed(second);
    expect(second.readableEnded).toBe(false);
    expect(second.resetReason?.code).toBe('TUN_ERR_STREAM_RESET');
  });

  test('refuses a route it does not serve with TUN_ERR_UNKNOWN_ROUTE, then resets the stream', async () => {
    // The real server never asks for a route the agent did not register: a scripted one does.
    const raw = await RawServer.start();
    const { logs } = await setup({ dialTo: raw });
    const session = await raw.nextSession();
    for (const route of ['cluster-u1-nope', 'cluster-u2']) {
      const { stream, reply } = await session.openRoute(route);
      expect(reply).toMatchObject({ ok: false, code: 'TUN_ERR_UNKNOWN_ROUTE' });
      await closed(stream);
      expect(stream.resetReason?.code).toBe('TUN_ERR_STREAM_RESET');
    }
    expect(logs.find('route not configured').map((l) => [l.route, l.remoteAddress])).toEqual([
      ['cluster-u1-nope', RAW_USER_ADDRESS],
      ['cluster-u2', RAW_USER_ADDRESS],
    ]);
  });

  test('answers TUN_ERR_DIAL_FAILED with the errno when the target refuses', async () => {
    const { logs, registered, open } = await setup();
    await registered();
    const err = await open('cluster-u1-dead', Buffer.from('GET / HTTP/1.1\r\n')).catch((e: unknown) => e);
    expect(isTunnelError(err, 'TUN_ERR_DIAL_FAILED')).toBe(true);
    expect((err as Error).message).toContain('ECONNREFUSED');
    const line = await pollUntil(
      () => logs.find('target dial failed')[0],
      5_000,
      'the dial failure log line',
    );
    expect(line).toMatchObject({ level: LEVEL.warn, route: 'cluster-u1-dead', errno: 'ECONNREFUSED' });
  });

  test('after a 401 it logs the code, waits authRetryMs, and picks up a rotated token file', async () => {
    const s = await startInProcessServer();
    const good = await s.token('u1');
    // Signed by a key this server does not trust: 401 TUN_ERR_UNKNOWN_KEY.
    const foreign = await loadOrCreateSigningKeyPair(tempDir());
    const untrusted = await createToken({
      privateKeyPem: foreign.privateKeyPem,
      clusterId: 'u1',
      audience: DOMAIN,
      ttlMs: 3_600_000,
    });
    const { agent, logs, tokenFile, healthPort, registered, refusals } = await setup({
      server: s,
      tokenFileText: untrusted,
    });
    await pollUntil(() => refusals().length >= 2, 5_000, 'a second attempt');
    const [first, second] = refusals();
    expect(first).toMatchObject({ code: 'TUN_ERR_UNKNOWN_KEY' });
    expect(second!.at - first!.at).toBeGreaterThanOrEqual(400 - 5); // authRetryMs, not the 10-50 ms backoff
    const refused = logs.find('agent credentials refused');
    expect(refused[0]).toMatchObject({ level: LEVEL.error, code: 'TUN_ERR_UNKNOWN_KEY', status: 401 });
    expect(agent.isReady).toBe(false);
    expect(await httpGet(healthPort, '/readyz')).toBe(503);
    expect(await httpGet(healthPort, '/healthz')).toBe(200);
    // The Secret is rotated: the next attempt reads the new token, which the server accepts.
    writeFileSync(tokenFile, `${good}\n`);
    await registered(1, 3_000);
    expect(agent.isReady).toBe(true);
    const text = JSON.stringify(logs.lines);
    expect(text).not.toContain(untrusted);
    expect(text).not.toContain(good);
  });

  test('a refused registration (TUN_ERR_ROUTE_FORBIDDEN) is an operator error: slow retry', async () => {
    // The real server refuses only foreign labels, which an agent never asks for: scripted.
    const raw = await RawServer.start(() => ({
      type: 'error',
      code: 'TUN_ERR_ROUTE_FORBIDDEN',
      message: 'not yours',
    }));
    const { agent, logs } = await setup({ dialTo: raw });
    await pollUntil(() => raw.upgrades.length >= 2, 5_000, 'a second attempt');
    expect(raw.upgrades[1]!.at - raw.upgrades[0]!.at).toBeGreaterThanOrEqual(400 - 5);
    expect(logs.find('registration refused')[0]).toMatchObject({
      level: LEVEL.error,
      code: 'TUN_ERR_ROUTE_FORBIDDEN',
    });
    expect(agent.isReady).toBe(false);
  });

  test('a token without a cluster claim is never sent: error log, slow retry', async () => {
    const { logs, agentEvents } = await setup({ tokenFileText: 'not-a-jwt' });
    const lines = await pollUntil(
      () => (logs.find('agent token unusable').length >= 2 ? logs.find('agent token unusable') : undefined),
      5_000,
      'two attempts',
    );
    expect(lines[0]).toMatchObject({ level: LEVEL.error, code: 'TUN_ERR_TOKEN_INVALID' });
    expect(
      Date.parse(lines[1]!.time as string) - Date.parse(lines[0]!.time as string),
    ).toBeGreaterThanOrEqual(390);
    // The server never heard from it: no refusal, no registration.
    expect(agentEvents).toEqual([]);
  });

  test('reconnects after the server drops the connection, and serves streams again', async () => {
    const { s, agent, logs, registered, serverSide, open } = await setup();
    await registered();
    const disconnected = once(agent, 'disconnected') as Promise<[AgentDisconnectedEvent]>;
    serverSide().destroy();
    const [event] = await disconnected;
    expect(event.serverId).toBe(s.server.config.serverId);
    expect(event.err?.code).toBe('TUN_ERR_TRANSPORT_CLOSED');
    await registered(2);
    expect(logs.find('session ended')[0]).toMatchObject({
      level: LEVEL.warn,
      serverId: s.server.config.serverId,
    });
    const stream = await open('cluster-u1', Buffer.from('again'));
    stream.end();
    expect((await readAll(stream)).toString()).toBe('again<eof>');
  });

  test('/readyz answers 503 until registered, 200 while registered, 503 after losing the server', async () => {
    // A balancer with no replica behind it answers 503: a scripted server plays it.
    let open = false;
    const raw = await RawServer.start({ refuse: () => (open ? undefined : { status: 503, body: '' }) });
    const { healthPort } = await setup({ dialTo: raw });
    await pollUntil(() => raw.upgrades.length >= 2, 5_000, 'retries against an unavailable server');
    expect(await httpGet(healthPort, '/readyz')).toBe(503);
    open = true;
    const session = await raw.nextSession();
    await pollUntil(async () => (await httpGet(healthPort, '/readyz')) === 200, 5_000, '/readyz 200');
    open = false;
    session.socket.destroy();
    await pollUntil(async () => (await httpGet(healthPort, '/readyz')) === 503, 5_000, '/readyz 503');
    expect(await httpGet(healthPort, '/healthz')).toBe(200);
  });

  test('GoAway from the server: the agent redials at once while the open stream finishes', async () => {
    const { registered, serverSide, open, s } = await setup();
    await registered();
    const first = serverSide();
    const stream = await open('cluster-u1', Buffer.from('a'));
    expect((await readBytes(stream, 1)).toString()).toBe('a');
    const firstClosed = first.close(); // GoAway(normal): no new streams, old ones finish
    await registered(2);
    const second = s.server.registry.all().find((a) => a !== first);
    expect(second?.labels).toContain('cluster-u1');
    stream.write('b');
    expect((await readBytes(stream, 1)).toString()).toBe('b');
    stream.end();
    expect((await readAll(stream)).toString()).toBe('<eof>');
    await firstClosed;
  });

  test('close() sends GoAway, lets the open stream finish, then closes the health port', async () => {
    const { agent, logs, healthPort, registered, serverSide, open, agentEvents } = await setup();
    await registered();
    const held = serverSide();
    const goAway = once(held.session, 'goaway');
    const stream = await open('cluster-u1', Buffer.from('x'));
    await readBytes(stream, 1);
    let closed = false;
    const closing = agent.close().then(() => {
      closed = true;
    });
    await withDeadline(goAway, 5_000, 'GoAway at the server');
    expect(agent.isReady).toBe(false);
    expect(await httpGet(healthPort, '/readyz')).toBe(503);
    stream.write('y');
    expect((await readBytes(stream, 1)).toString()).toBe('y');
    expect(closed).toBe(false);
    stream.end();
    expect((await readAll(stream)).toString()).toBe('<eof>');
    await closing;
    await pollUntil(() => held.session.isClosed, 5_000, 'the session to close at the server');
    await expect(httpGet(healthPort, '/healthz')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(logs.find('agent stopped')).toHaveLength(1);
    expect(logs.find('user connection closed')[0]).toMatchObject({ route: 'cluster-u1' });
    expect(agentEvents.filter((e) => e.type === 'registered')).toHaveLength(1);
    await agent.close(); // idempotent
  });

  test('close() resets streams still open at the drain deadline', async () => {
    const { agent, logs, registered, open } = await setup({ argv: ['--drain-timeout-ms', '300ms'] });
    await registered();
    const stream = await open('cluster-u1');
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
    const { s, logs, registered, open } = await setup({ env: { HTTPS_PROXY: proxyUrl } });
    await registered();
    expect(proxy.requests).toEqual([{ target: `127.0.0.1:${s.port}`, authorized: true }]);
    const stream = await open('cluster-u1', Buffer.from('via proxy'));
    stream.end();
    expect((await readAll(stream)).toString()).toBe('via proxy<eof>');
    const connected = logs.find('connected')[0];
    expect(connected?.proxy).toBe(`http://***@127.0.0.1:${proxy.port}/`);
    expect(JSON.stringify(logs.lines)).not.toContain('p%40ss');
  });

  test('NO_PROXY sends matching servers around the proxy', async () => {
    const proxy = await connectProxy('agent', 'secret');
    const { registered } = await setup({
      env: { HTTPS_PROXY: `http://agent:secret@127.0.0.1:${proxy.port}`, NO_PROXY: 'example.com,127.0.0.1' },
    });
    await registered();
    expect(proxy.requests).toEqual([]);
  });

  test('a proxy that refuses the credentials (407) is retried with backoff, not as a token refusal', async () => {
    const proxy = await connectProxy('agent', 'right');
    const { logs, agentEvents } = await setup({
      env: { HTTPS_PROXY: `http://agent:wrong@127.0.0.1:${proxy.port}` },
    });
    await pollUntil(() => proxy.requests.length >= 3, 5_000, 'three attempts at the proxy');
    expect(proxy.requests.every((r) => !r.authorized)).toBe(true);
    expect(agentEvents).toEqual([]);
    expect(logs.find('agent credentials refused')).toHaveLength(0);
    expect(logs.find('connect failed')[0]).toMatchObject({ level: LEVEL.warn });
    expect(JSON.stringify(logs.lines)).not.toContain('agent:wrong');
  });
});

describe('dial', () => {
  const base = { token: 't', noProxy: [], timeoutMs: 5_000 };

  test("a 403 without our coded JSON body (a proxy's or load balancer's page) is a retryable transport failure", async () => {
    const raw = await RawServer.start({ refuse: () => ({ status: 403, body: '<html>forbidden</html>' }) });
    const err = await dial({ ...base, server: raw.url, caFile: raw.caFile }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'TUN_ERR_TRANSPORT_CLOSED',
      retryable: true,
      details: { status: 403 },
    });
    expect(isCredentialRefusal(err)).toBe(false);
  });

  test("our server's coded 401 is a credential refusal, not retried as a transport failure", async () => {
    const s = await startInProcessServer();
    const err = await dial({ ...base, server: `wss://127.0.0.1:${s.port}/connect`, caFile: s.caFile }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID', retryable: false, details: { status: 401 } });
    expect(isCredentialRefusal(err)).toBe(true);
  });

  test('other statuses are retryable transport failures', async () => {
    const raw = await RawServer.start({ refuse: () => codedRefusal(503, 'TUN_ERR_NO_ROUTE', 'busy') });
    const err = await dial({ ...base, server: raw.url, caFile: raw.caFile }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'TUN_ERR_TRANSPORT_CLOSED',
      retryable: true,
      details: { status: 503 },
    });
  });

  test('the server certificate is verified: unknown CA and wrong server name both fail', async () => {
    const s = await startInProcessServer();
    const url = `wss://127.0.0.1:${s.port}/connect`;
    const token = await s.token('u1');
    const untrusted = await dial({ ...base, token, server: url }).catch((e: unknown) => e);
    expect(untrusted).toMatchObject({ code: 'TUN_ERR_TRANSPORT_CLOSED', retryable: true });
    expect(String((untrusted as { details: { errno: string } }).details.errno)).toMatch(
      /SELF_SIGNED|UNABLE_TO_VERIFY/,
    );
    // Our server routes other names by SNI; a plain TLS server shows the name check itself.
    const raw = await RawServer.start();
    const wrongName = await dial({
      ...base,
      server: raw.url,
      caFile: raw.caFile,
      serverName: 'other.example',
    }).catch((e: unknown) => e);
    expect(wrongName).toMatchObject({ details: { errno: 'ERR_TLS_CERT_ALTNAME_INVALID' } });
    const ok = await dial({ ...base, token, server: url, caFile: s.caFile, serverName: 'proxy.localhost' });
    ok.socket.destroy();
    expect(ok.url).toBe(url);
  });

  test('a server URL without a path dials /connect', async () => {
    const s = await startInProcessServer();
    const token = await s.token('u1');
    const { socket, url } = await dial({
      ...base,
      token,
      server: `wss://127.0.0.1:${s.port}`,
      caFile: s.caFile,
    });
    socket.destroy();
    expect(new URL(url).pathname).toBe('/connect');
  });

  test('an aborted dial rejects with TUN_ERR_SESSION_CLOSED', async () => {
    const s = await startInProcessServer();
    const controller = new AbortController();
    const pending = dial({
      ...base,
      server: `wss://127.0.0.1:${s.port}/connect`,
      caFile: s.caFile,
      signal: controller.signal,
    });
    controller.abort();
    await expect(pending).rejects.toMatchObject({ code: 'TUN_ERR_SESSION_CLOSED' });
  });
});
