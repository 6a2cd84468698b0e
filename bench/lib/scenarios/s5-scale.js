/**
 * S5: scale.
 * (a) N concurrent streams through one tunnel (10,000; --quick 2,000): each user opens a TLS
 *     connection through the tunnel (handshake with the upstream), sends one request, and holds
 *     the connection. Targets: 0 errors, all open within 10 s, ≤ 8 KiB of server memory per stream
 *     (server RSS with all streams open − before, ÷ N). The direct path opens the same
 *     connections, as the reference for the time to open. A fresh tunnel per round.
 * (b) N idle agents on one server process (10,000; --quick 1,000), from one load-generator
 *     process (bench/lib/idle-agents.js). Target: ≤ 48 KiB each (server RSS difference).
 */
import { fork } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ROUTE_HOST } from '../certs.js';
import { HttpConn } from '../client.js';
import { KiB, fmtSummary, interleave, ratioSummary, series, sleep, summary, target } from '../harness.js';
import { adopt, cleanEnv } from '../procs.js';
import { rssBytes } from '../sys.js';
import { NO_TCP_ROUTE, serverMemory, startTunnel, startTunnelServer, supportsTcpRoute } from '../tunnel.js';
import { startChild } from '../procs.js';
import { pool } from '../pool.js';

export const id = 'S5';
export const title = 'S5 10,000 streams and 10,000 idle agents';
/** This scenario measures raw-TCP figures too (run.js starts the raw upstream for it). */
export const hasRaw = true;
const LIB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OPEN_CONCURRENCY = 256;
const REQUEST_CONCURRENCY = 512;

/**
 * Opens `count` connections through `pathName` (direct or a fresh tunnel), holds them, and
 * measures time to open, errors and memory per stream. `raw`: plain TCP to the raw upstream (for
 * the tunnel, through its TCP route) instead of TLS to the HTTPS upstream.
 */
async function streamsOnce(ctx, pathName, count, raw = false) {
  let tunnel;
  let port = raw ? ctx.rawUpstream.port : ctx.upstream.port;
  if (pathName === 'tunnel') {
    tunnel = await startTunnel({
      dir: ctx.dir,
      name: raw ? 's5-raw' : 's5',
      upstreamPort: ctx.upstream.port,
      rawUpstreamPort: raw ? ctx.rawUpstream.port : undefined,
      profileDir: ctx.profileDir,
    });
    port = raw ? tunnel.rawPort : tunnel.port;
    await sleep(1000);
  }
  const conns = new Array(count);
  try {
    if (port === undefined) throw new Error('the tunnel opened no TCP route');
    const rss0 = tunnel ? rssBytes(tunnel.server.child.pid) : NaN;
    const mem0 = tunnel ? await serverMemory(tunnel.server) : undefined;
    const agentRss0 = tunnel ? rssBytes(tunnel.agent.pid) : NaN;
    const t0 = performance.now();
    const opened = await pool(count, OPEN_CONCURRENCY, async (i) => {
      conns[i] = raw ? await HttpConn.openRaw(port) : await HttpConn.open(port, ctx.ca);
    });
    const openMs = performance.now() - t0;
    const requested = await pool(count, REQUEST_CONCURRENCY, async (i) => {
      if (!conns[i]) throw new Error('not open');
      await conns[i].request();
    });
    await sleep(1500);
    const rss1 = tunnel ? rssBytes(tunnel.server.child.pid) : NaN;
    const mem1 = tunnel ? await serverMemory(tunnel.server) : undefined;
    const agentRss1 = tunnel ? rssBytes(tunnel.agent.pid) : NaN;
    // A connection that failed to open fails its request too: requested.errors counts both.
    const errors = requested.errors;
    return {
      openSeconds: openMs / 1000,
      errors,
      firstError: opened.firstError ?? requested.firstError,
      serverKiBPerStream: (rss1 - rss0) / KiB / count,
      serverHeapKiBPerStream: tunnel ? (mem1.heapUsed - mem0.heapUsed) / KiB / count : NaN,
      agentKiBPerStream: (agentRss1 - agentRss0) / KiB / count,
      serverRssMiB: rss1 / KiB / KiB,
    };
  } finally {
    for (const c of conns) c?.close();
    await tunnel?.stop();
  }
}

/** Forks the idle-connection generator with `args`; resolves with its 'ready' report. */
function runGenerator(args) {
  const gen = fork(path.join(LIB, 'idle-agents.js'), args, {
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    env: cleanEnv(),
  });
  adopt('idle-agents', gen);
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('idle connections not all open within 180 s')), 180_000);
    gen.once('message', (m) => {
      clearTimeout(timer);
      resolve(m);
    });
    gen.once('exit', (code) => reject(new Error(`idle-agents generator exited with ${code}`)));
  });
  return { gen, ready };
}

