/**
 * Agent credentials at the public port: a refused agent gets an HTTP status and a coded reason
 * before any WebSocket exists, and a token binds its agent to its own cluster's hostnames.
 */
import { readFile, writeFile } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { describe, expect, it, onTestFinished } from 'vitest';
import { WebSocket } from 'ws';
import { dial as agentDial } from '../../packages/client/src/server-dialer.js';
import {
  CONTROL_PROTOCOL_VERSION,
  ControlChannel,
  YamuxSession,
  createWebSocketDuplex,
} from '@cluster-tunnel/protocol';
import {
  createToken as signToken,
  loadOrCreateSigningKeyPair,
} from '../../packages/server/src/token-issuer.js';
import {
  createToken,
  startAgent,
  startServer,
  writeTokenFile,
  type ServerHandle,
} from '../helpers/tunnel.js';
import { pollUntil } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';

interface Refusal {
  status: number;
  body: { code: string; message: string };
}

/** The headers of the last refusal dial() saw. */
let refusalHeaders: Record<string, string | string[] | undefined> = {};

/**
 * Dials /connect with a plain `ws` client (an independent implementation of the handshake);
 * resolves with the refusal, or with the open socket.
 */
async function dial(
  server: ServerHandle,
  token?: string,
  protocolVersion?: number,
): Promise<Refusal | WebSocket> {
  const ca = await readFile(server.caFile, 'utf8');
  const ws = new WebSocket(server.url, {
    ca,
    headers: token === undefined ? {} : { Authorization: `Bearer ${token}` },
    ...(protocolVersion === undefined ? {} : { protocolVersion }),
  });
  onTestFinished(() => ws.terminate());
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => {
      refusalHeaders = res.headers;
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: JSON.parse(body) as Refusal['body'] }),
      );
    });
  });
}

async function refusal(server: ServerHandle, token?: string, protocolVersion?: number): Promise<Refusal> {
  const result = await dial(server, token, protocolVersion);
  if (result instanceof WebSocket) throw new Error('the server accepted the agent');
  return result;
}

async function signingKey(server: ServerHandle): Promise<string> {
  return readFile(join(server.dataDir, 'token-signing.key'), 'utf8');
}

describe('agent authentication on the WebSocket upgrade', () => {
  it('refuses a missing token with 401 TUN_ERR_AUTH_REQUIRED', async () => {
    const server = await startServer();
    const r = await refusal(server);
    expect(r.status).toBe(401);
    expect(r.body.code).toBe('TUN_ERR_AUTH_REQUIRED');
    const line = await server.proc.waitForLog((l) => l.msg === 'agent refused');
    expect(line.code).toBe('TUN_ERR_AUTH_REQUIRED');
  });

  it('refuses an expired token with 401 TUN_ERR_TOKEN_EXPIRED', async () => {
    const server = await startServer();
    const expired = await signToken({
      privateKeyPem: await signingKey(server),
      clusterId: 'u1',
      audience: 'proxy.localhost',
      ttlMs: 60_000,
      now: () => Date.now() - 3_600_000,
    });
    const r = await refusal(server, expired);
    expect(r.status).toBe(401);
    expect(r.body.code).toBe('TUN_ERR_TOKEN_EXPIRED');
  });

  it('refuses forged tokens: a foreign key and a tampered payload', async () => {
    const server = await startServer();
    const foreignDir = tempDir();
    const foreign = await loadOrCreateSigningKeyPair(foreignDir);
    const byForeignKey = await signToken({
      privateKeyPem: foreign.privateKeyPem,
      clusterId: 'u1',
      audience: 'proxy.localhost',
      ttlMs: 60_000,
    });
    expect((await refusal(server, byForeignKey)).body.code).toBe('TUN_ERR_UNKNOWN_KEY');

    const genuine = await createToken(server.dataDir, 'u1');
    const [h, , s] = genuine.split('.');
    const payload = { ...decodeJwt(genuine), cluster: 'victim', sub: 'cluster:victim' };
    const tampered = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`;
    const r = await refusal(server, tampered);
    expect(r.status).toBe(401);
    expect(r.body.code).toBe('TUN_ERR_TOKEN_INVALID');
  });

  it('refuses a revoked token with 403 TUN_ERR_TOKEN_REVOKED, noticing the file change while running', async () => {
    const dir = tempDir();
    const revokedFile = join(dir, 'revoked');
    await writeFile(revokedFile, '# revoked token ids\n');
    const server = await startServer({ args: ['--revoked-file', revokedFile] });
    const token = await createToken(server.dataDir, 'u1');
    const accepted = await dial(server, token);
    expect(accepted).toBeInstanceOf(WebSocket);
    (accepted as WebSocket).terminate();
    await writeFile(revokedFile, `# revoked token ids\n${decodeJwt(token).jti}\n`);
    // The server notices the change on its own schedule: dial until it refuses.
    const r = await pollUntil(
      async () => {
        const attempt = await dial(server, token);
        if (!(attempt instanceof WebSocket)) return attempt;
        attempt.terminate();
        return undefined;
      },
      10_000,
      'the server to refuse the revoked token',
      100,
    );
    expect(r.status).toBe(403);
    expect(r.body.code).toBe('TUN_ERR_TOKEN_REVOKED');
  });

  it('the real agent logs a refused token as an operator error and keeps retrying slowly', async () => {
    const server = await startServer();
    const dir = tempDir();
    const expired = await signToken({
      privateKeyPem: await signingKey(server),
      clusterId: 'u1',
      audience: 'proxy.localhost',
      ttlMs: 60_000,
      now: () => Date.now() - 3_600_000,
    });
    const agent = await startAgent(
      { server, tokenFile: await writeTokenFile(dir, expired), routes: ['apiserver=127.0.0.1:1'] },
      false,
    );
    const first = await agent.waitForLog((l) => l.msg === 'agent credentials refused');
    expect(first.code).toBe('TUN_ERR_TOKEN_EXPIRED');
    expect(first.level).toBe(50); // error: an operator must act
    // It tries again (auth retry is 1 s in tests) and stays alive: no crash loop.
    await agent.waitForLog(
      (l) => l.msg === 'agent credentials refused',
      10_000,
      agent.logs.indexOf(first) + 1,
    );
    expect(agent.child.exitCode).toBeNull();
    expect(JSON.stringify(agent.logs)).not.toContain(expired);
  });
});

