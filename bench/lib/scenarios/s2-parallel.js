/**
 * S2: 8 parallel downloads through one path (for the tunnel: 8 streams over one agent session).
 * Targets: aggregate ≥ 0.85× a single stream of the same path (measured in the same round);
 * fairness max/min ≤ 1.5, where each stream's share is the bytes it had received when the first
 * stream finished (while all 8 competed).
 */
import { closeSocket, connectTls, download } from '../client.js';
import { MiB, fmtSummary, interleave, ratioSummary, series, summary, target } from '../harness.js';
import { bulkOnce, errorsOf } from './common.js';

export const id = 'S2';
export const title = 'S2 8 parallel streams';
const STREAMS = 8;

async function parallelOnce(ctx, path, bytes) {
  const per = Math.floor(bytes / STREAMS);
  const sockets = await Promise.all(Array.from({ length: STREAMS }, () => connectTls(path.port, ctx.ca)));
  try {
    const progress = sockets.map(() => ({ bytes: 0 }));
    let sharesAtFirst;
    const t0 = performance.now();
    await Promise.all(
      sockets.map((s, i) =>
        download(s, per, progress[i]).then(() => {
          sharesAtFirst ??= progress.map((p) => p.bytes);
        }),
      ),
    );
    const ms = performance.now() - t0;
    return {
      ms,
      gbps: (per * STREAMS) / ms / 1e6,
      fairness: Math.max(...sharesAtFirst) / Math.max(1, Math.min(...sharesAtFirst)),
    };
  } finally {
    await Promise.all(sockets.map((s) => closeSocket(s)));
  }
}

export async function run(ctx) {
  const names = ctx.pathNames;
  // Half of S1's size in the full run (8 × 64 MiB): the suite stays near 25 minutes.
  const bytes = ctx.opts.quick ? ctx.opts.bytes : Math.min(ctx.opts.bytes, 512 * MiB);
  ctx.log(`${id}: ${STREAMS} × ${bytes / STREAMS / MiB} MiB vs 1 × ${bytes / MiB} MiB, download`);
  const results = await interleave(
    ctx,
    names,
    ctx.opts.reps,
    async (p) => {
      const single = await bulkOnce(ctx, ctx.paths[p], 'down', bytes);
      const par = await parallelOnce(ctx, ctx.paths[p], bytes);
      return { single: single.gbps, gbps: par.gbps, fairness: par.fairness };
    },
    {
      warmup: (p) =>
        parallelOnce(ctx, ctx.paths[p], ctx.opts.quick ? 16 * MiB : Math.max(32 * MiB, bytes / 8)),
    },
  );
  const out = {
    id,
    title,
    bytes,
    streams: STREAMS,
    perPath: {},
    tables: [],
    targets: [],
    chart: [],
    notes: [],
  };
  const rows = [];
  for (const p of names) {
    const agg = series(results[p], 'gbps');
    const single = series(results[p], 'single');
    const s = {
      gbps: summary(agg),
      single: summary(single),
      vsSingle: ratioSummary(agg, single),
      fairness: summary(series(results[p], 'fairness')),
      errors: errorsOf(results[p]),
    };
    out.perPath[p] = s;
    rows.push([p, fmtSummary(s.gbps), fmtSummary(s.single), fmtSummary(s.vsSingle), fmtSummary(s.fairness)]);
  }
  out.tables.push({
    title: `S2 ${STREAMS} parallel downloads, ${bytes / MiB} MiB in total`,
    columns: [
      'path',
      'aggregate GB/s',
      'single stream GB/s (same round)',
      'aggregate ÷ single',
      'fairness max/min',
    ],
    rows,
  });
  out.chart.push({
    title: `S2 ${STREAMS} streams: aggregate ÷ single stream (same path)`,
    bars: names.map((p) => ({ path: p, s: out.perPath[p].vsSingle })),
    reference: 1,
  });
  const t = out.perPath.tunnel;
  if (t) {
    out.targets.push(
      target(
        id,
        'tunnel aggregate ÷ single stream ≥ 0.85',
        t.vsSingle.median,
        '>=',
        0.85,
        fmtSummary(t.vsSingle),
      ),
      target(id, 'tunnel fairness max/min ≤ 1.5', t.fairness.median, '<=', 1.5, fmtSummary(t.fairness)),
    );
  }
  return out;
}
