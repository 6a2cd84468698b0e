/**
 * The audit lines (docs/OPERATIONS.md, "Audit lines"): one per user connection when it ends, one
 * per HTTP request of an http route, one per upgrade (WebSocket) when it closes, each with every
 * field of its kind present (null when not known), refusals included. Driven with real clients
 * through an in-process server; the field lists are checked against OPERATIONS.md too.
 */
import { readFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { describe, expect, test } from 'vitest';
import WebSocket from 'ws';
import { startDashboard } from '../helpers/dashboard.js';
import { startInProcessAgent, startInProcessServer, type InProcessServer } from '../helpers/in-process.js';
import { pollUntil, readToEnd } from '../helpers/streams.js';
import { echoTarget } from '../helpers/targets.js';

const BASE = [
  'audit',
  'mode',
  'route',
  'agentId',
  'serverId',
  'remoteAddress',
  'bytesIn',
  'bytesOut',
  'durationMs',
  'code',
  'cluster',
];
const FIELDS = {
  connection: [...BASE, 'outcome'],
  'http-request': [...BASE, 'method', 'path', 'status', 'user'],
  'http-upgrade': [...BASE, 'path', 'protocol', 'user', 'outcome'],
} as const;
/** What pino adds to every line. */
const PINO = ['level', 'time', 'pid', 'hostname', 'name', 'msg'];

function auditLines(s: InProcessServer, kind: keyof typeof FIELDS) {
  return s.logs.filter((l) => l.audit === kind);
}

function expectShape(line: Record<string, unknown>, kind: keyof typeof FIELDS): void {
  expect(
    Object.keys(line)
      .filter((k) => !PINO.includes(k))
      .sort(),
  ).toEqual([...FIELDS[kind]].sort());
}

describe('audit lines', () => {
  test('a user connection: one line when it ends, with its bytes, agent and replica; a refused one too', async () => {
    const s = await startInProcessServer(['--tcp-route', 'cluster-u1-db=127.0.0.1:0']);
    await startInProcessAgent(s, { cluster: 'u1', routes: [`db=127.0.0.1:${await echoTarget()}`] });
    const listen = (s.server.status().modes.tcp as { routes: { listen: string }[] }).routes[0]!.listen;
    const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
    const socket = net.connect(port, '127.0.0.1');
    socket.end('hello');
    expect((await readToEnd(socket)).toString()).toBe('hello');
    const [closed] = await pollUntil(() => {
      const lines = auditLines(s, 'connection');
      return lines.length > 0 ? lines : undefined;
    });
    expectShape(closed!, 'connection');
    expect(closed).toMatchObject({
      msg: 'user connection closed',
      mode: 'tcp',
      route: 'cluster-u1-db',
      cluster: 'u1',
      agentId: 'agent-u1',
      serverId: s.server.status().serverId,
      bytesIn: 5,
      bytesOut: 5,
      outcome: 'closed',
      code: null,
    });

    // A route no agent holds: refused on the public port, and audited with its code.
    const refused = tls.connect({
      host: '127.0.0.1',
      port: s.port,
      servername: 'cluster-nobody.proxy.localhost',
    });
    refused.on('error', () => undefined);
    const line = await pollUntil(() => auditLines(s, 'connection').find((l) => l.outcome === 'refused'));
    expectShape(line, 'connection');
    expect(line).toMatchObject({
      msg: 'user connection refused',
      mode: 'passthrough',
      cluster: 'nobody',
      agentId: null,
      code: 'TUN_ERR_NO_ROUTE',
      bytesIn: 0,
    });
    refused.destroy();
  });

  test('an http route: one line per request (refused ones too) and one per WebSocket when it closes', async () => {
    const s = await startInProcessServer(['--http-route-access', 'cluster-u1-open=none']);
    const port = await startDashboard();
    await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`open=http://127.0.0.1:${port}`, `closed=http://127.0.0.1:${port}`],
    });
    const get = (route: string, path: string) =>
      new Promise<number>((resolve, reject) => {
        const host = `cluster-u1-${route}.proxy.localhost`;
        https
          .get(
            {
              host: '127.0.0.1',
              port: s.port,
              servername: host,
              ca: readFileSync(s.caFile),
              path,
              headers: { Host: host },
              agent: false,
            },
            (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            },
          )
          .on('error', reject);
      });
    expect(await get('open', '/headers?secret=1')).toBe(200);
    expect(await get('closed', '/')).toBe(401);
    const requests = await pollUntil(() => {
      const lines = auditLines(s, 'http-request');
      return lines.length >= 2 ? lines : undefined;
    });
    for (const l of requests) expectShape(l, 'http-request');
    expect(requests.find((l) => l.route === 'cluster-u1-open')).toMatchObject({
      msg: 'http request',
      mode: 'http',
      cluster: 'u1',
      agentId: 'agent-u1',
      method: 'GET',
      // Never the query string: it may carry secrets.
      path: '/headers',
      status: 200,
      user: null,
      code: null,
    });
    expect((requests.find((l) => l.route === 'cluster-u1-open')!.bytesOut as number) > 0).toBe(true);
    expect(requests.find((l) => l.route === 'cluster-u1-closed')).toMatchObject({
      status: 401,
      agentId: null,
      code: 'TUN_ERR_ACCESS_DENIED',
    });

    const host = 'cluster-u1-open.proxy.localhost';
    const ws = new WebSocket(`wss://127.0.0.1:${s.port}/console`, ['binary'], {
      servername: host,
      ca: readFileSync(s.caFile),
      headers: { Host: host },
    } as WebSocket.ClientOptions);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const echoed = new Promise((resolve) => ws.once('message', resolve));
    ws.send(Buffer.alloc(100));
    await echoed;
    ws.close();
    const upgrade = await pollUntil(() => auditLines(s, 'http-upgrade')[0]);
    expectShape(upgrade, 'http-upgrade');
    expect(upgrade).toMatchObject({
      msg: 'http upgrade closed',
      route: 'cluster-u1-open',
      agentId: 'agent-u1',
      path: '/console',
      protocol: 'websocket',
    });
    expect(upgrade.bytesIn as number).toBeGreaterThan(100);
    expect(upgrade.bytesOut as number).toBeGreaterThan(100);
  });

  test('docs/OPERATIONS.md lists every field of every kind', () => {
    const doc = readFileSync(join(import.meta.dirname, '../../docs/OPERATIONS.md'), 'utf8');
    for (const [kind, fields] of Object.entries(FIELDS)) {
      const section = doc.slice(doc.indexOf(`\`audit: "${kind}"\``));
      expect(section.length, `a section for ${kind}`).toBeLessThan(doc.length);
      for (const field of fields) expect(section, `${kind}: ${field}`).toContain(`\`${field}\``);
    }
  });
});