/**
 * Connects with the agent's own dialer as an agent of `cluster` with a valid token and registers
 * `routes`; returns the answer.
 */
async function register(server: ServerHandle, cluster: string, routes: string[]) {
  const { socket, head } = await agentDial({
    server: server.url,
    token: await createToken(server.dataDir, cluster),
    caFile: server.caFile,
    noProxy: [],
    timeoutMs: 10_000,
  });
  const session = new YamuxSession(createWebSocketDuplex(socket, { role: 'client', head }), {
    role: 'client',
    keepaliveIntervalMs: 0,
  });
  onTestFinished(() => session.destroy());
  const control = new ControlChannel(session.open());
  control.send({
    type: 'register',
    protocolVersion: CONTROL_PROTOCOL_VERSION,
    agentId: 'a1',
    agentVersion: 't',
    routes,
  });
  return control.next(5_000);
}

describe('the WebSocket handshake at the agent endpoint', () => {
  it('answers another WebSocket version with 426, Sec-WebSocket-Version: 13 and TUN_ERR_PROTOCOL', async () => {
    const server = await startServer();
    const r = await refusal(server, await createToken(server.dataDir, 'u1'), 8);
    expect(r.status).toBe(426);
    expect(refusalHeaders['sec-websocket-version']).toBe('13');
    expect(r.body.code).toBe('TUN_ERR_PROTOCOL');
  });

  it('answers an upgrade without a valid Sec-WebSocket-Key with 400 before looking at the token', async () => {
    const server = await startServer();
    const ca = await readFile(server.caFile, 'utf8');
    const req = https.request(server.url.replace(/^wss:/, 'https:'), {
      ca,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'not sixteen bytes',
      },
    });
    req.end();
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('upgrade', () => reject(new Error('the server accepted the upgrade')));
      req.once('error', reject);
    });
    let body = '';
    for await (const chunk of res) body += String(chunk);
    expect(res.statusCode).toBe(400);
    expect(JSON.parse(body)).toMatchObject({ code: 'TUN_ERR_PROTOCOL' });
  });
});

describe('route ownership', () => {
  it("refuses cluster a's agent that claims cluster-b with TUN_ERR_ROUTE_FORBIDDEN", async () => {
    const server = await startServer();
    const answer = await register(server, 'a', ['cluster-a', 'cluster-b']);
    expect(answer).toMatchObject({ type: 'error', code: 'TUN_ERR_ROUTE_FORBIDDEN' });
    const line = await server.proc.waitForLog((l) => l.msg === 'agent registration failed');
    expect(line.code).toBe('TUN_ERR_ROUTE_FORBIDDEN');
  });

  it('accepts an agent that claims its own apiserver and named routes', async () => {
    const server = await startServer();
    expect(await register(server, 'a', ['cluster-a', 'cluster-a-dashboard'])).toMatchObject({
      type: 'registered',
      hostnames: ['cluster-a.proxy.localhost', 'cluster-a-dashboard.proxy.localhost'],
    });
  });
});
