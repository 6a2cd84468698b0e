/**
 * The agent's route certificate over its life, under a fake clock: the real TunnelAgent and
 * TunnelServer in this process over real TLS, WebSocket and yamux, both reading time from one
 * ManualClock that starts now (certificate times are wall-clock times). Renewal at two thirds
 * of the life, a renewal that fails while no server is reachable (a warning with its code, the
 * old certificate served, retries), and the new one once a server is back.
 */
import { describe, expect, test } from 'vitest';
import type { TunnelAgent } from '@cluster-tunnel/client';
import { startInProcessAgent, startInProcessServer, type LogRecord } from '../helpers/in-process.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { pollUntil } from '../helpers/streams.js';

const HOUR_MS = 3_600_000;

/** The serial of the certificate the agent serves, once it is not `previous`. */
function nextSerial(agent: TunnelAgent, previous: string | undefined): Promise<string> {
  return pollUntil(
    () => {
      const serial = agent.routeCertificate?.current?.serialNumber;
      return serial !== undefined && serial !== previous ? serial : undefined;
    },
    10_000,
    'a new route certificate',
  );
}

async function expiryMetric(agent: TunnelAgent): Promise<number> {
  const text = await agent.metrics.registry.getSingleMetricAsString(
    'tunnel_agent_route_certificate_expiry_timestamp_seconds',
  );
  return Number(/\s(\S+)$/.exec(text.trim())![1]);
}

describe('the route certificate under a fake clock', () => {
  test('is renewed at two thirds of its life, over a session that is up, and the new one is served', async () => {
    const clock = new ManualClock(Date.now());
    const s = await startInProcessServer([], { now: () => clock.now() });
    const logs: LogRecord[] = [];
    const agent = await startInProcessAgent(s, {
      cluster: 'u1',
      routes: ['apiserver=127.0.0.1:9,mode=agent-tls,insecure'],
      clock,
      now: () => clock.now(),
      logs,
    });
    const first = await nextSerial(agent, undefined);
    const c1 = agent.routeCertificate!.current!;
    expect(c1.notAfterMs - c1.receivedAtMs).toBeGreaterThan(24 * HOUR_MS - 60_000);
    expect(c1.renewAtMs - c1.receivedAtMs).toBe(Math.floor((c1.notAfterMs - c1.receivedAtMs) * (2 / 3)));
    expect(await expiryMetric(agent)).toBe(c1.notAfterMs / 1000);

    // Just before the renewal: nothing asked. Just after: a new certificate, the same key.
    clock.advance(c1.renewAtMs - clock.now() - 1_000);
    await new Promise((r) => setTimeout(r, 50));
    expect(s.logs.filter((l) => l.msg === 'route certificate issued')).toHaveLength(1);
    clock.advance(2_000);
    const second = await nextSerial(agent, first);
    const c2 = agent.routeCertificate!.current!;
    expect(c2.notAfterMs).toBeGreaterThan(c1.notAfterMs);
    expect(c2.pem).not.toBe(c1.pem);
    expect(s.logs.filter((l) => l.msg === 'route certificate issued')).toHaveLength(2);
    const installs = logs.filter((l) => l.msg === 'route certificate installed');
    expect(installs.map((l) => l.serialNumber)).toEqual([first, second]);
    expect(new Set(installs.map((l) => l.publicKeySha256)).size).toBe(1);
    expect(await expiryMetric(agent)).toBe(c2.notAfterMs / 1000);
  });

  test('a renewal that fails is a warning long before expiry, the old one is served until it expires, and a server that comes back replaces it', async () => {
    const clock = new ManualClock(Date.now());
    const now = (): number => clock.now();
    const s = await startInProcessServer([], { now });
    const logs: LogRecord[] = [];
    const agent = await startInProcessAgent(s, {
      cluster: 'u1',
      routes: ['apiserver=127.0.0.1:9,mode=agent-tls,insecure'],
      clock,
      now,
      logs,
    });
    const first = await nextSerial(agent, undefined);
    const c1 = agent.routeCertificate!.current!;

    // The only server goes away; the renewal comes due while the agent has no session.
    const { port, dataDir } = s;
    s.server.destroy();
    await pollUntil(() => agent.servers.length === 0, 10_000, 'the agent to lose its session');
    clock.advance(c1.renewAtMs - clock.now() + 1);
    const warning = await pollUntil(
      () => logs.find((l) => l.msg.startsWith('route certificate renewal failed')),
      10_000,
      'the renewal warning',
    );
    expect(warning).toMatchObject({
      level: 40,
      code: 'TUN_ERR_ROUTE_CERT_RENEWAL',
      cause: 'TUN_ERR_SESSION_CLOSED',
      expiresAt: new Date(c1.notAfterMs).toISOString(),
    });
    // Eight hours before it expires, it is still served, and the metric says when it ends.
    expect(c1.notAfterMs - clock.now()).toBeGreaterThan(7 * HOUR_MS);
    expect(agent.routeCertificate!.current?.serialNumber).toBe(first);
    expect(await expiryMetric(agent)).toBe(c1.notAfterMs / 1000);
    // It retries with a growing delay (5 s, then 10 s), each time saying so.
    const warnings = (): LogRecord[] => logs.filter((l) => l.code === 'TUN_ERR_ROUTE_CERT_RENEWAL');
    expect(warnings().map((l) => l.retryInMs)).toEqual([5_000]);
    clock.advance(4_999);
    await new Promise((r) => setTimeout(r, 50));
    expect(warnings()).toHaveLength(1);
    clock.advance(1);
    await pollUntil(() => warnings().length === 2 || undefined, 10_000, 'the second warning');
    clock.advance(10_000);
    await pollUntil(() => warnings().length === 3 || undefined, 10_000, 'the third warning');
    expect(warnings().map((l) => l.retryInMs)).toEqual([5_000, 10_000, 20_000]);

    // Still no server when it expires: it is no longer served (users are refused, another agent
    // may take them), and the warnings say there is none.
    expect(agent.routeCertificateMissing).toBe(false);
    clock.advance(c1.notAfterMs - clock.now() + 1);
    expect(agent.routeCertificate!.current).toBeUndefined();
    // Not ready (/readyz) without one: a rollout stops at an agent that cannot get certificates.
    expect(agent.routeCertificateMissing).toBe(true);
    expect(agent.isReady).toBe(false);
    await pollUntil(
      () => logs.find((l) => l.msg.startsWith('no route certificate: agent-tls routes refuse users')),
      10_000,
      'the no-certificate warning',
    );

    // The server is back on the same port and data directory; the agent's reconnect (on the
    // fake clock) registers, and a new certificate is asked for at once.
    await startInProcessServer(['--listen', `127.0.0.1:${port}`, '--data-dir', dataDir], { now });
    for (let i = 0; i < 100 && agent.servers.length === 0; i++) {
      clock.advance(1_000);
      await new Promise((r) => setTimeout(r, 20));
    }
    const second = await nextSerial(agent, first);
    expect(second).not.toBe(first);
    expect(agent.routeCertificate!.current!.notAfterMs).toBeGreaterThan(c1.notAfterMs);
    expect(agent.isReady).toBe(true);
  });
});
