/**
 * The server's metrics (docs/OPERATIONS.md, "Metrics"): Prometheus conventions checked on every
 * series, every one documented, and the values driven by real traffic through an in-process
 * server: a forwarded connection, its bytes per mode and per cluster, stream open latency,
 * ClientHello time, keepalive RTT, a refusal by code, the per-cluster label switched off above
 * its limit, and a slow reader visible as a blocked stream within seconds.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { describe, expect, onTestFinished, test } from 'vitest';
import { startInProcessAgent, startInProcessServer, type InProcessServer } from '../helpers/in-process.js';
import { pollUntil, readToEnd } from '../helpers/streams.js';
import { echoTarget } from '../helpers/targets.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { captureClientHello } from '../../bench/lib/client-hello-capture.js';

async function scrape(s: InProcessServer): Promise<Map<string, number>> {
  return parsePrometheus(await s.server.metrics.registry.metrics());
}

const value = (m: Map<string, number>, series: string): number => m.get(series) ?? NaN;

function through(s: InProcessServer, host: string, payload: Buffer): Promise<Buffer> {
  const socket = tls.connect({
    host: '127.0.0.1',
    port: s.port,
    servername: host,
    rejectUnauthorized: false,
  });
  onTestFinished(() => void socket.destroy());
  socket.once('secureConnect', () => socket.end(payload));
  return readToEnd(socket);
}

describe('server metrics', () => {
  test('follow the conventions, and every one is documented in OPERATIONS.md', async () => {
    const s = await startInProcessServer();
    const doc = readFileSync(join(import.meta.dirname, '../../docs/OPERATIONS.md'), 'utf8');
    const families = (await s.server.metrics.registry.getMetricsAsJSON()).filter((m) =>
      m.name.startsWith('tunnel_'),
    );
    expect(families.length).toBeGreaterThan(15);
    for (const m of families) {
      if (String(m.type) === 'counter') expect(m.name, m.name).toMatch(/_total$/);
      if (String(m.type) === 'histogram') expect(m.name, m.name).toMatch(/_(seconds|bytes)$/);
      // Bounded label sets only: never a user address, a path or an agent id.
      for (const v of m.values)
        for (const label of Object.keys(v.labels))
          expect([
            'mode',
            'outcome',
            'code',
            'cause',
            'limit',
            'direction',
            'status_class',
            'quantile',
            'cluster',
            'le',
          ]).toContain(label);
      expect(doc, `${m.name} documented`).toContain(`\`${m.name}\``);
    }
  });

  test('a forwarded connection: counted, its bytes by mode and cluster, its open latency, the ClientHello time and the RTT', async () => {
    const s = await startInProcessServer();
    await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`apiserver=127.0.0.1:${await echoTarget({ tls: true })}`],
    });
    const payload = randomBytes(64 * 1024);
    expect((await through(s, 'cluster-u1.proxy.localhost', payload)).length).toBeGreaterThan(0);
    await s.nextEvent((e) => e.type === 'closed');
    // A route nobody holds: refused with its code.
    await through(s, 'cluster-nobody.proxy.localhost', Buffer.from('x')).catch(() => Buffer.alloc(0));
    await s.nextEvent((e) => e.type === 'refused');
    const m = await pollUntil(async () => {
      const now = await scrape(s);
      return value(now, 'tunnel_session_rtt_seconds_count') >= 1 ? now : undefined;
    });
    expect(value(m, 'tunnel_connections_total{mode="passthrough",outcome="forwarded"}')).toBe(1);
    expect(
      value(m, 'tunnel_user_connections_refused_total{mode="passthrough",code="TUN_ERR_NO_ROUTE"}'),
    ).toBe(1);
    expect(value(m, 'tunnel_user_bytes_total{direction="in",mode="passthrough"}')).toBeGreaterThanOrEqual(
      payload.length,
    );
    expect(value(m, 'tunnel_cluster_bytes_total{cluster="u1",direction="out"}')).toBeGreaterThanOrEqual(
      payload.length,
    );
    expect(value(m, 'tunnel_cluster_agents{cluster="u1"}')).toBe(1);
    expect(value(m, 'tunnel_stream_open_seconds_count{mode="passthrough"}')).toBe(1);
    // The agent's own connection, and the two users'.
    expect(value(m, 'tunnel_client_hello_seconds_count')).toBe(3);
    expect(value(m, 'tunnel_user_streams_active{mode="passthrough"}')).toBe(0);
    expect(value(m, 'tunnel_agents_connected')).toBe(1);
  });

  test('per-cluster series are left out above metricsClusterLabelLimit clusters', async () => {
    const s = await startInProcessServer(['--metrics-cluster-label-limit', '1']);
    await startInProcessAgent(s, { cluster: 'u1', routes: ['apiserver=127.0.0.1:1'] });
    expect(value(await scrape(s), 'tunnel_cluster_agents{cluster="u1"}')).toBe(1);
    await startInProcessAgent(s, { cluster: 'u2', routes: ['apiserver=127.0.0.1:1'] });
    const m = await scrape(s);
    expect([...m.keys()].filter((k) => k.includes('cluster='))).toEqual([]);
    expect(value(m, 'tunnel_agents_connected')).toBe(2);
  });

  test('a slow reader shows up within seconds: a blocked stream, blocked time and buffered bytes', async () => {
    const s = await startInProcessServer();
    // A target that accepts and never reads: the user's upload fills the stream's window.
    const sockets: net.Socket[] = [];
    const target = net.createServer((socket) => {
      sockets.push(socket);
      socket.pause();
    });
    await new Promise<void>((resolve) => target.listen(0, '127.0.0.1', resolve));
    onTestFinished(() => {
      for (const socket of sockets) socket.destroy();
      target.close();
    });
    await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`apiserver=127.0.0.1:${(target.address() as net.AddressInfo).port}`],
    });
    // A real ClientHello names the route; what follows is forwarded unread, as TLS records are.
    const hello = await captureClientHello({ servername: 'cluster-u1.proxy.localhost' });
    const user = net.connect(s.port, '127.0.0.1');
    user.on('error', () => undefined);
    onTestFinished(() => void user.destroy());
    await new Promise((resolve) => user.once('connect', resolve));
    user.write(hello);
    const started = performance.now();
    const chunk = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < 64 && user.writableLength < 32 * 1024 * 1024; i++) user.write(chunk);
    const m = await pollUntil(
      async () => {
        const now = await scrape(s);
        return value(now, 'tunnel_streams_blocked') >= 1 ? now : undefined;
      },
      5_000,
      'a blocked stream in the metrics',
      100,
    );
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(value(m, 'tunnel_session_buffered_bytes')).toBeGreaterThan(0);
    const later = await pollUntil(async () => {
      const now = await scrape(s);
      return value(now, 'tunnel_stream_blocked_seconds_total') > 0 ? now : undefined;
    });
    expect(value(later, 'tunnel_stream_receive_window_bytes{quantile="1"}')).toBeGreaterThan(0);
  });
});
