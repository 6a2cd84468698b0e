/**
 * S2: 8 parallel downloads through one path (for the tunnel: 8 streams over one agent session).
 * Targets: aggregate ≥ 0.85× a single stream of the same path (measured in the same round);
 * fairness max/min ≤ 1.5, where each stream's share is the bytes it had received when the first
 * stream finished (while all 8 competed). Judged on the TLS passthrough figures and, as separate
 * rows, on the raw-TCP figures (the tunnel's TCP route).
 */
import { closeSocket, download } from '../client.js';
import { MiB, fmtSummary, interleave, ratioSummary, series, summary, target } from '../harness.js';
import { bulkOnce, errorsOf, openOn, pathModes, rawSkipNotes } from './common.js';

export const id = 'S2';
export const title = 'S2 8 parallel streams';
/** This scenario measures raw-TCP figures too, on the raw twins of the shared paths (run.js starts them). */
export const hasRaw = true;
export const usesRawTwins = true;
const STREAMS = 8;

async function parallelOnce(ctx, path, bytes) {
  const per = Math.floor(bytes / STREAMS);
  const sockets = await Promise.all(Array.from({ length: STREAMS }, () => openOn(ctx, path)));
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

/**
 * Bytes per measurement, the same for both modes: half of S1's size in the full run (8 × 64 MiB),
 * so the suite stays near 30 minutes. Not --raw-bytes: with less than a few MiB per stream a fast
 * path ends its first stream before the last one's request is answered, and fairness means nothing.
 */
function totalBytes(ctx) {
  return ctx.opts.quick ? ctx.opts.bytes : Math.min(ctx.opts.bytes, 512 * MiB);
}

/** One mode: every path interleaved; adds its table, chart panel and targets to `out`. */
async function measureMode(ctx, m, out) {
  const names = m.names;
  const bytes = totalBytes(ctx);
  ctx.log(`${id} ${m.mode}: ${STREAMS} × ${bytes / STREAMS / MiB} MiB vs 1 × ${bytes / MiB} MiB, download`);
  const results = await interleave(
    ctx,
    names,
    ctx.opts.reps,
    async (p) => {
      const single = await bulkOnce(ctx, m.paths[p], 'down', bytes);
      const par = await parallelOnce(ctx, m.paths[p], bytes);
      return { single: single.gbps, gbps: par.gbps, fairness: par.fairness };
    },
    {
      warmup: (p) => parallelOnce(ctx, m.paths[p], ctx.opts.quick ? 16 * MiB : Math.max(32 * MiB, bytes / 8)),
    },
  );
  const perPath = {};
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
    perPath[p] = s;
    rows.push([p, fmtSummary(s.gbps), fmtSummary(s.single), fmtSummary(s.vsSingle), fmtSummary(s.fairness)]);
  }
  out.tables.push({
    mode: m.mode,
    title: `S2 ${m.heading}: ${STREAMS} parallel downloads, ${bytes / MiB} MiB in total (${m.label})`,
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
    mode: m.mode,
    title: `S2 ${m.heading}, ${STREAMS} streams: aggregate ÷ single stream (same path)`,
    bars: names.map((p) => ({ path: p, s: perPath[p].vsSingle })),
    reference: 1,
  });
  const t = perPath.tunnel;
  if (t) {
    const targets = [
      target(
        id,
        `${m.mode}: tunnel aggregate ÷ single stream ≥ 0.85`,
        t.vsSingle.median,
        '>=',
        0.85,
        fmtSummary(t.vsSingle),
      ),
      target(
        id,
        `${m.mode}: tunnel fairness max/min ≤ 1.5`,
        t.fairness.median,
        '<=',
        1.5,
        fmtSummary(t.fairness),
      ),
    ];
    out.targets.push(...targets.map((x) => ({ mode: m.mode, ...x })));
  }
  return perPath;
}

export async function run(ctx) {
  const bytes = totalBytes(ctx);
  // `perPath` holds the passthrough figures (as before raw figures existed); `raw` the same shape.
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
  for (const m of pathModes(ctx)) {
    const perPath = await measureMode(ctx, m, out);
    if (m.mode === 'raw') out.raw = { bytes, perPath };
    else out.perPath = perPath;
  }
  out.notes.push(...rawSkipNotes(ctx));
  return out;
}
