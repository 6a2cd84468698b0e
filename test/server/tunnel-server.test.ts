/**
 * TunnelServer in-process, with real agents (TunnelAgent) and real sockets: the public port
 * sends each ClientHello to the route mode that claims its name, every mode reaches agents
 * through openRouteStream with failover, and each user connection is reported as an event
 * (forwarded, refused with its code, closed with its bytes).
 */
import { randomBytes } from 'node:crypto';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { isTunnelError } from '@cluster-tunnel/protocol';
import { ROUTE_MODES, type AgentEvent } from '@cluster-tunnel/server';
import { startInProcessAgent, startInProcessServer } from '../helpers/in-process.js';
import { pollUntil, readToEnd, withDeadline } from '../helpers/streams.js';
import { registerRaw } from '../helpers/hostile.js';
import { freePort } from '../helpers/tunnel.js';
import { echoTarget } from '../helpers/targets.js';

/** A port where nothing listens: the agent's dial is refused. */
async function deadPort(): Promise<number> {
  return freePort();
}

/** A TLS client through the public port, naming `serverName`; resolves with how it ended. */
function tlsThrough(
  port: number,
  serverName: string,
  payload: Buffer,
): Promise<{ echoed?: Buffer; error?: string }> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: serverName,
      rejectUnauthorized: false,
    });
    onTestFinished(() => void socket.destroy());
    socket.once('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    socket.once('secureConnect', () => {
      readToEnd(socket).then(
        (echoed) => resolve({ echoed }),
        (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }),
      );
      socket.end(payload);
    });
  });
}

