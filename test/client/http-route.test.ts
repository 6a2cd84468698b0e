/**
 * The agent's side of an http route (a URL target): it registers the route with its mode, and
 * for an `https://` target it opens TLS to the target itself, verified against the route's
 * `ca` and `serverName` (or not, with `insecure`), so the stream carries plain HTTP bytes. A
 * scripted server opens the streams (and stands in for servers that cannot route the mode); the
 * real server publishes the route in the http mode (test/server/http-mode.test.ts drives it).
 */
import type net from 'node:net';
import tls from 'node:tls';
import { describe, expect, onTestFinished, test } from 'vitest';
import { resolveClientConfig } from '../../packages/client/src/config.js';
import { TunnelAgent } from '../../packages/client/src/tunnel-agent.js';
import { startInProcessServer } from '../helpers/in-process.js';
import type { ControlMessage, RegisterMessage } from '@cluster-tunnel/protocol';
import { RawServer } from '../helpers/raw-server.js';
import { pollUntil } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';
import { createTestCa } from '../helpers/pki.js';
import { tlsCredentials } from '../helpers/transports.js';
import { LEVEL, captureLogs, readAll, writeFile } from './fixtures.js';

/** A TLS target that answers each connection with what it received, prefixed, then ends. */
async function tlsEchoTarget(options: tls.TlsOptions): Promise<number> {
  const server = tls.createServer(options, (socket) => {
    socket.on('error', () => undefined);
    socket.once('data', (d: Buffer) => socket.end(`tls:${d.toString()}`));
  });
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => {
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}

/** A scripted server that routes by mode, as ours does: it announces `route-modes`. */
const modeAware = (m: RegisterMessage): ControlMessage => ({
  type: 'registered',
  serverId: 'raw-1',
  hostnames: m.routes.map((r) => `${r}.proxy.localhost`),
  capabilities: ['typed-stream-header', 'route-modes'],
});

async function agentWith(
  server: { url: string; caFile: string },
  routes: string[],
  token = 'x.eyJjbHVzdGVyIjoidTEifQ.x',
) {
  const dir = tempDir();
  const argv = [
    ...['--server', server.url, '--token-file', writeFile(dir, 'token', token), '--ca-file', server.caFile],
    ...routes.flatMap((r) => ['--route', r]),
    ...['--health-listen', 'off', '--backoff-initial-ms', '10', '--backoff-max-ms', '50'],
  ];
  const logs = captureLogs();
  const agent = new TunnelAgent(resolveClientConfig({ argv, env: {}, cwd: dir }), { logger: logs.logger });
  onTestFinished(() => agent.destroy());
  await agent.start();
  return { agent, logs, dir };
}

describe('an http route on the agent', () => {
  test('registers with its mode, and opens verified TLS to an https target: the stream carries plain bytes', async () => {
    const { key, cert } = await tlsCredentials(); // for localhost and 127.0.0.1, its own CA
    const port = await tlsEchoTarget({ key, cert });
    const raw = await RawServer.start(modeAware);
    const caDir = tempDir();
    const ca = writeFile(caDir, 'target-ca.pem', cert);
    await agentWith(raw, [
      `dash=https://127.0.0.1:${port},ca=${ca},serverName=localhost`,
      'apiserver=127.0.0.1:1',
    ]);
    const session = await raw.nextSession();
    expect(session.register.routes).toEqual(['cluster-u1-dash', 'cluster-u1']);
    expect(session.register.routeModes).toEqual({ 'cluster-u1-dash': 'http' });
    expect(session.register.capabilities).toContain('route-modes');
    const { stream, reply } = await session.openRoute(
      'cluster-u1-dash',
      Buffer.from('GET / HTTP/1.1\r\n\r\n'),
    );
    expect(reply).toEqual({ ok: true });
    expect((await readAll(stream)).toString()).toBe('tls:GET / HTTP/1.1\r\n\r\n');
  });

  test('a stream to an https target reset mid-exchange costs that stream only (it once crashed the agent)', async () => {
    const { key, cert } = await tlsCredentials();
    // A target that echoes and stays open, as a dashboard on a kept-alive connection does.
    const target = tls.createServer({ key, cert }, (socket) => {
      socket.on('error', () => undefined);
      socket.pipe(socket);
    });
    await new Promise<void>((resolve) => target.listen(0, '127.0.0.1', resolve));
    onTestFinished(() => {
      target.close();
    });
    const port = (target.address() as net.AddressInfo).port;
    const raw = await RawServer.start(modeAware);
    const ca = writeFile(tempDir(), 'target-ca.pem', cert);
    await agentWith(raw, [`dash=https://127.0.0.1:${port},ca=${ca},serverName=localhost`]);
    const session = await raw.nextSession();
    const first = await session.openRoute('cluster-u1-dash', Buffer.from('ping'));
    expect(first.reply).toEqual({ ok: true });
    const echoed = new Promise<string>((resolve) =>
      first.stream.once('data', (d: Buffer) => resolve(d.toString())),
    );
    first.stream.resume();
    expect(await echoed).toBe('ping');
    // The server side gives up on the stream (its user went away): a reset, not a clean close.
    first.stream.destroy();
    const second = await session.openRoute('cluster-u1-dash', Buffer.from('again'));
    expect(second.reply).toEqual({ ok: true });
    const again = new Promise<string>((resolve) =>
      second.stream.once('data', (d: Buffer) => resolve(d.toString())),
    );
    second.stream.resume();
    expect(await again).toBe('again');
  });

  test('refuses the stream with TUN_ERR_DIAL_FAILED and the TLS error when the target is not the one the CA vouches for', async () => {
    const { key, cert } = await tlsCredentials();
    const port = await tlsEchoTarget({ key, cert });
    const other = await createTestCa('another-ca');
    const raw = await RawServer.start(modeAware);
    const ca = writeFile(tempDir(), 'other-ca.pem', other.certPem);
    const { logs } = await agentWith(raw, [`dash=https://127.0.0.1:${port},ca=${ca},serverName=localhost`]);
    const session = await raw.nextSession();
    const { reply } = await session.openRoute('cluster-u1-dash', Buffer.from('GET / HTTP/1.1\r\n\r\n'));
    expect(reply).toMatchObject({ ok: false, code: 'TUN_ERR_DIAL_FAILED' });
    expect(reply.ok === false && reply.message).toMatch(/UNABLE_TO_VERIFY|SELF_SIGNED|CERT/);
    const line = await pollUntil(() => logs.find('target dial failed')[0], 5_000, 'the dial failure');
    expect(line).toMatchObject({
      level: LEVEL.warn,
      route: 'cluster-u1-dash',
      target: `https://127.0.0.1:${port}`,
    });
  });

  test('with insecure it skips verification, and says so once at start', async () => {
    const { key, cert } = await tlsCredentials();
    const port = await tlsEchoTarget({ key, cert });
    const raw = await RawServer.start(modeAware);
    const { logs } = await agentWith(raw, [`dash=https://127.0.0.1:${port},insecure`]);
    expect(logs.find('target TLS not verified (insecure)')).toEqual([
      expect.objectContaining({ level: LEVEL.warn, route: 'dash' }),
    ]);
    const session = await raw.nextSession();
    const { stream, reply } = await session.openRoute('cluster-u1-dash', Buffer.from('hello'));
    expect(reply).toEqual({ ok: true });
    expect((await readAll(stream)).toString()).toBe('tls:hello');
  });

  test('a server that does not run the http mode leaves the route out; the agent logs which, and its other routes work', async () => {
    // A server that knows route-modes but not `http` (a mode it leaves out) answers without it.
    const raw = await RawServer.start((m) => ({
      type: 'registered',
      serverId: 'raw-1',
      hostnames: m.routes.filter((r) => r !== 'cluster-u1-dash').map((r) => `${r}.proxy.localhost`),
      capabilities: ['typed-stream-header', 'route-modes'],
    }));
    const { logs } = await agentWith(raw, ['dash=http://127.0.0.1:1', 'db=127.0.0.1:1']);
    const line = await pollUntil(
      () => logs.find('routes not published by this server')[0],
      5_000,
      'the warning',
    );
    expect(line).toMatchObject({
      level: LEVEL.warn,
      routes: ['cluster-u1-dash'],
      code: 'TUN_ERR_UNKNOWN_ROUTE',
    });
  });

  test('an older server, which would route every label as passthrough, is given no stream for an http route', async () => {
    const raw = await RawServer.start(); // answers `registered` without capabilities, all hostnames
    const { logs } = await agentWith(raw, ['dash=http://127.0.0.1:1', 'db=127.0.0.1:1']);
    const session = await raw.nextSession();
    const line = await pollUntil(
      () => logs.find('routes not published by this server')[0],
      5_000,
      'the warning',
    );
    expect(line).toMatchObject({ routes: ['cluster-u1-dash'] });
    // It would send the user's TLS as if to a passthrough target: refused, never dialed.
    const { reply } = await session.openRoute('cluster-u1-dash', Buffer.from('\x16\x03\x01'));
    expect(reply).toMatchObject({ ok: false, code: 'TUN_ERR_UNKNOWN_ROUTE' });
  });

  test('the real server publishes it as an http route', async () => {
    const s = await startInProcessServer();
    await agentWith(
      { url: `wss://127.0.0.1:${s.port}/connect`, caFile: s.caFile },
      ['dash=http://127.0.0.1:1', 'db=127.0.0.1:1'],
      await s.token('u1'),
    );
    await pollUntil(() => s.server.registry.size === 1, 5_000, 'the registration');
    expect(s.server.registry.labels()).toEqual(['cluster-u1-dash', 'cluster-u1-db']);
    expect(s.server.registry.modeOf('cluster-u1-dash')).toBe('http');
    expect(s.server.registry.modeOf('cluster-u1-db')).toBe('passthrough');
  });
});
