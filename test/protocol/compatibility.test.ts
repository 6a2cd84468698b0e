/**
 * Old and new peers together (docs/PROTOCOL.md, "Versions and capabilities"): each pairing
 * either works or is refused with a code. The new side is always the real object in this
 * process (TunnelServer, TunnelAgent, ServerSession); the old or future side is a raw peer built
 * from protocol pieces (hostile.ts's registerRaw for agents, raw-server.ts for servers) that
 * writes what that release writes. Every byte crosses TLS, WebSocket and yamux on 127.0.0.1.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { describe, expect, onTestFinished, test } from 'vitest';
import {
  CONTROL_PROTOCOL_VERSION,
  STREAM_TYPES,
  encodeStreamHeader,
  encodeStreamReply,
  readStreamReply,
  type ControlMessage,
  type RegisterMessage,
  type StreamType,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { resolveServerConfig } from '../../packages/server/src/config.js';
import { createToken, loadOrCreateSigningKeyPair } from '../../packages/server/src/token-issuer.js';
import { TunnelServer } from '../../packages/server/src/tunnel-server.js';
import { resolveClientConfig } from '../../packages/client/src/config.js';
import { RouteTable } from '../../packages/client/src/route-table.js';
import { dial } from '../../packages/client/src/server-dialer.js';
import { ServerSession } from '../../packages/client/src/server-session.js';
import { TunnelAgent } from '../../packages/client/src/tunnel-agent.js';
import { LEVEL, captureLogs, echoTarget, readAll, writeFile } from '../client/fixtures.js';
import { tempDir } from '../helpers/temp-dir.js';
import { registerRaw, type AgentTarget } from '../helpers/hostile.js';
import { createTestCa } from '../helpers/pki.js';
import { RawServer } from '../helpers/raw-server.js';
import { pollUntil } from '../helpers/streams.js';

const DOMAIN = 'proxy.localhost';
const ROUTE_HOST = `cluster-u1.${DOMAIN}`;

/** A token of cluster u1 signed with a fresh key in `dataDir` (the server's, when it runs there). */
async function tokenFor(dataDir: string): Promise<string> {
  const { privateKeyPem } = await loadOrCreateSigningKeyPair(dataDir);
  return createToken({ privateKeyPem, clusterId: 'u1', audience: DOMAIN, ttlMs: 3_600_000 });
}

/** The real tunnel server of this build, in this process, on 127.0.0.1 port 0. */
async function startServer() {
  const dataDir = tempDir();
  const logs = captureLogs();
  const config = resolveServerConfig({
    argv: [
      '--listen',
      '127.0.0.1:0',
      '--admin-listen',
      'off',
      '--data-dir',
      dataDir,
      '--server-id',
      'server-new',
    ],
    env: {},
    cwd: dataDir,
  });
  const server = new TunnelServer(config, { log: logs.logger });
  await server.start();
  onTestFinished(() => server.destroy());
  const target: AgentTarget = {
    url: `wss://127.0.0.1:${server.address.port}/connect`,
    caFile: join(dataDir, 'ca.crt'),
  };
  return { server, logs, target, token: await tokenFor(dataDir) };
}

/** The real agent of this build, serving cluster u1's `routes` (`name=127.0.0.1:port`). */
async function startAgent(o: { url: string; caFile: string; token: string; routes: string[] }) {
  const dir = tempDir();
  const argv = [
    ...['--server', o.url, '--token-file', writeFile(dir, 'token', `${o.token}\n`), '--ca-file', o.caFile],
    ...['--server-name', 'localhost', ...o.routes.flatMap((r) => ['--route', r])],
    ...['--agent-id', 'agent-new', '--health-listen', 'off', '--auth-retry-ms', '200'],
    ...['--backoff-initial-ms', '10', '--backoff-max-ms', '50'],
  ];
  const config = resolveClientConfig({ argv, env: {}, cwd: dir, hostname: 'test-host' });
  const logs = captureLogs();
  const agent = new TunnelAgent(config, { logger: logs.logger });
  onTestFinished(async () => {
    agent.destroy();
    await agent.close();
  });
  await agent.start();
  return { agent, logs };
}

