/**
 * The status page the admin port serves at `/` (docs/OPERATIONS.md, "Status page"): one HTML
 * page, its script and its style, all static. The script polls `/status` every STATUS_REFRESH_MS
 * and draws it: the replica, its agents by cluster (versions, RTT, open streams), their routes
 * with mode and last probe, and bytes per second from one poll to the next. Every value reaches
 * the page through textContent, never as markup, and the Content-Security-Policy allows only
 * this origin's script, style and fetches, so no value can run as code.
 */

/** How often the page asks /status again. */
export const STATUS_REFRESH_MS = 2_000;

/** Headers for each of the three: nothing but this origin, no framing, no sniffing. */
export const STATUS_PAGE_HEADERS = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store',
} as const;

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunnel-server status</title>
<link rel="stylesheet" href="/status.css">
<header>
  <h1>tunnel-server <span id="replica"></span></h1>
  <p id="summary">loading…</p>
  <p id="updated" class="muted"></p>
</header>
<main>
  <section><h2>Clusters</h2><table id="clusters"><thead><tr>
    <th>cluster</th><th class="num">agents</th><th>versions</th><th class="num">RTT</th><th class="num">open streams</th><th class="num">in/s</th><th class="num">out/s</th>
  </tr></thead><tbody></tbody></table></section>
  <section><h2>Routes</h2><table id="routes"><thead><tr>
    <th>route</th><th>mode</th><th class="num">agents</th><th>last probe</th><th class="num">target dial</th><th>probed</th>
  </tr></thead><tbody></tbody></table></section>
  <section><h2>Agents</h2><table id="agents"><thead><tr>
    <th>agent</th><th>cluster</th><th>version</th><th>address</th><th>connected</th><th class="num">RTT</th><th class="num">open streams</th>
  </tr></thead><tbody></tbody></table></section>