async function stopGenerator(gen) {
  if (!gen || gen.exitCode !== null) return;
  gen.send({ type: 'close' });
  await Promise.race([new Promise((r) => gen.once('exit', r)), sleep(3000)]);
  if (gen.exitCode === null) gen.kill('SIGKILL');
}

/** The reference: N idle bare WebSocket+TLS connections to a bare Node wss server. */
async function plainWssOnce(ctx, count) {
  const server = startChild('wss-server', process.execPath, [
    path.join(LIB, 'wss-server.js'),
    '--cert',
    ctx.cert.certFile,
    '--key',
    ctx.cert.keyFile,
  ]);
  let gen;
  try {
    const port = Number((await server.waitForLine(/^listening \d+/)).split(' ')[1]);
    await sleep(1000);
    const rss0 = rssBytes(server.pid);
    const g = runGenerator([
      '--port',
      String(port),
      '--count',
      String(count),
      '--plain',
      '--ca-file',
      ctx.cert.certFile,
      '--servername',
      ROUTE_HOST,
    ]);
    gen = g.gen;
    const ready = await g.ready;
    await sleep(2000);
    return {
      ok: ready.ok,
      errors: ready.errors,
      kibPerConnection: (rssBytes(server.pid) - rss0) / KiB / Math.max(1, ready.ok),
    };
  } finally {
    await stopGenerator(gen);
    await server.stop();
  }
}

async function idleAgentsOnce(ctx, count) {
  const server = await startTunnelServer({ dir: ctx.dir, name: 's5-idle', maxAgents: count + 1000 });
  let gen;
  try {
    await sleep(1000);
    const rss0 = rssBytes(server.child.pid);
    const mem0 = await serverMemory(server);
    const g = runGenerator([
      '--port',
      String(server.port),
      '--data-dir',
      server.dataDir,
      '--count',
      String(count),
    ]);
    gen = g.gen;
    const ready = await g.ready;
    await sleep(2000);
    const rss1 = rssBytes(server.child.pid);
    const mem1 = await serverMemory(server);
    const ok = Math.max(1, ready.ok);
    return {
      ok: ready.ok,
      errors: ready.errors,
      firstError: ready.firstError,
      registerSeconds: ready.ms / 1000,
      kibPerAgent: (rss1 - rss0) / KiB / ok,
      heapKiBPerAgent: (mem1.heapUsed - mem0.heapUsed) / KiB / ok,
      serverRssMiB: rss1 / KiB / KiB,
    };
  } finally {
    await stopGenerator(gen);
    await server.child.stop();
  }
}

/** Summarises S5a results per path into a table of `out`; returns the summaries by path. */
function streamsTable(out, res, names, streams, raw) {
  const perPath = {};
  const rows = [];
  for (const p of names) {
    const s = {
      openSeconds: summary(series(res[p], 'openSeconds')),
      errors: res[p].reduce((n, r) => n + (r.errors ?? 0) + (r.error ? 1 : 0), 0),
      firstError:
        res[p].find((r) => r.firstError || r.error)?.firstError ?? res[p].find((r) => r.error)?.error,
      serverKiBPerStream: summary(series(res[p], 'serverKiBPerStream')),
      serverHeapKiBPerStream: summary(series(res[p], 'serverHeapKiBPerStream')),
      agentKiBPerStream: summary(series(res[p], 'agentKiBPerStream')),
      serverRssMiB: summary(series(res[p], 'serverRssMiB')),
    };
    perPath[p] = s;
    rows.push([
      p,
      fmtSummary(s.openSeconds),
      String(s.errors),
      fmtSummary(s.serverKiBPerStream, 1),
      fmtSummary(s.serverHeapKiBPerStream, 1),
      fmtSummary(s.agentKiBPerStream, 1),
      fmtSummary(s.serverRssMiB, 0),
    ]);
  }
  out.tables.push({
    title: raw
      ? `S5a raw: ${streams} concurrent raw TCP connections held open (tunnel: TCP route; open = connect + first request answered)`
      : `S5a ${streams} concurrent TLS connections held open (each: handshake + one request)`,
    columns: [
      'path',
      'time to open all, s',
      'errors',
      'server KiB/stream (RSS)',
      'of which V8 heap used',
      'agent KiB/stream (RSS)',
      'server RSS MiB',
    ],
    rows,
  });
  return perPath;
}

/** The S5a targets for one mode, e.g. "raw: 10000 streams: 0 errors". */
function streamTargets(t, streams, mode) {
  return [
    target(
      id,
      `${mode}: ${streams} streams: 0 errors`,
      t.errors,
      '<=',
      0,
      `${t.errors}${t.firstError ? ` (${t.firstError})` : ''}`,
    ),
    target(
      id,
      `${mode}: ${streams} streams: all open within 10 s`,
      t.openSeconds.max,
      '<=',
      10,
      `${fmtSummary(t.openSeconds)} s`,
    ),
    target(
      id,
      `${mode}: ${streams} streams: ≤ 8 KiB server memory per stream`,
      t.serverKiBPerStream.median,
      '<=',
      8,
      `${fmtSummary(t.serverKiBPerStream, 1)} KiB`,
    ),
  ];
}