/** A TLS echo server with a certificate for the route hostname: the target of passthrough. */
async function tlsEchoTarget(): Promise<{ port: number; caPem: string }> {
  const ca = await createTestCa('compatibility-test-ca');
  const leaf = await ca.issue({ commonName: ROUTE_HOST, dnsNames: [ROUTE_HOST] });
  const server = tls.createServer({ key: leaf.keyPem, cert: leaf.certPem }, (socket) => {
    socket.on('error', () => undefined);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as AddressInfo).port, caPem: ca.certPem };
}

/** A user's TLS connection through the server's public port to the route: what the target echoes. */
async function userEcho(server: TunnelServer, caPem: string, text: string): Promise<string> {
  const socket = tls.connect({
    host: '127.0.0.1',
    port: server.address.port,
    servername: ROUTE_HOST,
    ca: caPem,
  });
  onTestFinished(() => {
    socket.destroy();
  });
  await once(socket, 'secureConnect');
  socket.end(text);
  return (await readAll(socket)).toString();
}

/** A v1 stream header exactly as the first release wrote it, byte by byte. */
function firstReleaseHeader(route: string, remoteAddress: string): Buffer {
  return Buffer.concat([
    Buffer.from([1, route.length]),
    Buffer.from(route),
    Buffer.from([remoteAddress.length]),
    Buffer.from(remoteAddress),
  ]);
}

interface OldAgentHeader {
  version: number;
  route: string;
  remoteAddress: string;
}

/**
 * An agent of the first release on one stream: it reads a v1 header (and nothing else), answers
 * ok and splices the stream to `targetPort`.
 */
function serveAsFirstRelease(stream: YamuxStream, targetPort: number): Promise<OldAgentHeader> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      if (buf[0] !== 1) {
        stream.off('data', onData);
        stream.destroy();
        reject(new Error(`a first-release agent cannot read stream header version ${buf[0]}`));
        return;
      }
      const n = buf[1];
      if (n === undefined || buf.length < 3 + n) return;
      const m = buf[2 + n]!;
      if (buf.length < 3 + n + m) return;
      stream.off('data', onData);
      stream.pause();
      const target = net.connect(targetPort, '127.0.0.1');
      target.on('error', () => stream.destroy());
      target.write(buf.subarray(3 + n + m));
      stream.write(encodeStreamReply({ ok: true }));
      stream.pipe(target);
      target.pipe(stream);
      resolve({
        version: buf[0],
        route: buf.toString('utf8', 2, 2 + n),
        remoteAddress: buf.toString('utf8', 3 + n, 3 + n + m),
      });
    };
    stream.on('error', () => undefined);
    stream.on('data', onData);
  });
}

/** A ServerSession of this build registered with `server`, serving cluster u1's apiserver at `targetPort`. */
async function registeredSession(server: RawServer, targetPort: number): Promise<ServerSession> {
  const token = await tokenFor(tempDir());
  const dialed = await dial({
    server: server.url,
    token,
    caFile: server.caFile,
    noProxy: [],
    timeoutMs: 5_000,
    serverName: 'localhost',
  });
  const session = new ServerSession({
    socket: dialed.socket,
    head: dialed.head,
    routes: new RouteTable('u1', [{ name: 'apiserver', host: '127.0.0.1', port: targetPort }]),
    agentId: 'agent-new',
    agentVersion: '0.2.0',
    keepaliveIntervalMs: 0,
    keepaliveTimeoutMs: 10_000,
    registerTimeoutMs: 5_000,
    streamHeaderTimeoutMs: 5_000,
    targetDialTimeoutMs: 5_000,
    logger: captureLogs().logger,
  });
  onTestFinished(() => session.destroy());
  await session.register();
  return session;
}