</main>
<footer class="muted">JSON: <a href="/status">/status</a> · metrics: <a href="/metrics">/metrics</a></footer>
<script src="/status.js"></script>
</html>
`;

export const STATUS_PAGE_CSS = `
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --muted: #6e7781; --line: #d0d7de; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1.5rem; }
h1 { font-size: 1.4rem; margin: 0; } h1 span { color: var(--muted); font-weight: 400; }
h2 { font-size: 1.05rem; margin: 1.6rem 0 0.4rem; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.3rem 0.6rem; border-bottom: 1px solid var(--line); }
th { font-weight: 600; color: var(--muted); font-size: 0.85rem; }
td.num, th.num { text-align: right; }
.ok { color: var(--ok); } .bad { color: var(--bad); font-weight: 600; } .muted { color: var(--muted); }
#summary { font-size: 1.05rem; margin: 0.3rem 0 0; }
tr.empty td { color: var(--muted); font-style: italic; }
`;

export const STATUS_PAGE_JS = `'use strict';
(() => {
  const REFRESH_MS = ${STATUS_REFRESH_MS};
  let previous;
  const $ = (id) => document.getElementById(id);
  // Every value is text: the page never builds markup from data.
  const cell = (text, className) => {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  };
  const fill = (id, rows, empty, columns) => {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      tr.className = 'empty';
      const td = cell(empty);
      td.colSpan = columns;
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const row of rows) {
      const tr = document.createElement('tr');
      tr.append(...row);
      body.append(tr);
    }
  };
  const count = (n, one, many) => n + ' ' + (n === 1 ? one : many);
  const ms = (v) => (typeof v === 'number' ? (v < 10 ? v.toFixed(1) : Math.round(v)) + ' ms' : '—');
  const rate = (bytes) => {
    if (!(bytes >= 0)) return '—';
    const units = ['B/s', 'KiB/s', 'MiB/s', 'GiB/s'];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i === 0 ? Math.round(bytes) : bytes.toFixed(1)) + ' ' + units[i];
  };
  const ago = (iso) => {
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    return s < 60 ? s + ' s ago' : s < 3600 ? Math.round(s / 60) + ' min ago' : Math.round(s / 3600) + ' h ago';
  };
  const draw = (status, at) => {
    $('replica').textContent = status.serverId;
    const seconds = previous ? (at - previous.at) / 1000 : 0;
    const clusters = new Map();
    for (const a of status.agents) {
      const c = clusters.get(a.clusterId) ?? { agents: [], streams: 0 };
      c.agents.push(a);
      c.streams += a.activeStreams;
      clusters.set(a.clusterId, c);
    }
    const streams = status.agents.reduce((n, a) => n + a.activeStreams, 0);
    const failing = new Set(status.probes.filter((p) => !p.ok).map((p) => p.route));
    const passing = new Set(status.probes.filter((p) => p.ok).map((p) => p.route));
    const down = [...failing].filter((r) => !passing.has(r)).length;
    $('summary').textContent = count(clusters.size, 'cluster', 'clusters') + ' · ' +
      count(status.agents.length, 'agent session', 'agent sessions') + ' · ' +
      count(streams, 'open stream', 'open streams') + ' · ' +
      count(status.pendingConnections, 'pending connection', 'pending connections') +
      (down > 0 ? ' · ' + count(down, 'route', 'routes') + ' unreachable' : '');
    $('summary').className = down > 0 ? 'bad' : '';
    fill('clusters', [...clusters].sort(([a], [b]) => a.localeCompare(b)).map(([id, c]) => {
      const traffic = status.traffic?.[id];
      const before = previous?.status.traffic?.[id];
      const perS = (k) => (traffic && before && seconds > 0 ? (traffic[k] - before[k]) / seconds : undefined);
      const rtts = c.agents.map((a) => a.rttMs).filter((v) => typeof v === 'number');
      return [
        cell(id),
        cell(String(c.agents.length), 'num'),
        cell([...new Set(c.agents.map((a) => a.agentVersion))].join(', ')),
        cell(rtts.length ? ms(Math.min(...rtts)) : '—', 'num'),
        cell(String(c.streams), 'num'),
        cell(rate(perS('in')), 'num'),
        cell(rate(perS('out')), 'num'),
      ];
    }), 'no agent connected', 7);
    const modes = {};
    for (const [mode, s] of Object.entries(status.modes)) for (const r of s?.routes ?? []) if (r.route) modes[r.route] = mode;
    const routes = [...new Set(status.routes)].sort();
    fill('routes', routes.map((route) => {
      const probes = status.probes.filter((p) => p.route === route);
      const best = probes.find((p) => p.ok) ?? probes[0];
      const holders = status.agents.filter((a) => a.routes.includes(route)).length;
      return [
        cell(route),
        cell(status.routeModes?.[route] ?? modes[route] ?? 'passthrough'),
        cell(String(holders), 'num'),
        best ? cell(best.ok ? 'ok' : (best.code || 'failed') + (best.message ? ': ' + best.message : ''), best.ok ? 'ok' : 'bad') : cell('not probed yet', 'muted'),
        cell(best && best.ok ? ms(best.dialMs) : '—', 'num'),
        cell(best ? ago(best.at) : '—'),
      ];
    }), 'no routes', 6);
    fill('agents', status.agents.map((a) => [
      cell(a.agentId), cell(a.clusterId), cell(a.agentVersion), cell(a.remoteAddress),
      cell(ago(a.connectedAt)), cell(ms(a.rttMs), 'num'), cell(String(a.activeStreams), 'num'),
    ]), 'no agent connected', 7);
    $('updated').textContent = 'updated ' + new Date(at).toLocaleTimeString() + ' · every ' + REFRESH_MS / 1000 + ' s';
    $('updated').className = 'muted';
    previous = { status, at };
  };
  const poll = async () => {
    try {
      const res = await fetch('/status', { cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      draw(await res.json(), Date.now());
    } catch (err) {
      $('updated').textContent = 'cannot reach the server: ' + err.message;
      $('updated').className = 'bad';
    }
    setTimeout(poll, REFRESH_MS);
  };
  poll();
})();
`;