describe('the public port (passthrough mode)', () => {
  it('forwards a ClientHello naming cluster-u1 to the agent holding it, unread, and reports the connection', async () => {
    const s = await startInProcessServer();
    await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`apiserver=127.0.0.1:${await echoTarget({ tls: true })}`],
    });
    const payload = randomBytes(256 * 1024);
    const result = await tlsThrough(s.port, 'cluster-u1.proxy.localhost', payload);
    expect(result.echoed?.equals(payload)).toBe(true);
    expect(await s.nextEvent((e) => e.type === 'forwarded')).toEqual({
      type: 'forwarded',
      mode: 'passthrough',
      route: 'cluster-u1',
      agentId: 'agent-u1',
      remoteAddress: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
    });
    const closed = await s.nextEvent((e) => e.type === 'closed');
    expect(closed).toMatchObject({ mode: 'passthrough', route: 'cluster-u1', agentId: 'agent-u1' });
    // TLS records around the payload: at least the payload each way, and not much more.
    if (closed.type !== 'closed') throw new Error('narrowing');
    expect(closed.bytesOut).toBeGreaterThanOrEqual(payload.length);
    expect(closed.bytesIn).toBeGreaterThanOrEqual(payload.length);
  });

  it('refuses a route no agent holds with TLS alert unrecognized_name and a TUN_ERR_NO_ROUTE event', async () => {
    const s = await startInProcessServer();
    const result = await tlsThrough(s.port, 'cluster-nobody.proxy.localhost', Buffer.from('x'));
    expect(result.error).toBe('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
    expect(await s.nextEvent((e) => e.type === 'refused')).toMatchObject({
      mode: 'passthrough',
      route: 'cluster-nobody',
      code: 'TUN_ERR_NO_ROUTE',
    });
  });

  it('holds a connection for a cluster with no agent yet until one registers (agentWaitMs), then forwards it', async () => {
    const s = await startInProcessServer(['--agent-wait-ms', '10s']);
    const payload = randomBytes(1024);
    const result = tlsThrough(s.port, 'cluster-u1.proxy.localhost', payload);
    // The connection waits, named but unrouted, while the agent comes.
    await pollUntil(() => s.server.status().pendingConnections === 1, 5_000, 'the connection to wait');
    await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`apiserver=127.0.0.1:${await echoTarget({ tls: true })}`],
    });
    expect((await result).echoed?.equals(payload)).toBe(true);
    expect(s.events.filter((e) => e.type === 'refused')).toEqual([]);
  });

  it('refuses a waiting connection when no agent comes within agentWaitMs', async () => {
    const s = await startInProcessServer(['--agent-wait-ms', '300ms']);
    const started = performance.now();
    const result = await tlsThrough(s.port, 'cluster-u1.proxy.localhost', Buffer.from('x'));
    expect(result.error).toBe('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
    expect(performance.now() - started).toBeGreaterThanOrEqual(290);
    expect(await s.nextEvent((e) => e.type === 'refused')).toMatchObject({ code: 'TUN_ERR_NO_ROUTE' });
  });

  it('counts a second session of one agent (it probes for a missing replica) in tunnel_agent_duplicate_sessions_total', async () => {
    const s = await startInProcessServer();
    const target = `apiserver=127.0.0.1:${await echoTarget({ tls: true })}`;
    const duplicates = async () => (await s.server.metrics.duplicateSessions.get()).values[0]?.value ?? 0;
    await startInProcessAgent(s, { cluster: 'u1', agentId: 'a', routes: [target] });
    await startInProcessAgent(s, { cluster: 'u1', agentId: 'b', routes: [target] });
    expect(await duplicates()).toBe(0);
    await startInProcessAgent(s, { cluster: 'u1', agentId: 'a', routes: [target] });
    expect(await duplicates()).toBe(1);
  });

  it('answers a name outside its domain with unrecognized_name and no route event', async () => {
    const s = await startInProcessServer();
    const result = await tlsThrough(s.port, 'cluster-u1.elsewhere.example', Buffer.from('x'));
    expect(result.error).toBe('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
    expect(s.events).toEqual([]);
  });

  it('skips an agent that cannot reach its target: every connection lands on the healthy one', async () => {
    const s = await startInProcessServer();
    await startInProcessAgent(s, {
      cluster: 'u1',
      agentId: 'broken',
      routes: [`apiserver=127.0.0.1:${await deadPort()}`],
    });
    await startInProcessAgent(s, {
      cluster: 'u1',
      agentId: 'healthy',
      routes: [`apiserver=127.0.0.1:${await echoTarget({ tls: true })}`],
    });
    for (let i = 0; i < 4; i++) {
      const payload = Buffer.from(`request ${i}`);
      const result = await tlsThrough(s.port, 'cluster-u1.proxy.localhost', payload);
      expect(result.echoed?.toString()).toBe(payload.toString());
    }
    const forwarded = s.events.filter((e) => e.type === 'forwarded');
    expect(forwarded.map((e) => e.type === 'forwarded' && e.agentId)).toEqual([
      'healthy',
      'healthy',
      'healthy',
      'healthy',
    ]);
    expect(s.events.filter((e) => e.type === 'refused')).toEqual([]);
  });
});

describe('several agents of one cluster', () => {
  it('take turns: new connections rotate over the agents holding the route', async () => {
    const s = await startInProcessServer();
    const target = `apiserver=127.0.0.1:${await echoTarget({ tls: true })}`;
    await startInProcessAgent(s, { cluster: 'u1', agentId: 'a', routes: [target] });
    await startInProcessAgent(s, { cluster: 'u1', agentId: 'b', routes: [target] });
    for (let i = 0; i < 6; i++) {
      const result = await tlsThrough(s.port, 'cluster-u1.proxy.localhost', Buffer.from('x'));
      expect(result.echoed?.toString()).toBe('x');
    }
    const agents = s.events.flatMap((e) => (e.type === 'forwarded' ? [e.agentId] : []));
    expect(agents.filter((a) => a === 'a')).toHaveLength(3);
    expect(agents.filter((a) => a === 'b')).toHaveLength(3);
  });
});