/** Writes `text`, ends, and reads everything the agent's target sent back after the reply. */
async function echoed(stream: Duplex, text?: string): Promise<string> {
  stream.end(text);
  return (await readAll(stream)).toString();
}

const registeredBy =
  (serverId: string, extra: Partial<ControlMessage> = {}) =>
  (m: RegisterMessage): ControlMessage =>
    ({
      type: 'registered',
      serverId,
      hostnames: m.routes.map((r) => `${r}.${DOMAIN}`),
      ...extra,
    }) as ControlMessage;

describe('an old agent and a new server', () => {
  test('an agent without capabilities registers, gets v1 headers, and user traffic flows through it', async () => {
    const { server, logs, target, token } = await startServer();
    const tlsTarget = await tlsEchoTarget();
    // registerRaw sends the first release's register: no capabilities.
    const old = await registerRaw(target, token, ['cluster-u1']);
    expect(old.registered).toMatchObject({
      type: 'registered',
      capabilities: ['typed-stream-header', 'route-modes', 'probe-streams', 'route-certificates'],
    });
    const [agent] = server.registry.all();
    expect(agent!.capabilities.size).toBe(0);
    expect(agent!.streamHeaderVersion).toBe(1);
    // Without probe-streams it is never sent a probe stream (it could only refuse it).
    expect(await server.prober.probeAll()).toEqual([]);
    expect(logs.find('agent connected')[0]).toMatchObject({ capabilities: [] });
    const headers: Array<Promise<OldAgentHeader>> = [];
    old.session.on('stream', (stream: YamuxStream) =>
      headers.push(serveAsFirstRelease(stream, tlsTarget.port)),
    );

    expect(await userEcho(server, tlsTarget.caPem, 'hello from a user')).toBe('hello from a user');
    expect(headers).toHaveLength(1);
    expect(await headers[0]).toMatchObject({ version: 1, route: 'cluster-u1' });
  });

  test('the server opens no other stream type on an agent without typed-stream-header: TUN_ERR_UNKNOWN_STREAM_TYPE', async () => {
    const { server, target, token } = await startServer();
    await registerRaw(target, token, ['cluster-u1']);
    const [agent] = server.registry.all();
    // Only `route` exists today: a type of the next modes, as a caller of this build would pass it.
    const future = { type: 'tunnel' as StreamType, route: 'cluster-u1', remoteAddress: '198.51.100.7:1' };
    expect(() => agent!.openStream(future)).toThrow(
      expect.objectContaining({ code: 'TUN_ERR_UNKNOWN_STREAM_TYPE' }),
    );
    expect(agent!.streams).toBe(0); // refused before any stream was opened
  });
});

describe('a new agent and an old server', () => {
  test('the agent announces its capabilities, the old server ignores them, and a v1 stream is forwarded', async () => {
    const old = await RawServer.start(registeredBy('server-old')); // a `registered` without capabilities
    const echo = await echoTarget();
    const token = await tokenFor(tempDir());
    const { logs } = await startAgent({ ...old, token, routes: [`apiserver=127.0.0.1:${echo.port}`] });
    const session = await old.nextSession();
    expect(session.register).toMatchObject({
      protocolVersion: CONTROL_PROTOCOL_VERSION,
      capabilities: ['typed-stream-header', 'route-modes', 'probe-streams', 'route-certificates'],
    });
    const registered = await pollUntil(
      () => logs.find('agent registered')[0],
      5_000,
      'the agent to register',
    );
    expect(registered).toMatchObject({ serverId: 'server-old', capabilities: [] });

    const header = firstReleaseHeader('cluster-u1', '203.0.113.9:51234');
    const { stream, reply } = await session.openStream(Buffer.concat([header, Buffer.from('ping|')]));
    expect(reply).toEqual({ ok: true });
    // The echo target answers the bytes, then `<eof>` once the user's FIN has reached it.
    expect(await echoed(stream)).toBe('ping|<eof>');
    const closed = await pollUntil(() => logs.find('user connection closed')[0], 5_000, 'the closed line');
    expect(closed).toMatchObject({ route: 'cluster-u1', remoteAddress: '203.0.113.9:51234' });
    expect(closed).not.toHaveProperty('metadata');
  });
});

