/**
 * The agent's two TLS legs on an agent-tls route agree on the application protocol: the server
 * passes the user's ALPN offer in the stream metadata, the agent offers it to the target and
 * answers the user with the target's choice. Real in-process server and agent, a real HTTP/2
 * target (a kube-apiserver picks h2 when kubectl offers it), real TLS clients.
 */
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import { join } from 'node:path';
import tls from 'node:tls';
import { describe, expect, onTestFinished, test } from 'vitest';
import { startInProcessAgent, startInProcessServer, type LogRecord } from '../helpers/in-process.js';
import { createTestCa } from '../helpers/pki.js';
import { pollUntil } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';

const HOST = 'cluster-u1-api.proxy.localhost';

/**
 * A target speaking HTTP/2 (and HTTP/1.1 to clients without ALPN); HTTP/1.1 only (Node's https
 * server selects http/1.1); or HTTP/1.1 behind a TLS server that selects no protocol at all.
 */
async function target(kind: 'h2' | 'http/1.1' | 'none') {
  const ca = await createTestCa('target');
  const leaf = await ca.issue({ commonName: 'api', dnsNames: ['api.internal'] });
  const dir = tempDir();
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, ca.certPem);
  const answer = (version: string) => `served over HTTP/${version}`;
  const credentials = { key: leaf.keyPem, cert: leaf.certPem };
  const server =
    kind === 'h2'
      ? http2.createSecureServer({ ...credentials, allowHTTP1: true }, (req, res) =>
          res.end(answer(req.httpVersion)),
        )
      : kind === 'http/1.1'
        ? https.createServer(credentials, (req, res) => res.end(answer(req.httpVersion)))
        : tls.createServer(credentials, (socket) => {
            socket.once('data', () => {
              const body = answer('1.1');
              socket.end(
                `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
              );
            });
          });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(() => {
    server.close();
  });
  return { port: (server.address() as { port: number }).port, caFile };
}

async function setup(kind: 'h2' | 'http/1.1' | 'none') {
  const t = await target(kind);
  const s = await startInProcessServer();
  const logs: LogRecord[] = [];
  const agent = await startInProcessAgent(s, {
    cluster: 'u1',
    routes: [`api=127.0.0.1:${t.port},mode=agent-tls,ca=${t.caFile},serverName=api.internal`],
    logs,
  });
  await pollUntil(() => agent.routeCertificate?.current, 10_000, 'the route certificate');
  const routeCa = readFileSync(join(s.dataDir, 'route-ca.crt'), 'utf8');
  return { s, routeCa, logs };
}

/** The protocol a TLS client offering `alpn` gets through the route. */
async function negotiated(port: number, routeCa: string, alpn: string[]): Promise<string | false | null> {
  const socket = tls.connect({ host: '127.0.0.1', port, servername: HOST, ca: routeCa, ALPNProtocols: alpn });
  await once(socket, 'secureConnect');
  const chosen = socket.alpnProtocol;
  socket.destroy();
  return chosen;
}

describe('ALPN through an agent-tls route', () => {
  test('HTTP/2 end to end when the user offers it and the target picks it', async () => {
    const { s, routeCa } = await setup('h2');
    expect(await negotiated(s.port, routeCa, ['h2', 'http/1.1'])).toBe('h2');
    expect(await negotiated(s.port, routeCa, ['http/1.1'])).toBe('http/1.1');
    // A real HTTP/2 request, several on one connection.
    const client = http2.connect(`https://127.0.0.1:${s.port}`, { servername: HOST, ca: routeCa });
    onTestFinished(() => {
      client.close();
    });
    const get = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const req = client.request({ ':path': '/' });
        let body = '';
        req.setEncoding('utf8');
        req.on('data', (c: string) => (body += c));
        req.on('end', () => resolve(body));
        req.on('error', reject);
        req.end();
      });
    expect(await Promise.all([get(), get(), get()])).toEqual(Array(3).fill('served over HTTP/2.0'));
    expect(client.alpnProtocol).toBe('h2');
  });

  test('a target that speaks only HTTP/1.1: the user offering h2 is answered http/1.1', async () => {
    const { s, routeCa } = await setup('http/1.1');
    expect(await negotiated(s.port, routeCa, ['h2', 'http/1.1'])).toBe('http/1.1');
  });

  test('a target that selects no protocol: neither leg has one, and HTTP/1.1 flows', async () => {
    const { s, routeCa } = await setup('none');
    expect(await negotiated(s.port, routeCa, ['h2', 'http/1.1'])).toBe(false);
    const body = await new Promise<string>((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', port: s.port, servername: HOST, ca: routeCa, path: '/', agent: false },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve(text));
        },
      );
      req.on('error', reject);
    });
    expect(body).toBe('served over HTTP/1.1');
  });
});

describe('a cluster whose agents differ in mode (a rollout from passthrough to agent-tls)', () => {
  test("each user connection goes only to agents of the mode that claimed it: never a passthrough user's TLS to an agent that ends it", async () => {
    const t = await target('http/1.1');
    const s = await startInProcessServer();
    const old = await startInProcessAgent(s, {
      cluster: 'u1',
      agentId: 'agent-passthrough',
      routes: [`apiserver=127.0.0.1:${t.port}`],
    });
    const renewed = await startInProcessAgent(s, {
      cluster: 'u1',
      agentId: 'agent-tls',
      routes: [`apiserver=127.0.0.1:${t.port},mode=agent-tls,ca=${t.caFile},serverName=api.internal`],
    });
    await pollUntil(() => renewed.routeCertificate?.current, 10_000, 'the route certificate');
    const connect = async (): Promise<void> => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: s.port,
        servername: 'cluster-u1.proxy.localhost',
        rejectUnauthorized: false,
      });
      socket.on('error', () => undefined);
      await Promise.race([once(socket, 'secureConnect'), once(socket, 'close')]);
      socket.destroy();
    };
    const forwardedTo = (): string[] =>
      s.events.flatMap((e) => (e.type === 'forwarded' && e.route === 'cluster-u1' ? [e.agentId] : []));
    // The first agent registered passthrough: its mode claims the route, and only it serves it.
    for (let i = 0; i < 6; i++) await connect();
    await pollUntil(() => forwardedTo().length === 6 || undefined, 10_000, 'six forwarded connections');
    expect(new Set(forwardedTo())).toEqual(new Set(['agent-passthrough']));
    // The old agent leaves: agent-tls claims the route, and users get the route certificate.
    old.destroy();
    await pollUntil(
      () => s.server.registry.candidates('cluster-u1').length === 1 || undefined,
      10_000,
      'one agent',
    );
    for (let i = 0; i < 3; i++) await connect();
    await pollUntil(() => forwardedTo().length === 9 || undefined, 10_000, 'three more');
    expect(forwardedTo().slice(6)).toEqual(['agent-tls', 'agent-tls', 'agent-tls']);
  });
});