describe('openRouteStream', () => {
  it('returns a stream the agent accepted, and the agent that holds it', async () => {
    const s = await startInProcessServer();
    await startInProcessAgent(s, { cluster: 'u1', routes: [`db=127.0.0.1:${await echoTarget()}`] });
    const { stream, agent } = await s.server.openRouteStream({
      route: 'cluster-u1-db',
      remoteAddress: '192.0.2.1:1',
    });
    onTestFinished(() => void stream.destroy());
    expect(agent.identity).toMatchObject({ agentId: 'agent-u1', clusterId: 'u1' });
    // Left paused, as every mode gets it: the mode starts the flow when it is ready.
    expect(stream.isPaused()).toBe(true);
    const echoed = readToEnd(stream);
    stream.resume();
    stream.end('hello');
    expect((await echoed).toString()).toBe('hello');
  });

  it("fails with TUN_ERR_NO_ROUTE when no agent holds the route, and with the agent's code when all refuse", async () => {
    const s = await startInProcessServer();
    const none = await s.server
      .openRouteStream({ route: 'cluster-u1', remoteAddress: '192.0.2.1:1' })
      .catch((e: unknown) => e);
    expect(isTunnelError(none, 'TUN_ERR_NO_ROUTE')).toBe(true);
    await startInProcessAgent(s, { cluster: 'u1', routes: [`apiserver=127.0.0.1:${await deadPort()}`] });
    const refused = await s.server
      .openRouteStream({ route: 'cluster-u1', remoteAddress: '192.0.2.1:1' })
      .catch((e: unknown) => e);
    expect(isTunnelError(refused, 'TUN_ERR_DIAL_FAILED')).toBe(true);
    const unknown = await s.server
      .openRouteStream({ route: 'cluster-u1-nothere', remoteAddress: '192.0.2.1:1' })
      .catch((e: unknown) => e);
    expect(isTunnelError(unknown, 'TUN_ERR_NO_ROUTE')).toBe(true);
  });
});

describe('the tcp mode', () => {
  it('listens on its own port, forwards to the agent holding the label and reports it in status()', async () => {
    // Port 0: the kernel picks the port, and status() shows which.
    const s = await startInProcessServer(['--tcp-route', 'cluster-u1-db=127.0.0.1:0']);
    const status = s.server.status().modes.tcp as { routes: { listen: string }[] };
    const routePort = Number(/:(\d+)$/.exec(status.routes[0]!.listen)?.[1]);
    expect(routePort).toBeGreaterThan(0);
    expect(status).toEqual({
      routes: [{ route: 'cluster-u1-db', listen: `127.0.0.1:${routePort}`, connections: 0, served: false }],
    });
    // Nobody holds the label yet: a TCP reset, reported with its code.
    const refused = await new Promise<string>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port: routePort });
      onTestFinished(() => void socket.destroy());
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? ''));
      socket.once('end', () => resolve('end'));
      socket.resume();
    });
    expect(refused).toBe('ECONNRESET');
    expect(await s.nextEvent((e) => e.type === 'refused')).toMatchObject({
      mode: 'tcp',
      code: 'TUN_ERR_NO_ROUTE',
    });

    await startInProcessAgent(s, { cluster: 'u1', routes: [`db=127.0.0.1:${await echoTarget()}`] });
    const socket = net.connect({ host: '127.0.0.1', port: routePort, allowHalfOpen: true });
    onTestFinished(() => void socket.destroy());
    const payload = randomBytes(1024 * 1024);
    const received = readToEnd(socket);
    socket.end(payload);
    expect((await received).equals(payload)).toBe(true);
    expect(await s.nextEvent((e) => e.type === 'closed')).toMatchObject({
      mode: 'tcp',
      route: 'cluster-u1-db',
      bytesIn: payload.length,
      bytesOut: payload.length,
    });
    expect(s.server.status().modes.tcp).toMatchObject({ routes: [{ served: true }] });
  });
});