describe('a new agent and a new server', () => {
  test('they negotiate typed-stream-header: the agent reads v2 headers, metadata included, and user traffic flows', async () => {
    const { server, logs: serverLogs, target, token } = await startServer();
    const tlsTarget = await tlsEchoTarget();
    const echo = await echoTarget();
    const routes = [`apiserver=127.0.0.1:${tlsTarget.port}`, `echo=127.0.0.1:${echo.port}`];
    const { logs } = await startAgent({ ...target, token, routes });
    const registered = await pollUntil(
      () => logs.find('agent registered')[0],
      5_000,
      'the agent to register',
    );
    expect(registered).toMatchObject({
      serverId: 'server-new',
      capabilities: ['typed-stream-header', 'route-modes', 'probe-streams', 'route-certificates'],
    });
    const [agent] = server.registry.all();
    expect([...agent!.capabilities]).toEqual([
      'typed-stream-header',
      'route-modes',
      'probe-streams',
      'route-certificates',
    ]);
    expect(agent!.streamHeaderVersion).toBe(2);
    expect(serverLogs.find('agent connected')[0]).toMatchObject({
      capabilities: ['typed-stream-header', 'route-modes', 'probe-streams', 'route-certificates'],
    });

    // A user connection: the server's own v2 header (a route stream, no metadata).
    expect(await userEcho(server, tlsTarget.caPem, 'through v2')).toBe('through v2');

    // A stream with metadata, opened as the server opens every stream.
    const metadata = { 'trace-id': 'ab12', note: 'grüße' };
    const stream = agent!.openStream({
      type: 'route',
      route: 'cluster-u1-echo',
      remoteAddress: '198.51.100.7:4321',
      metadata,
    });
    stream.on('error', () => undefined);
    expect(await readStreamReply(stream, 5_000)).toEqual({ ok: true });
    expect(await echoed(stream, 'ping|')).toBe('ping|<eof>');
    const closed = await pollUntil(
      () => logs.find('user connection closed').find((l) => l.route === 'cluster-u1-echo'),
      5_000,
      'the agent to log the stream',
    );
    expect(closed).toMatchObject({ remoteAddress: '198.51.100.7:4321', metadata });
  });
});

describe('protocol versions', () => {
  test.each([0, CONTROL_PROTOCOL_VERSION + 1])(
    'a register with protocolVersion %i is refused with TUN_ERR_UNSUPPORTED_VERSION naming both ranges',
    async (protocolVersion) => {
      const { logs, target, token, server } = await startServer();
      const raw = await registerRaw(target, token, ['cluster-u1'], { protocolVersion });
      expect(raw.registered).toMatchObject({
        type: 'error',
        code: 'TUN_ERR_UNSUPPORTED_VERSION',
        message: expect.stringContaining(
          `agent speaks protocol versions ${protocolVersion}-${protocolVersion}, this server 1-1`,
        ),
      });
      expect(server.registry.all()).toHaveLength(0);
      await pollUntil(
        () => logs.find('agent registration failed')[0],
        5_000,
        'the server to log the refusal',
      ).then((line) => expect(line).toMatchObject({ code: 'TUN_ERR_UNSUPPORTED_VERSION' }));
    },
  );

  test('the agent surfaces a server refusing its version: an error line with the code, and it is not ready', async () => {
    // A server whose range has moved past version 1 answers as this build's server would.
    const future = await RawServer.start(() => ({
      type: 'error',
      code: 'TUN_ERR_UNSUPPORTED_VERSION',
      message: 'the agent speaks protocol versions 1-1, this server 2-3: upgrade the agent',
    }));
    const echo = await echoTarget();
    const token = await tokenFor(tempDir());
    const { agent, logs } = await startAgent({
      ...future,
      token,
      routes: [`apiserver=127.0.0.1:${echo.port}`],
    });
    const line = await pollUntil(
      () => logs.find('registration refused')[0],
      5_000,
      'the agent to log the refusal',
    );
    expect(line).toMatchObject({ level: LEVEL.error, code: 'TUN_ERR_UNSUPPORTED_VERSION' });
    expect(JSON.stringify(line)).toContain('this server 2-3');
    expect(agent.isReady).toBe(false);
  });
});

