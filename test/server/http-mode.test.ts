/**
 * The `http` route mode in-process: a real TunnelServer, a real agent whose route is a URL, and
 * a fixture dashboard (a page, a header mirror, server-sent events, a large download, a
 * WebSocket console with a subprotocol). A signed link opens a session; without one nothing
 * reaches the agent. Real HTTPS clients on 127.0.0.1 (node:https and ws; curl in e2e).
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type http from 'node:http';
import https from 'node:https';
import { join } from 'node:path';
import { describe, expect, onTestFinished, test } from 'vitest';
import bcrypt from 'bcryptjs';
import WebSocket from 'ws';
import { LOGIN_PATH, createLink } from '@cluster-tunnel/server';
import { DASHBOARD_BIG, startDashboard } from '../helpers/dashboard.js';
import { startInProcessAgent, startInProcessServer, type InProcessServer } from '../helpers/in-process.js';
import { freePort } from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';
import { withDeadline } from '../helpers/streams.js';
import { linkIdOf } from '../../packages/server/src/http-link.js';

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** When each body chunk arrived (performance.now()). */
  chunkTimes: number[];
}

function get(
  s: InProcessServer,
  route: string,
  path: string,
  cookie?: string,
  extra: Record<string, string> = {},
): Promise<Answer> {
  const host = `${route}.proxy.localhost`;
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port: s.port,
        servername: host,
        ca: readFileSync(s.caFile),
        path,
        headers: { Host: `${host}:${s.port}`, ...(cookie ? { Cookie: cookie } : {}), ...extra },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        const chunkTimes: number[] = [];
        res.on('data', (c: Buffer) => {
          chunks.push(c);
          chunkTimes.push(performance.now());
        });
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            chunkTimes,
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function setup(routes: string[] = [], serverArgs: string[] = []) {
  const s = await startInProcessServer(serverArgs);
  const port = await startDashboard();
  await startInProcessAgent(s, { cluster: 'u1', routes: [`dash=http://127.0.0.1:${port}`, ...routes] });
  const privateKeyPem = readFileSync(join(s.dataDir, 'token-signing.key'), 'utf8');
  const link = (route: string, o: { ttlMs?: number; now?: () => number } = {}) =>
    createLink({
      privateKeyPem,
      hostname: `${route}.proxy.localhost`,
      user: 'alice',
      ttlMs: o.ttlMs ?? 600_000,
      sessionTtlMs: 8 * 3_600_000,
      ...(o.now ? { now: o.now } : {}),
    });
  /** Opens a link as a browser would and returns the session cookie it sets. */
  const login = async (route: string, token?: string): Promise<string> => {
    const answer = await get(s, route, `${LOGIN_PATH}?token=${token ?? (await link(route))}`);
    expect(answer.status).toBe(303);
    const setCookie = answer.headers['set-cookie']?.[0] ?? '';
    expect(setCookie).toMatch(/HttpOnly; Secure; SameSite=Lax/);
    return setCookie.split(';')[0]!;
  };
  return { s, link, login };
}

describe('an http route', () => {
  test('without a session every request is refused with 401 and never reaches the agent', async () => {
    const { s } = await setup();
    const answer = await get(s, 'cluster-u1-dash', '/');
    expect(answer.status).toBe(401);
    expect(answer.headers['x-tunnel-error']).toBe('TUN_ERR_ACCESS_DENIED');
    expect(answer.body.toString()).toContain('TUN_ERR_ACCESS_DENIED');
    expect(s.server.status().modes.http).toMatchObject({ requests: 0 });
  });

  test('a link opens a session: pages, forwarded headers, an 8 MiB-class download, events as they are sent', async () => {
    const { s, login } = await setup();
    const cookie = await login('cluster-u1-dash');
    const home = await get(s, 'cluster-u1-dash', '/', cookie);
    expect(home.status).toBe(200);
    expect(home.body.toString()).toBe('<h1>dashboard home</h1>');

    const mirrored = JSON.parse(
      (await get(s, 'cluster-u1-dash', '/headers', `${cookie}; theme=dark`)).body.toString(),
    ) as Record<string, string>;
    expect(mirrored.host).toBe(`cluster-u1-dash.proxy.localhost:${s.port}`);
    expect(mirrored['x-forwarded-proto']).toBe('https');
    expect(mirrored['x-forwarded-host']).toBe(`cluster-u1-dash.proxy.localhost:${s.port}`);
    expect(mirrored['x-forwarded-for']).toBe('127.0.0.1');
    // The session is the tunnel's: the dashboard gets its own cookies only.
    expect(mirrored.cookie).toBe('theme=dark');

    const big = await get(s, 'cluster-u1-dash', '/big', cookie);
    expect(createHash('sha256').update(big.body).digest('hex')).toBe(
      createHash('sha256').update(DASHBOARD_BIG).digest('hex'),
    );

    const events = await get(s, 'cluster-u1-dash', '/sse', cookie);
    expect(events.body.toString()).toBe('data: event 0\n\ndata: event 1\n\ndata: event 2\n\n');
    // Sent 150 ms apart and received so: not buffered until the end.
    expect(events.chunkTimes.at(-1)! - events.chunkTimes[0]!).toBeGreaterThanOrEqual(250);
  });

  test('a session for one route is refused on another; an expired link opens nothing', async () => {
    const { s, login, link } = await setup([`other=http://127.0.0.1:${await startDashboard()}`]);
    const cookie = await login('cluster-u1-dash');
    const elsewhere = await get(s, 'cluster-u1-other', '/', cookie);
    expect(elsewhere.status).toBe(401);
    const stale = await link('cluster-u1-other', { ttlMs: 60_000, now: () => Date.now() - 120_000 });
    const refused = await get(s, 'cluster-u1-other', `${LOGIN_PATH}?token=${stale}`);
    expect(refused.status).toBe(401);
    expect(refused.body.toString()).toContain('link expired');
    expect(refused.headers['set-cookie']).toBeUndefined();
  });

  test('a WebSocket console passes with its subprotocol and round-trips binary messages', async () => {
    const { s, login } = await setup();
    const cookie = await login('cluster-u1-dash');
    const host = 'cluster-u1-dash.proxy.localhost';
    // TLS options ws hands to tls.connect (its typings leave servername out).
    const tlsTo = (headers: Record<string, string>) =>
      ({ servername: host, ca: readFileSync(s.caFile), headers }) as WebSocket.ClientOptions;
    const refused = await new Promise<number>((resolve) => {
      const bare = new WebSocket(`wss://127.0.0.1:${s.port}/console`, ['binary'], tlsTo({ Host: host }));
      bare.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      bare.on('error', () => undefined);
    });
    expect(refused).toBe(401);
    const ws = new WebSocket(
      `wss://127.0.0.1:${s.port}/console`,
      ['binary'],
      tlsTo({ Host: host, Cookie: cookie }),
    );
    onTestFinished(() => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    expect(ws.protocol).toBe('binary');
    const received: Buffer[] = [];
    const all = new Promise<void>((resolve) => {
      ws.on('message', (data: Buffer) => {
        received.push(data);
        if (received.length === 300) resolve();
      });
    });
    const sent = Array.from({ length: 300 }, (_, i) => randomBytes(100 + i));
    for (const m of sent) ws.send(m);
    await all;
    expect(received.map((b) => b.toString('hex'))).toEqual(sent.map((b) => b.toString('hex')));
  });

  test('failures are pages with their code: the target down is 502 TUN_ERR_DIAL_FAILED', async () => {
    const { s, login } = await setup([`down=http://127.0.0.1:${await freePort()}`]);
    const cookie = await login('cluster-u1-down');
    const answer = await get(s, 'cluster-u1-down', '/', cookie);
    expect(answer.status).toBe(502);
    expect(answer.headers['x-tunnel-error']).toBe('TUN_ERR_DIAL_FAILED');
    expect(answer.body.toString()).toContain('TUN_ERR_DIAL_FAILED');
  });

  test('a dashboard that does not answer in time is a 504 page with its code, never a hung tab', async () => {
    const { s, login } = await setup([], ['--http-response-timeout-ms', '300ms']);
    const cookie = await login('cluster-u1-dash');
    const started = performance.now();
    const answer = await get(s, 'cluster-u1-dash', '/slow', cookie);
    expect(answer.status).toBe(504);
    expect(answer.headers['x-tunnel-error']).toBe('TUN_ERR_TIMEOUT');
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  test('request headers over 16 KiB get 431 with their code, as on the own name', async () => {
    const { s } = await setup();
    const host = 'cluster-u1-dash.proxy.localhost';
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = https.request(
        {
          host: '127.0.0.1',
          port: s.port,
          servername: host,
          ca: readFileSync(s.caFile),
          path: '/',
          headers: { Host: host, 'X-Padding': 'x'.repeat(20 * 1024) },
          agent: false,
        },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(answer.status).toBe(431);
    expect(answer.body).toContain('TUN_ERR_LIMIT_EXCEEDED');
  });

  test("a user's requests reuse one stream to the dashboard; two users never share one", async () => {
    const { s, login } = await setup();
    const cookie = await login('cluster-u1-dash');
    const host = 'cluster-u1-dash.proxy.localhost';
    const conn = (agent: https.Agent) =>
      new Promise<string>((resolve, reject) => {
        https
          .get(
            {
              host: '127.0.0.1',
              port: s.port,
              servername: host,
              ca: readFileSync(s.caFile),
              path: '/conn',
              headers: { Host: host, Cookie: cookie },
              agent,
            },
            (res) => {
              let body = '';
              res.on('data', (c: Buffer) => (body += c.toString()));
              res.on('end', () => resolve(body));
            },
          )
          .on('error', reject);
      });
    const userA = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const userB = new https.Agent({ keepAlive: true, maxSockets: 1 });
    onTestFinished(() => {
      userA.destroy();
      userB.destroy();
    });
    const a = [await conn(userA), await conn(userA), await conn(userA)];
    expect(new Set(a).size).toBe(1);
    expect(await conn(userB)).not.toBe(a[0]);
    expect(await conn(userA)).toBe(a[0]);
  });

  test("a link's id in the revocation file ends its session, open console included; other links go on", async () => {
    const revokedFile = join(tempDir(), 'revoked');
    const { s, link, login } = await setup([], ['--revoked-file', revokedFile]);
    const revokedLink = await link('cluster-u1-dash');
    const cookie = await login('cluster-u1-dash', revokedLink);
    const otherCookie = await login('cluster-u1-dash');
    const host = 'cluster-u1-dash.proxy.localhost';
    const ws = new WebSocket(`wss://127.0.0.1:${s.port}/console`, ['binary'], {
      servername: host,
      ca: readFileSync(s.caFile),
      headers: { Host: host, Cookie: cookie },
    } as WebSocket.ClientOptions);
    onTestFinished(() => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    writeFileSync(revokedFile, `${linkIdOf(revokedLink)}\n`);
    await withDeadline(closed, 5_000, 'the revoked session to lose its console');
    const refused = await get(s, 'cluster-u1-dash', '/', cookie);
    expect(refused.status).toBe(401);
    expect(refused.body.toString()).toContain('session revoked');
    expect((await get(s, 'cluster-u1-dash', `${LOGIN_PATH}?token=${revokedLink}`)).status).toBe(401);
    expect((await get(s, 'cluster-u1-dash', '/', otherCookie)).status).toBe(200);
  });

  test('logout ends the session for that route', async () => {
    const { s, login } = await setup();
    const cookie = await login('cluster-u1-dash');
    const out = await get(s, 'cluster-u1-dash', '/.tunnel/logout', cookie);
    expect(out.status).toBe(200);
    expect(out.headers['set-cookie']?.[0]).toMatch(/^tunnel_session=; .*Max-Age=0/);
  });

  test("hostHeader replaces Host for the target; the user's stays in X-Forwarded-Host", async () => {
    const port = await startDashboard();
    const { s, login } = await setup([`named=http://127.0.0.1:${port},hostHeader=dash.internal`]);
    const cookie = await login('cluster-u1-named');
    const mirrored = JSON.parse(
      (await get(s, 'cluster-u1-named', '/headers', cookie)).body.toString(),
    ) as Record<string, string>;
    expect(mirrored.host).toBe('dash.internal');
    expect(mirrored['x-forwarded-host']).toBe(`cluster-u1-named.proxy.localhost:${s.port}`);
  });

  test('a streaming response outlives the response timeout once it has started: no fixed request timeout', async () => {
    const { s, login } = await setup([], ['--http-response-timeout-ms', '800ms']);
    const cookie = await login('cluster-u1-dash');
    const events = await get(s, 'cluster-u1-dash', '/sse-slow', cookie);
    expect(events.status).toBe(200);
    expect(events.body.toString()).toBe('data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n');
    expect(events.chunkTimes.at(-1)! - events.chunkTimes[0]!).toBeGreaterThanOrEqual(800);
  });

  test('a route the operator opened (access none) needs no session, and only that route', async () => {
    const { s } = await setup(['other=http://127.0.0.1:1'], ['--http-route-access', 'cluster-u1-dash=none']);
    expect((await get(s, 'cluster-u1-dash', '/')).status).toBe(200);
    expect((await get(s, 'cluster-u1-other', '/')).status).toBe(401);
    expect(s.server.status().modes.http).toMatchObject({
      access: { default: 'link', routes: { 'cluster-u1-dash': 'none' } },
    });
  });
});

describe('an http route with basic access', () => {
  const basic = (user: string, password: string) => ({
    Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`,
  });

  async function basicSetup(serverArgs: string[] = []) {
    const file = join(tempDir(), 'htpasswd');
    writeFileSync(file, `alice:${bcrypt.hashSync('correct horse', 4)}\n`);
    return setup([], ['--http-access', 'basic', '--http-htpasswd-file', file, ...serverArgs]);
  }

  test('the password is for the tunnel: the dashboard never sees it, and a link is no way in', async () => {
    const { s, link } = await basicSetup();
    const denied = await get(s, 'cluster-u1-dash', '/headers');
    expect(denied.status).toBe(401);
    expect(denied.headers['www-authenticate']).toBe(
      'Basic realm="cluster-u1-dash.proxy.localhost", charset="UTF-8"',
    );
    const answer = await get(s, 'cluster-u1-dash', '/headers', undefined, basic('alice', 'correct horse'));
    expect(answer.status).toBe(200);
    const mirrored = JSON.parse(answer.body.toString()) as Record<string, string>;
    expect(mirrored.authorization).toBeUndefined();
    const viaLink = await get(s, 'cluster-u1-dash', `${LOGIN_PATH}?token=${await link('cluster-u1-dash')}`);
    expect(viaLink.status).toBe(401);
    expect(viaLink.body.toString()).toContain('this route uses basic access, not links');
  });

  test('an upgrade needs the password too, and passes with it', async () => {
    const { s } = await basicSetup();
    const host = 'cluster-u1-dash.proxy.localhost';
    const open = (headers: Record<string, string>) =>
      new WebSocket(`wss://127.0.0.1:${s.port}/console`, ['binary'], {
        servername: host,
        ca: readFileSync(s.caFile),
        headers: { Host: host, ...headers },
      } as WebSocket.ClientOptions);
    const refused = await new Promise<http.IncomingMessage>((resolve) => {
      const ws = open(basic('alice', 'wrong'));
      ws.on('unexpected-response', (_req, res) => resolve(res));
      ws.on('error', () => undefined);
    });
    expect(refused.statusCode).toBe(401);
    expect(refused.headers['www-authenticate']).toMatch(/^Basic realm=/);
    const ws = open(basic('alice', 'correct horse'));
    onTestFinished(() => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const echoed = new Promise<Buffer>((resolve) => ws.once('message', (m: Buffer) => resolve(m)));
    ws.send(Buffer.from([1, 2, 3]));
    expect([...(await echoed)]).toEqual([1, 2, 3]);
  });

  test('a route may keep link access under a basic default, and links work there', async () => {
    const { s, login } = await basicSetup(['--http-route-access', 'cluster-u1-dash=link']);
    const cookie = await login('cluster-u1-dash');
    // The dashboard's own Authorization (a bearer token of its login) reaches it on a link route.
    const answer = await get(s, 'cluster-u1-dash', '/headers', cookie, {
      Authorization: 'Bearer dashboard-token',
    });
    expect((JSON.parse(answer.body.toString()) as Record<string, string>).authorization).toBe(
      'Bearer dashboard-token',
    );
    expect((await get(s, 'cluster-u1-dash', '/', undefined, basic('alice', 'correct horse'))).status).toBe(
      401,
    );
  });
});