describe('agents', () => {
  it('are reported as they register and leave, with the routes they hold', async () => {
    const s = await startInProcessServer();
    const events: AgentEvent[] = [];
    s.server.on('agent', (e) => events.push(e));
    const agent = await startInProcessAgent(s, {
      cluster: 'u1',
      routes: ['apiserver=127.0.0.1:1', 'db=127.0.0.1:2'],
    });
    expect(events).toEqual([
      { type: 'registered', agentId: 'agent-u1', clusterId: 'u1', routes: ['cluster-u1', 'cluster-u1-db'] },
    ]);
    const left = new Promise<AgentEvent>((resolve) => s.server.once('agent', resolve));
    await agent.close();
    expect(await withDeadline(left, 10_000, 'the agent to leave')).toMatchObject({
      type: 'left',
      agentId: 'agent-u1',
    });
    expect(s.server.registry.size).toBe(0);
  });
});

describe('agent refusals', () => {
  it('are reported with their code: an upgrade without a token is refused with 401', async () => {
    const s = await startInProcessServer();
    const refused = new Promise<AgentEvent>((resolve) => s.server.once('agent', resolve));
    const status = await new Promise<number>((resolve, reject) => {
      const req = https.request({
        host: '127.0.0.1',
        port: s.port,
        path: '/connect',
        rejectUnauthorized: false,
        headers: {
          Connection: 'Upgrade',
          Upgrade: 'websocket',
          'Sec-WebSocket-Version': '13',
          'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
        },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(401);
    expect(await withDeadline(refused, 10_000, 'the refusal event')).toMatchObject({
      type: 'refused',
      code: 'TUN_ERR_AUTH_REQUIRED',
      remoteAddress: expect.stringMatching(/^127\.0\.0\.1:/),
    });
  });
});

describe('route modes named by agents', () => {
  it('routes a label by the mode its agent registered; a mode this server does not run leaves the route out', async () => {
    const s = await startInProcessServer();
    const { registered } = await registerRaw(
      { url: `wss://127.0.0.1:${s.port}/connect`, caFile: s.caFile },
      await s.token('u1'),
      ['cluster-u1', 'cluster-u1-db', 'cluster-u1-future'],
      {
        capabilities: ['route-modes'],
        routeModes: { 'cluster-u1-db': 'passthrough', 'cluster-u1-future': 'nonesuch' },
      },
    );
    expect(registered).toMatchObject({
      type: 'registered',
      hostnames: ['cluster-u1.proxy.localhost', 'cluster-u1-db.proxy.localhost'],
      capabilities: expect.arrayContaining(['route-modes']),
    });
    expect(s.server.registry.labels()).toEqual(['cluster-u1', 'cluster-u1-db']);
    expect(s.server.registry.modeOf('cluster-u1-db')).toBe('passthrough');
    expect(s.server.registry.modeOf('cluster-u1-future')).toBeUndefined();
    // Nobody serves it: the public port refuses it as it does any unheld label.
    const result = await tlsThrough(s.port, 'cluster-u1-future.proxy.localhost', Buffer.from('x'));
    expect(result.error).toBe('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
  });
});

describe('the route-mode table', () => {
  it('builds every mode of ROUTE_MODES, and status() shows each under its name', async () => {
    const s = await startInProcessServer();
    expect(Object.keys(s.server.status().modes).sort()).toEqual(Object.keys(ROUTE_MODES).sort());
  });
});

describe('close()', () => {
  it('lets an open connection finish, then stops: GoAway to agents, the port closed', async () => {
    const s = await startInProcessServer(['--drain-timeout-ms', '5s']);
    await startInProcessAgent(s, { cluster: 'u1', routes: [`db=127.0.0.1:${await echoTarget()}`] });
    const { stream } = await s.server.openRouteStream({
      route: 'cluster-u1-db',
      remoteAddress: '192.0.2.1:1',
    });
    const closing = s.server.close();
    // The stream opened before the drain still carries its exchange to the end.
    const echoed = readToEnd(stream);
    stream.resume();
    stream.end('last words');
    expect((await echoed).toString()).toBe('last words');
    await closing;
    const refused = await new Promise<string>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port: s.port });
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? ''));
      socket.once('connect', () => {
        socket.destroy();
        resolve('connected');
      });
    });
    expect(refused).toBe('ECONNREFUSED');
    expect(s.server.registry.size).toBe(0);
  });
});
