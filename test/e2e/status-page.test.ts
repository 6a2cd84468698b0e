/**
 * The status page on the admin port (docs/OPERATIONS.md, "Status page") in a real browser
 * (Debian's Chromium, playwright-core), with real server and agent processes: clusters, agents,
 * routes with their mode and last probe (a dead target shown failing), refreshed without a
 * reload when an agent joins; every value shown as text even when it is markup (a crafted
 * /status), under a Content-Security-Policy the page keeps to. A screenshot goes to
 * test-output/status-page.png.
 */
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startDashboard } from '../helpers/dashboard.js';
import { tempDir } from '../helpers/temp-dir.js';
import { createToken, freePort, startAgent, startServer, writeTokenFile } from '../helpers/tunnel.js';

const CHROMIUM = '/usr/bin/chromium';
const OUTPUT = join(import.meta.dirname, '../../test-output');

async function tcpTarget(): Promise<number> {
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.end('hello\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => {
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}

describe('the status page', () => {
  it('shows clusters, agents and routes with their probes, refreshes itself, and shows every value as text', async () => {
    const server = await startServer({ args: ['--probe-interval-ms', '300ms'] });
    const dir = tempDir();
    const agentFor = async (cluster: string, routes: string[]) =>
      startAgent({
        server,
        tokenFile: await writeTokenFile(dir, await createToken(server.dataDir, cluster), `${cluster}.token`),
        routes,
        agentId: `agent-${cluster}`,
      });
    await agentFor('prod1', [
      `apiserver=127.0.0.1:${await tcpTarget()}`,
      `dash=http://127.0.0.1:${await startDashboard()}`,
    ]);
    await agentFor('edge7', [`apiserver=127.0.0.1:${await freePort()}`]);

    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    onTestFinished(() => browser.close());
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(e.message));
    const url = `http://127.0.0.1:${server.adminPort}/`;
    const response = await page.goto(url);
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-security-policy']).toContain("script-src 'self'");
    const text = (selector: string) => page.locator(selector).innerText();
    // Probes have run: the dead target shows failing, the others ok. (Locators, not page
    // expressions: the page's CSP forbids evaluating strings, and it is kept on.)
    await expect
      .poll(
        async () =>
          (await text('#routes tbody')).includes('TUN_ERR_DIAL_FAILED') &&
          (await page.locator('#routes td.ok').count()) >= 2,
        { timeout: 15_000 },
      )
      .toBe(true);
    const clusters = await text('#clusters tbody');
    expect(clusters).toContain('prod1');
    expect(clusters).toContain('edge7');
    const routes = await text('#routes tbody');
    expect(routes).toMatch(/cluster-prod1-dash\s+http/);
    expect(routes).toMatch(/cluster-prod1\s+passthrough/);
    expect(routes).toMatch(/cluster-edge7\s+passthrough[\s\S]*ECONNREFUSED/);
    expect(await text('#summary')).toMatch(/2 clusters · 2 agent sessions .*1 route unreachable/);
    const status = (await (await fetch(`${url}status`)).json()) as { serverId: string };
    expect(await text('#replica')).toBe(status.serverId);

    // A third agent joins: the page shows it without a reload.
    await agentFor('lab3', [`apiserver=127.0.0.1:${await tcpTarget()}`]);
    await expect.poll(() => text('#agents tbody'), { timeout: 10_000 }).toContain('agent-lab3');
    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: join(OUTPUT, 'status-page.png'), fullPage: true });
    expect(problems).toEqual([]);

    // A /status whose values are markup: shown as text, never run.
    const evil = '<img src=x onerror="window.pwned=1">';
    await page.route('**/status', (route) =>
      route.fulfill({
        contentType: 'application/json',
        body: JSON.stringify({
          serverId: evil,
          pendingConnections: 0,
          routes: [`cluster-${evil}`],
          routeModes: {},
          modes: {},
          traffic: {},
          probes: [
            {
              agentId: evil,
              clusterId: evil,
              route: `cluster-${evil}`,
              ok: false,
              code: evil,
              message: evil,
              totalMs: 1,
              at: new Date().toISOString(),
            },
          ],
          agents: [
            {
              agentId: evil,
              clusterId: evil,
              agentVersion: evil,
              remoteAddress: evil,
              routes: [`cluster-${evil}`],
              connectedAt: new Date().toISOString(),
              activeStreams: 0,
              rttMs: 1,
            },
          ],
        }),
      }),
    );
    await expect.poll(() => text('#replica'), { timeout: 10_000 }).toBe(evil);
    expect(await page.evaluate(() => (globalThis as Record<string, unknown>).pwned)).toBeUndefined();
    expect(await page.locator('img').count()).toBe(0);
    expect(await text('#agents tbody')).toContain(evil);
  });

  it('is one of few things the admin port answers, with no token, key or cookie in any of them', async () => {
    const server = await startServer();
    const dir = tempDir();
    const token = await createToken(server.dataDir, 'u1');
    await startAgent({
      server,
      tokenFile: await writeTokenFile(dir, token),
      routes: ['apiserver=127.0.0.1:1'],
    });
    const base = `http://127.0.0.1:${server.adminPort}`;
    for (const path of ['/', '/status.js', '/status.css', '/status', '/metrics', '/healthz', '/readyz']) {
      const res = await fetch(base + path);
      expect(res.status, path).toBe(200);
      const body = await res.text();
      expect(body, path).not.toContain(token);
      expect(body, path).not.toContain(token.split('.')[2]!);
      expect(body, path).not.toMatch(/PRIVATE KEY|tunnel_session=/);
    }
    expect((await fetch(`${base}/anything-else`)).status).toBe(404);
    expect((await fetch(`${base}/probe`)).status).toBe(405);
  });
});
