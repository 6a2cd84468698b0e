/**
 * Data-path probes (docs/OPERATIONS.md, "Probes"): the server asks each agent to connect to each
 * of its routes' targets, on an interval and on demand (POST /probe on the admin port), and keeps
 * the last result per agent and route: in /status, in the metrics, and, on the agent's side, in
 * its readiness (no target reachable: not ready). Real agents, real targets (TCP, TLS), a dead one.
 */
import net from 'node:net';
import tls from 'node:tls';
import { describe, expect, onTestFinished, test } from 'vitest';
import { startInProcessAgent, startInProcessServer } from '../helpers/in-process.js';
import { pollUntil } from '../helpers/streams.js';
import { tlsCredentials } from '../helpers/transports.js';
import { freePort } from '../helpers/tunnel.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/temp-dir.js';

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => {
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}

describe('data-path probes', () => {
  test('on an interval: every route of the agent, TLS done for an https target, a dead target failed with its errno', async () => {
    const s = await startInProcessServer(['--probe-interval-ms', '200ms']);
    const tcp = await listen(net.createServer((socket) => socket.destroy()));
    const { key, cert } = await tlsCredentials();
    const secure = await listen(tls.createServer({ key, cert }, (socket) => socket.destroy()));
    const ca = join(tempDir(), 'ca.pem');
    writeFileSync(ca, cert);
    const dead = await freePort();
    await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [
        `db=127.0.0.1:${tcp}`,
        `dash=https://127.0.0.1:${secure},ca=${ca},serverName=localhost`,
        `gone=127.0.0.1:${dead}`,
      ],
    });
    const probes = await pollUntil(() =>
      s.server.status().probes.length === 3 ? s.server.status().probes : undefined,
    );
    const of = (route: string) => probes.find((p) => p.route === route)!;
    expect(of('cluster-u1-db')).toMatchObject({ agentId: 'agent-u1', clusterId: 'u1', ok: true });
    expect(of('cluster-u1-db').dialMs).toBeGreaterThanOrEqual(0);
    expect(of('cluster-u1-dash')).toMatchObject({ ok: true });
    expect(of('cluster-u1-gone')).toMatchObject({
      ok: false,
      code: 'TUN_ERR_DIAL_FAILED',
      message: expect.stringContaining('ECONNREFUSED'),
    });
    const text = await s.server.metrics.registry.metrics();
    expect(text).toContain('tunnel_route_probe_success{cluster="u1",route="cluster-u1-db"} 1');
    expect(text).toContain('tunnel_route_probe_success{cluster="u1",route="cluster-u1-gone"} 0');
    expect(text).toContain('tunnel_routes_unreachable 1');
    expect(text).toMatch(/tunnel_probes_total\{outcome="ok"\} [1-9]/);
  });

  test('on demand through the admin port, for one route or all; an https target whose CA is wrong fails', async () => {
    const s = await startInProcessServer(['--probe-interval-ms', '0', '--admin-listen', '127.0.0.1:0']);
    const { key, cert } = await tlsCredentials();
    const secure = await listen(tls.createServer({ key, cert }, (socket) => socket.destroy()));
    const wrongCa = join(tempDir(), 'other.pem');
    const other = await import('../helpers/pki.js').then((m) => m.createTestCa('someone else'));
    writeFileSync(wrongCa, other.certPem);
    await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`dash=https://127.0.0.1:${secure},ca=${wrongCa},serverName=localhost`, 'api=127.0.0.1:1'],
    });
    expect(s.server.status().probes).toEqual([]);
    const admin = s.server.adminAddress!.port;
    const one = (await (
      await fetch(`http://127.0.0.1:${admin}/probe?route=cluster-u1-dash`, { method: 'POST' })
    ).json()) as Array<Record<string, unknown>>;
    expect(one).toEqual([
      expect.objectContaining({ route: 'cluster-u1-dash', ok: false, code: 'TUN_ERR_DIAL_FAILED' }),
    ]);
    const all = (await (
      await fetch(`http://127.0.0.1:${admin}/probe`, { method: 'POST' })
    ).json()) as unknown[];
    expect(all).toHaveLength(2);
    expect((await fetch(`http://127.0.0.1:${admin}/probe`)).status).toBe(405);
  });

  test('an agent none of whose targets is reachable says so on /readyz; one target back makes it ready', async () => {
    const s = await startInProcessServer(['--probe-interval-ms', '200ms']);
    const port = await freePort();
    const agent = await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`api=127.0.0.1:${port}`],
      args: ['--health-listen', '127.0.0.1:0'],
    });
    const readyz = async () => {
      const r = await fetch(`http://127.0.0.1:${agent.healthAddress!.port}/readyz`);
      return { status: r.status, body: await r.text() };
    };
    expect(await pollUntil(async () => ((await readyz()).status === 503 ? readyz() : undefined))).toEqual({
      status: 503,
      body: 'no route target reachable\n',
    });
    // The target comes up on that port: the next probe finds it.
    const target = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => target.listen(port, '127.0.0.1', resolve));
    onTestFinished(() => {
      target.close();
    });
    expect(await pollUntil(async () => ((await readyz()).status === 200 ? readyz() : undefined))).toEqual({
      status: 200,
      body: 'ready\n',
    });
  });
});