export async function run(ctx) {
  const quick = ctx.opts.quick;
  const streams = quick ? 2000 : 10_000;
  const agents = quick ? 1000 : 10_000;
  const rounds = quick ? 1 : Math.min(ctx.opts.reps, 3);
  const names = ['direct', 'tunnel'].filter((p) => ctx.pathNames.includes(p) || p === 'tunnel');
  const out = { id, title, streams, agents, tables: [], targets: [], chart: [], notes: [] };

  const modes = [];
  if (ctx.opts.raw !== 'only') modes.push('passthrough');
  if (ctx.opts.raw !== 'off') modes.push('raw');
  for (const mode of modes) {
    const raw = mode === 'raw';
    // The raw tunnel needs a server with --tcp-route; without one only the direct reference runs.
    const skipTunnel = raw && !supportsTcpRoute();
    const modeNames = skipTunnel ? names.filter((p) => p !== 'tunnel') : names;
    ctx.log(`${id}a ${mode}: ${streams} concurrent streams, ${rounds} round(s), fresh tunnel each round`);
    const res = await interleave(ctx, modeNames, rounds, (p) => streamsOnce(ctx, p, streams, raw), {
      timeoutMs: 240_000,
    });
    const perPath = streamsTable(out, res, modeNames, streams, raw);
    if (raw) out.raw = { streams, streamsPerPath: perPath };
    else out.streamsPerPath = perPath;
    if (perPath.tunnel)
      out.targets.push(...streamTargets(perPath.tunnel, streams, mode).map((x) => ({ mode, ...x })));
    if (skipTunnel) {
      out.notes.push(`Raw S5a: the tunnel was skipped: ${NO_TCP_ROUTE}. Only the direct reference ran.`);
    }
  }

  ctx.log(`${id}b: ${agents} idle agents on one server, ${rounds} round(s)`);
  const both = await interleave(
    ctx,
    ['tunnel', 'bare-wss'],
    rounds,
    (p) => (p === 'tunnel' ? idleAgentsOnce(ctx, agents) : plainWssOnce(ctx, agents)),
    { timeoutMs: 240_000 },
  );
  const idle = both.tunnel;
  const bare = summary(series(both['bare-wss'], 'kibPerConnection'));
  const idleSummary = {
    kibPerAgent: summary(series(idle, 'kibPerAgent')),
    registerSeconds: summary(series(idle, 'registerSeconds')),
    errors: idle.reduce((n, r) => n + (r.errors ?? 0) + (r.error ? 1 : 0), 0),
    firstError: idle.find((r) => r.firstError || r.error)?.firstError ?? idle.find((r) => r.error)?.error,
    serverRssMiB: summary(series(idle, 'serverRssMiB')),
    heapKiBPerAgent: summary(series(idle, 'heapKiBPerAgent')),
    bareWssKiB: bare,
    vsBareWss: ratioSummary(series(idle, 'kibPerAgent'), series(both['bare-wss'], 'kibPerConnection')),
  };
  out.idleAgents = idleSummary;
  out.tables.push({
    title: `S5b ${agents} idle agents (WebSocket+TLS, yamux, registered) on one tunnel-server`,
    columns: [
      'server KiB/agent (RSS)',
      'of which V8 heap used',
      'bare wss server KiB/connection (reference)',
      'agent ÷ bare wss',
      'time to register all, s',
      'errors',
      'server RSS MiB',
    ],
    rows: [
      [
        fmtSummary(idleSummary.kibPerAgent, 1),
        fmtSummary(idleSummary.heapKiBPerAgent, 1),
        fmtSummary(idleSummary.bareWssKiB, 1),
        fmtSummary(idleSummary.vsBareWss),
        fmtSummary(idleSummary.registerSeconds),
        String(idleSummary.errors),
        fmtSummary(idleSummary.serverRssMiB, 0),
      ],
    ],
  });

  out.targets.push(
    target(
      id,
      `${agents} idle agents: ≤ 48 KiB each`,
      idleSummary.kibPerAgent.median,
      '<=',
      48,
      `${fmtSummary(idleSummary.kibPerAgent, 1)} KiB${idleSummary.errors ? `, ${idleSummary.errors} errors (${idleSummary.firstError})` : ''}`,
    ),
  );
  if (quick) out.notes.push(`--quick: ${streams} streams and ${agents} agents instead of 10,000; one round.`);
  return out;
}
