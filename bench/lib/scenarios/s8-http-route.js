/**
 * S8: small HTTP requests through an http route (a dashboard's traffic): the tunnel server ends
 * TLS, checks the session cookie, and forwards each request over a tunnel stream it keeps alive,
 * to a plain-HTTP upstream. Compared with plain HTTP straight to the same upstream, so the figure
 * is the whole cost of the route: TLS at the server, HTTP parsing, the session check, the tunnel.
 * Reported: added p50 at concurrency 1, requests/s at concurrency 50 and their ratio to direct.
 * No target yet: the first figures set one.
 */
import { readFileSync } from 'node:fs';
import { HttpConn } from '../client.js';
import { diffSummary, fmtSummary, interleave, ratioSummary, series, summary } from '../harness.js';
import { CLUSTER_ID, createSessionCookie, startAgent, startTunnelServer } from '../tunnel.js';
import { concurrentRequests, errorsOf, sequentialRequests } from './common.js';

export const id = 'S8';
export const title = 'S8 small HTTP requests through an http route';
/** Uses the raw (plain HTTP) upstream. */
export const hasRaw = true;

const ROUTE = 'web';
const HOST = `cluster-${CLUSTER_ID}-${ROUTE}.proxy.localhost`;

export async function run(ctx) {
  const out = { id, title, perPath: {}, tables: [], targets: [], chart: [], notes: [] };
  if (!ctx.rawUpstream) {
    out.notes.push('skipped: the plain-HTTP upstream is off (--raw off)');
    return out;
  }
  const server = await startTunnelServer({ dir: ctx.dir, name: 'http-route' });
  const agent = await startAgent({
    server,
    name: 'http-route',
    upstreamPort: ctx.upstream.port,
    extraRoutes: [`${ROUTE}=http://127.0.0.1:${ctx.rawUpstream.port}`],
  });
  try {
    const cookie = await createSessionCookie(server, ROUTE);
    // The server's certificate is its own CA's: this bench trusts it for the route hostname.
    const ca = readFileSync(server.caFile, 'utf8');
    const openers = {
      direct: () => HttpConn.openRaw(ctx.rawUpstream.port),
      'http-route': () => HttpConn.openRoute(server.port, ca, HOST, cookie),
    };
    const names = Object.keys(openers);
    const count = ctx.opts.quick ? 500 : 5000;
    const seconds = ctx.opts.quick ? 0.75 : 2;
    ctx.log(`${id} concurrency 1: ${count} requests on one connection`);
    const c1 = await interleave(ctx, names, ctx.opts.reps, (p) => sequentialRequests(openers[p], count), {
      warmup: (p) => sequentialRequests(openers[p], 200),
    });
    ctx.log(`${id} concurrency 50: ${seconds} s closed loop on 50 connections`);
    const c50 = await interleave(
      ctx,
      names,
      ctx.opts.reps,
      (p) => concurrentRequests(openers[p], 50, seconds),
      {
        warmup: (p) => concurrentRequests(openers[p], 50, 0.25),
      },
    );
    const directP50 = series(c1.direct, 'p50');
    const directRps = series(c50.direct, 'rps');
    const rows = [];
    for (const p of names) {
      const p50 = series(c1[p], 'p50');
      const rps = series(c50[p], 'rps');
      const s = {
        c1: { p50: summary(p50), addedP50: diffSummary(p50, directP50) },
        c50: {
          rps: summary(rps),
          vsDirect: ratioSummary(rps, directRps),
          p99: summary(series(c50[p], 'p99')),
        },
        errors: [...errorsOf(c1[p]), ...errorsOf(c50[p])],
      };
      out.perPath[p] = s;
      rows.push([
        p,
        fmtSummary(s.c1.p50, 3),
        fmtSummary(s.c1.addedP50, 3),
        fmtSummary(s.c50.rps, 0),
        fmtSummary(s.c50.vsDirect),
        fmtSummary(s.c50.p99, 2),
      ]);
    }
    out.tables.push({
      title: `S8 GET /small (128 B) through an http route vs plain HTTP direct; c=1: ${count} requests; c=50: ${seconds} s`,
      columns: ['path', 'c=1 p50 ms', 'c=1 added p50 ms', 'c=50 req/s', 'c=50 ÷ direct', 'c=50 p99 ms'],
      rows,
    });
    out.chart.push({
      title: 'S8 c=50 requests/s ÷ direct',
      bars: names.map((p) => ({ path: p, s: out.perPath[p].c50.vsDirect })),
      reference: 1,
    });
    return out;
  } finally {
    await agent.stop();
    await server.child.stop();
  }
}
