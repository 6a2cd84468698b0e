/**
 * A dashboard in a real browser (Debian's Chromium, driven by playwright-core) through an http
 * route, with real server and agent processes: the person opens a link from `tunnel-server link
 * create`, lands on the dashboard's page, whose script opens a WebSocket console (subprotocol
 * `binary`) that round-trips hundreds of binary messages, an event stream whose events arrive
 * spread out as sent, a large download checked by digest, and a header mirror. A screenshot
 * goes to test-output/dashboard.png.
 */
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createLink, startServerAndAgent } from '../helpers/tunnel.js';
import { DASHBOARD_BIG, startDashboard } from '../helpers/dashboard.js';

const CHROMIUM = '/usr/bin/chromium';
const OUTPUT = join(import.meta.dirname, '../../test-output');

/** The page's script: the console, the event stream, the download and the header mirror. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>fixture dashboard</title>
<h1>fixture dashboard</h1><pre id="out">running</pre>
<script>
(async () => {
  const out = {};
  const ws = new WebSocket('wss://' + location.host + '/console', ['binary']);
  ws.binaryType = 'arraybuffer';
  out.console = await new Promise((resolve) => {
    let echoed = 0, same = true;
    const sent = [];
    ws.onopen = () => {
      for (let i = 0; i < 300; i++) {
        const m = new Uint8Array(64 + i).map((_, j) => (i * 7 + j) & 255);
        sent.push(m); ws.send(m);
      }
    };
    ws.onmessage = (e) => {
      const got = new Uint8Array(e.data), want = sent[echoed++];
      same = same && got.length === want.length && got.every((b, k) => b === want[k]);
      if (echoed === 300) resolve({ protocol: ws.protocol, echoed, same });
    };
  });
  out.events = await new Promise((resolve) => {
    const times = [];
    const source = new EventSource('/sse');
    source.onmessage = () => { times.push(performance.now()); if (times.length === 3) { source.close(); resolve(times); } };
  });
  const big = await (await fetch('/big')).arrayBuffer();
  out.bigSha256 = [...new Uint8Array(await crypto.subtle.digest('SHA-256', big))].map((b) => b.toString(16).padStart(2, '0')).join('');
  out.headers = await (await fetch('/headers')).json();
  document.getElementById('out').textContent = JSON.stringify({ console: out.console, events: out.events.length });
  window.result = out;
})();
</script>`;

interface PageResult {
  console: { protocol: string; echoed: number; same: boolean };
  events: number[];
  bigSha256: string;
  headers: Record<string, string>;
}

describe('a dashboard in a real browser', () => {
  it('opens with a link, and its console, event stream, download and headers work through the tunnel', async () => {
    const server = await startServerAndAgent('u1', [`dash=http://127.0.0.1:${await startDashboard(PAGE)}`]);
    const link = await createLink(server, 'u1', 'dash', 'alice');
    // Chromium resolves *.localhost to loopback itself; the server certificate is the test CA's.
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    onTestFinished(() => browser.close());
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    const response = await page.goto(link);
    expect(response?.status()).toBe(200);
    expect(new URL(page.url()).pathname).toBe('/');
    // Page expressions are strings: this file is compiled without the DOM types.
    await page.waitForFunction('window.result !== undefined', undefined, { timeout: 30_000 });
    const result = (await page.evaluate('window.result')) as PageResult;
    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: join(OUTPUT, 'dashboard.png') });
    expect(result.console).toEqual({ protocol: 'binary', echoed: 300, same: true });
    // Sent 200 ms apart and shown so: not buffered until the stream ends.
    expect(result.events).toHaveLength(3);
    expect(result.events[2]! - result.events[0]!).toBeGreaterThanOrEqual(300);
    expect(result.bigSha256).toBe(createHash('sha256').update(DASHBOARD_BIG).digest('hex'));
    expect(result.headers['x-forwarded-proto']).toBe('https');
    expect(result.headers['x-forwarded-host']).toBe(`cluster-u1-dash.proxy.localhost:${server.port}`);
    expect(result.headers.cookie).toBeUndefined();
    // The session cookie is the tunnel's, HttpOnly: the page's script cannot read it.
    expect(await page.evaluate('document.cookie')).toBe('');
    const cookies = await context.cookies();
    expect(cookies).toEqual([
      expect.objectContaining({ name: 'tunnel_session', httpOnly: true, secure: true, sameSite: 'Lax' }),
    ]);
  });
});