describe('unknown capabilities', () => {
  test('the server ignores names it does not know and uses the ones it does', async () => {
    const { server, target, token } = await startServer();
    const capabilities = ['from-the-future', 'typed-stream-header', 'x-2'];
    const raw = await registerRaw(target, token, ['cluster-u1'], { capabilities });
    expect(raw.registered).toMatchObject({
      type: 'registered',
      capabilities: ['typed-stream-header', 'route-modes', 'probe-streams', 'route-certificates'],
    });
    expect([...server.registry.all()[0]!.capabilities]).toEqual(['typed-stream-header']);
  });

  test('the agent ignores names it does not know: ServerSession.capabilities is the intersection', async () => {
    const newer = await RawServer.start(
      registeredBy('server-newer', { capabilities: ['typed-stream-header', 'from-the-future'] }),
    );
    const echo = await echoTarget();
    const session = await registeredSession(newer, echo.port);
    expect([...session.capabilities]).toEqual(['typed-stream-header']);
    const peer = await newer.nextSession();
    const header = encodeStreamHeader(
      { type: 'route', route: 'cluster-u1', remoteAddress: '203.0.113.9:1', metadata: { k: 'v' } },
      2,
    );
    const { stream, reply } = await peer.openStream(Buffer.concat([header, Buffer.from('v2|')]));
    expect(reply).toEqual({ ok: true });
    expect(await echoed(stream)).toBe('v2|<eof>');
  });
});

describe('unknown stream types', () => {
  test('the agent refuses a type it does not know with TUN_ERR_UNKNOWN_STREAM_TYPE, and its session carries on', async () => {
    const newer = await RawServer.start(
      registeredBy('server-newer', { capabilities: ['typed-stream-header'] }),
    );
    const echo = await echoTarget();
    const token = await tokenFor(tempDir());
    const { agent, logs } = await startAgent({
      ...newer,
      token,
      routes: [`apiserver=127.0.0.1:${echo.port}`],
    });
    const peer = await newer.nextSession();
    await pollUntil(() => agent.isReady, 5_000, 'the agent to register');

    // A type of a later release: 0x07, then the v2 fields as that release would write them.
    const unknown = encodeStreamHeader(
      { type: 'route', route: 'cluster-u1', remoteAddress: '203.0.113.9:2' },
      2,
    );
    unknown[1] = 7;
    expect(Object.values(STREAM_TYPES)).not.toContain(7);
    const refused = await peer.openStream(unknown);
    expect(refused.reply).toMatchObject({ ok: false, code: 'TUN_ERR_UNKNOWN_STREAM_TYPE' });
    await pollUntil(() => refused.stream.destroyed, 5_000, 'the refused stream to be reset');
    expect(logs.find('unknown stream type')[0]).toMatchObject({
      level: LEVEL.warn,
      code: 'TUN_ERR_UNKNOWN_STREAM_TYPE',
    });

    // The session goes on: the next stream, a route, is served.
    const route = encodeStreamHeader(
      { type: 'route', route: 'cluster-u1', remoteAddress: '203.0.113.9:3' },
      2,
    );
    const { stream, reply } = await peer.openStream(Buffer.concat([route, Buffer.from('still here|')]));
    expect(reply).toEqual({ ok: true });
    expect(await echoed(stream)).toBe('still here|<eof>');
    expect(agent.isReady).toBe(true);
    expect(peer.session.isClosed).toBe(false);
  });
});
