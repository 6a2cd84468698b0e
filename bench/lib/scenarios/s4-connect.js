/**
 * S4: a new TLS connection per request (connect, full TLS handshake with the upstream, GET, close),
 * one after another. Targets: added p50 ≤ 0.6 ms (tunnel − direct, same round); 0 errors.
 */
import { oneShot } from '../client.js';
import { diffSummary, fmtSummary, interleave, quantile, series, summary, target } from '../harness.js';

export const id = 'S4';
export const title = 'S4 a new TLS connection per request';

async function connections(ctx, path, count) {
  const lat = [];
  let errors = 0;
  let firstError;
  for (let i = 0; i < count; i++) {
    try {
      lat.push(await oneShot(path.port, ctx.ca));
    } catch (err) {
      errors += 1;
      firstError ??= err.message;
    }
  }
  return { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99), errors, firstError };
}

export async function run(ctx) {
  const names = ctx.pathNames;
  // ssh -R takes ~45 ms per new connection here (see the results): 400 keeps the full run bounded,
  // 60 keeps --quick under its 3 minutes (the raw S1/S2/S5 figures take the time saved here).
  const count = ctx.opts.quick ? 60 : 400;
  const out = { id, title, perPath: {}, tables: [], targets: [], chart: [], notes: [] };
  ctx.log(`${id}: ${count} connections, one request each, sequential`);
  const results = await interleave(ctx, names, ctx.opts.reps, (p) => connections(ctx, ctx.paths[p], count), {
    warmup: (p) => connections(ctx, ctx.paths[p], ctx.opts.quick ? 20 : 100),
  });
  const directP50 = series(results.direct ?? [], 'p50');
  const rows = [];
  for (const p of names) {
    const p50 = series(results[p], 'p50');
    const errors = results[p].reduce((n, r) => n + (r.errors ?? 0) + (r.error ? 1 : 0), 0);
    const s = {
      p50: summary(p50),
      p99: summary(series(results[p], 'p99')),
      addedP50: diffSummary(p50, directP50),
      errors,
      firstError: results[p].find((r) => r.firstError || r.error)?.firstError,
    };
    out.perPath[p] = s;
    rows.push([p, fmtSummary(s.p50, 3), fmtSummary(s.addedP50, 3), fmtSummary(s.p99, 3), String(errors)]);
  }
  out.tables.push({
    title: `S4 ${count} sequential connections per round (TCP + TLS 1.3 handshake + GET /small + close)`,
    columns: ['path', 'p50 ms', 'added p50 ms', 'p99 ms', 'errors (all rounds)'],
    rows,
  });
  out.chart.push({
    title: 'S4 new connection per request: added p50 vs direct (ms)',
    bars: names.map((p) => ({ path: p, s: out.perPath[p].addedP50 })),
    unit: 'ms',
  });
  const t = out.perPath.tunnel;
  if (t && directP50.length) {
    out.targets.push(
      target(id, 'added p50 ≤ 0.6 ms', t.addedP50.median, '<=', 0.6, `${fmtSummary(t.addedP50, 3)} ms`),
      target(
        id,
        '0 errors',
        t.errors,
        '<=',
        0,
        `${t.errors} errors${t.firstError ? ` (${t.firstError})` : ''}`,
      ),
    );
  }
  return out;
}
