/**
 * The agent's metrics on its health port (docs/OPERATIONS.md, "Agent metrics"): scraped over
 * HTTP from a real agent registered with a real in-process server, after real traffic: a
 * registration, a forwarded stream and its bytes, target dials (one refused, by errno), round
 * trips; the conventions and the documentation checked on every series.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { startInProcessAgent, startInProcessServer } from '../helpers/in-process.js';
import { pollUntil } from '../helpers/streams.js';
import { freePort } from '../helpers/tunnel.js';
import { echoTarget } from '../helpers/targets.js';
import { parsePrometheus } from '../helpers/prometheus.js';

async function scrape(port: number): Promise<{ text: string; values: Map<string, number> }> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return { text, values: parsePrometheus(text) };
}

describe('agent metrics', () => {
  test('are served on the health port and count what the agent did', async () => {
    const s = await startInProcessServer();
    const dead = await freePort();
    const agent = await startInProcessAgent(s, {
      cluster: 'u1',
      routes: [`db=127.0.0.1:${await echoTarget()}`, `gone=127.0.0.1:${dead}`],
      args: ['--health-listen', '127.0.0.1:0'],
    });
    const port = agent.healthAddress!.port;
    const payload = randomBytes(32 * 1024);
    const { stream } = await s.server.openRouteStream({
      route: 'cluster-u1-db',
      remoteAddress: '127.0.0.1:1',
    });
    stream.end(payload);
    stream.resume();
    await new Promise((resolve) => stream.once('close', resolve));
    // A route whose target refuses: the dial fails, counted by errno.
    await s.server
      .openRouteStream({ route: 'cluster-u1-gone', remoteAddress: '127.0.0.1:1' })
      .catch(() => undefined);

    const { values } = await pollUntil(async () => {
      const now = await scrape(port);
      return (now.values.get('tunnel_agent_streams_total{outcome="closed"}') ?? 0) >= 1 &&
        (now.values.get('tunnel_session_rtt_seconds_count') ?? 0) >= 1
        ? now
        : undefined;
    });
    expect(values.get('tunnel_agent_connects_total{outcome="registered"}')).toBe(1);
    expect(values.get('tunnel_agent_server_sessions')).toBe(1);
    expect(values.get('tunnel_agent_server_sessions_wanted')).toBe(1);
    expect(values.get('tunnel_agent_bytes_total{direction="in"}')).toBeGreaterThanOrEqual(payload.length);
    expect(values.get('tunnel_agent_bytes_total{direction="out"}')).toBeGreaterThanOrEqual(payload.length);
    expect(values.get('tunnel_agent_streams_total{outcome="refused"}')).toBe(1);
    expect(
      values.get('tunnel_agent_target_dial_failures_total{errno="ECONNREFUSED"}'),
    ).toBeGreaterThanOrEqual(1);
    expect(values.get('tunnel_agent_target_dial_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(values.get('tunnel_agent_streams_active')).toBe(0);
  });

  test('follow the conventions, and every one is documented in OPERATIONS.md', async () => {
    const s = await startInProcessServer();
    const agent = await startInProcessAgent(s, {
      cluster: 'u1',
      routes: ['apiserver=127.0.0.1:1'],
      args: ['--health-listen', '127.0.0.1:0'],
    });
    const { text } = await scrape(agent.healthAddress!.port);
    const doc = readFileSync(join(import.meta.dirname, '../../docs/OPERATIONS.md'), 'utf8');
    const agentSection = doc.slice(doc.indexOf('## Agent metrics'));
    const families = [...text.matchAll(/^# TYPE (tunnel_\S+) (\S+)$/gm)].map((m) => ({
      name: m[1]!,
      type: m[2]!,
    }));
    expect(families.length).toBeGreaterThan(10);
    for (const { name, type } of families) {
      if (type === 'counter') expect(name).toMatch(/_total$/);
      if (type === 'histogram') expect(name).toMatch(/_(seconds|bytes)$/);
      expect(agentSection, `${name} documented`).toContain(`\`${name}\``);
    }
    for (const line of text.split('\n').filter((l) => l.startsWith('tunnel_'))) {
      for (const [, label] of line.matchAll(/[{,]([a-z_]+)="/g))
        expect(['outcome', 'cause', 'direction', 'errno', 'le']).toContain(label);
    }
  });
});
