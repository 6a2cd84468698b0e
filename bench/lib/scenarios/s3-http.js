/**
 * S3: small HTTP requests (GET, 128-byte body) over keep-alive connections.
 * Targets: added p50 ≤ 0.2 ms at concurrency 1 (tunnel p50 − direct p50, same round);
 * ≥ 0.5× direct requests/s at concurrency 50; p99 reported.
 */
import { HttpConn } from '../client.js';
import { diffSummary, fmtSummary, interleave, ratioSummary, series, summary, target } from '../harness.js';
import { concurrentRequests, errorsOf, sequentialRequests } from './common.js';

export const id = 'S3';
export const title = 'S3 small HTTP requests over keep-alive';

/** A keep-alive HTTP connection through `path`. */
const opener = (ctx, path) => () => HttpConn.open(path.port, ctx.ca);

export async function run(ctx) {
  const names = ctx.pathNames;
  const count = ctx.opts.quick ? 500 : 5000;
  const seconds = ctx.opts.quick ? 0.75 : 2;
  const out = { id, title, perPath: {}, tables: [], targets: [], chart: [], notes: [] };

  ctx.log(`${id} concurrency 1: ${count} requests on one connection`);
  const c1 = await interleave(
    ctx,
    names,
    ctx.opts.reps,
    (p) => sequentialRequests(opener(ctx, ctx.paths[p]), count),
    {
      warmup: (p) => sequentialRequests(opener(ctx, ctx.paths[p]), ctx.opts.quick ? 200 : 500),
    },
  );
  ctx.log(`${id} concurrency 50: ${seconds} s closed loop on 50 connections`);
  const c50 = await interleave(
    ctx,
    names,
    ctx.opts.reps,
    (p) => concurrentRequests(opener(ctx, ctx.paths[p]), 50, seconds),
    {
      warmup: (p) => concurrentRequests(opener(ctx, ctx.paths[p]), 50, ctx.opts.quick ? 0.25 : 0.5),
    },
  );

  const rows = [];
  const direct = { p50: series(c1.direct ?? [], 'p50'), rps: series(c50.direct ?? [], 'rps') };
  for (const p of names) {
    const p50 = series(c1[p], 'p50');
    const rps = series(c50[p], 'rps');
    const s = {
      c1: { p50: summary(p50), p99: summary(series(c1[p], 'p99')), addedP50: diffSummary(p50, direct.p50) },
      c50: {
        rps: summary(rps),
        vsDirect: ratioSummary(rps, direct.rps),
        p50: summary(series(c50[p], 'p50')),
        p99: summary(series(c50[p], 'p99')),
      },
      errors: [...errorsOf(c1[p]), ...errorsOf(c50[p])],
    };
    out.perPath[p] = s;
    rows.push([
      p,
      fmtSummary(s.c1.p50, 3),
      fmtSummary(s.c1.addedP50, 3),
      fmtSummary(s.c1.p99, 3),
      fmtSummary(s.c50.rps, 0),
      fmtSummary(s.c50.vsDirect),
      fmtSummary(s.c50.p99, 2),
    ]);
  }
  out.tables.push({
    title: `S3 GET /small (128 B) over keep-alive; c=1: ${count} requests; c=50: ${seconds} s`,
    columns: [
      'path',
      'c=1 p50 ms',
      'c=1 added p50 ms',
      'c=1 p99 ms',
      'c=50 req/s',
      'c=50 ÷ direct',
      'c=50 p99 ms',
    ],
    rows,
  });
  out.chart.push({
    title: 'S3 c=50 requests/s ÷ direct',
    bars: names.map((p) => ({ path: p, s: out.perPath[p].c50.vsDirect })),
    reference: 1,
  });
  out.chart.push({
    title: 'S3 c=1 added p50 latency vs direct (ms)',
    bars: names.map((p) => ({ path: p, s: out.perPath[p].c1.addedP50 })),
    unit: 'ms',
  });
  const t = out.perPath.tunnel;
  if (t && direct.p50.length) {
    out.targets.push(
      target(
        id,
        'c=1 added p50 ≤ 0.2 ms',
        t.c1.addedP50.median,
        '<=',
        0.2,
        `${fmtSummary(t.c1.addedP50, 3)} ms`,
      ),
      target(
        id,
        'c=50 requests/s ÷ direct ≥ 0.5',
        t.c50.vsDirect.median,
        '>=',
        0.5,
        fmtSummary(t.c50.vsDirect),
      ),
    );
  }
  return out;
}
