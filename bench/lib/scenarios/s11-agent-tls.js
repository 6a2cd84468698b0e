/**
 * S11: what an agent-tls route costs beside passthrough. Both run through one tunnel server and
 * one agent to the same TLS upstream: passthrough carries the client's TLS to the upstream
 * unread; agent-tls ends it at the agent (a route certificate) and opens a second TLS to the
 * upstream, so each connection pays two handshakes and the agent decrypts and encrypts every
 * byte. Compared with the upstream direct: a new connection with one small GET (connect, TLS,
 * request, response, close), one after another; and a bulk download on one connection.
 * No target yet: the first figures set one.
 */
import { readFileSync } from 'node:fs';
import { closeSocket, connectTls, download } from '../client.js';
import { ROUTE_HOST } from '../certs.js';
import {
  MiB,
  diffSummary,
  fmtSummary,
  interleave,
  quantile,
  ratioSummary,
  series,
  summary,
} from '../harness.js';
import { CLUSTER_ID, startAgent, startTunnelServer } from '../tunnel.js';
import { waitUntil } from '../procs.js';

export const id = 'S11';
export const title = 'S11 agent-tls beside passthrough';

const ROUTE = 'tls';
const AGENT_TLS_HOST = `cluster-${CLUSTER_ID}-${ROUTE}.proxy.localhost`;

/** `count` connections one after another, each with one 128-byte GET; latency quantiles in ms. */
async function connections(open, count) {
  const lat = [];
  let errors = 0;
  let firstError;
  for (let i = 0; i < count; i++) {
    const t0 = performance.now();
    try {
      const socket = await open();
      try {
        await download(socket, 128);
      } finally {
        socket.end();
      }
      lat.push(performance.now() - t0);
    } catch (err) {
      errors += 1;
      firstError ??= err.message;
    }
  }
  return { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99), errors, firstError };
}

async function bulk(open, bytes) {
  const socket = await open();
  try {
    const ms = await download(socket, bytes);
    return { gbps: bytes / ms / 1e6 };
  } finally {
    await closeSocket(socket);
  }
}

export async function run(ctx) {
  const out = { id, title, perPath: {}, tables: [], targets: [], chart: [], notes: [] };
  const server = await startTunnelServer({ dir: ctx.dir, name: 'agent-tls' });
  const agent = await startAgent({
    server,
    name: 'agent-tls',
    upstreamPort: ctx.upstream.port,
    // The agent checks the upstream's certificate as it would a kube-apiserver's: its CA and name.
    extraRoutes: [
      `${ROUTE}=127.0.0.1:${ctx.upstream.port},mode=agent-tls,ca=${ctx.cert.certFile},serverName=${ROUTE_HOST}`,
    ],
  });
  try {
    const routeCa = readFileSync(`${server.dataDir}/route-ca.crt`, 'utf8');
    const openers = {
      direct: () => connectTls(ctx.upstream.port, ctx.ca),
      passthrough: () => connectTls(server.port, ctx.ca),
      'agent-tls': () => connectTls(server.port, routeCa, 10_000, AGENT_TLS_HOST),
    };
    // The agent asks for its certificate once registered: ready when a handshake succeeds.
    await waitUntil('the agent-tls route to serve a certificate', async () => {
      await closeSocket(await openers['agent-tls']());
      return true;
    });
    const names = Object.keys(openers);
    const count = ctx.opts.quick ? 100 : 400;
    const bytes = ctx.opts.quick ? 64 * MiB : 256 * MiB;
    ctx.log(`${id}: ${count} sequential connections per round, then ${bytes / MiB} MiB downloads`);
    const conn = await interleave(ctx, names, ctx.opts.reps, (p) => connections(openers[p], count), {
      warmup: (p) => connections(openers[p], 20),
    });
    const down = await interleave(ctx, names, ctx.opts.reps, (p) => bulk(openers[p], bytes), {
      warmup: (p) => bulk(openers[p], 8 * MiB),
    });
    const directP50 = series(conn.direct, 'p50');
    const directGbps = series(down.direct, 'gbps');
    const rows = [];
    for (const p of names) {
      const p50 = series(conn[p], 'p50');
      const gbps = series(down[p], 'gbps');
      const s = {
        connect: {
          p50: summary(p50),
          addedP50: diffSummary(p50, directP50),
          p99: summary(series(conn[p], 'p99')),
          errors: conn[p].reduce((n, r) => n + (r.errors ?? 0) + (r.error ? 1 : 0), 0),
        },
        download: { gbps: summary(gbps), vsDirect: ratioSummary(gbps, directGbps) },
      };
      out.perPath[p] = s;
      rows.push([
        p,
        fmtSummary(s.connect.p50, 3),
        fmtSummary(s.connect.addedP50, 3),
        fmtSummary(s.connect.p99, 3),
        String(s.connect.errors),
        fmtSummary(s.download.gbps),
        fmtSummary(s.download.vsDirect),
      ]);
    }
    out.tables.push({
      title: `S11 new connection + GET 128 B (${count} sequential per round); download ${bytes / MiB} MiB on one connection`,
      columns: [
        'path',
        'connect p50 ms',
        'added p50 ms',
        'connect p99 ms',
        'errors',
        'download GB/s',
        'download ÷ direct',
      ],
      rows,
    });
    out.chart.push({
      title: 'S11 download throughput ÷ direct',
      bars: names.map((p) => ({ path: p, s: out.perPath[p].download.vsDirect })),
      reference: 1,
    });
    return out;
  } finally {
    await agent.stop();
    await server.child.stop();
  }
}
