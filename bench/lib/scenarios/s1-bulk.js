/**
 * S1: one stream, bulk, each direction. Targets: the tunnel at ≥ 0.65× the two-relay ceiling and
 * ≥ 1.2× ssh -R aes128-gcm; CPU seconds per GiB per process reported. Judged twice, as separate
 * rows: on the TLS passthrough figures and on the raw-TCP figures (the tunnel's TCP route), each
 * compared with the other paths carrying the same kind of bytes.
 */
import { MiB, fmtSummary, interleave, ratioSummary, series, summary, target } from '../harness.js';
import { bulkOnce, cpuColumn, errorsOf, groupByMode, pathModes, rawSkipNotes } from './common.js';

export const id = 'S1';
export const title = 'S1 single-stream bulk';
/** This scenario measures raw-TCP figures too, on the raw twins of the shared paths (run.js starts them). */
export const hasRaw = true;
export const usesRawTwins = true;

/** One direction of one mode: every path interleaved; adds its table, chart panel and targets to `out`. */
async function measureDirection(ctx, m, direction, out) {
  const { names, bytes } = m;
  const warm = ctx.opts.quick ? 8 * MiB : Math.max(16 * MiB, bytes / 8);
  ctx.log(`${id} ${m.mode} ${direction}: ${bytes / MiB} MiB per transfer, ${ctx.opts.reps} rounds`);
  const results = await interleave(
    ctx,
    names,
    ctx.opts.reps,
    (p) => bulkOnce(ctx, m.paths[p], direction, bytes),
    { warmup: (p) => bulkOnce(ctx, m.paths[p], direction, warm) },
  );
  const gbps = Object.fromEntries(names.map((p) => [p, series(results[p], 'gbps')]));
  const rows = [];
  const perPath = {};
  for (const p of names) {
    const cpu = cpuColumn(results[p]);
    perPath[p] = {
      gbps: summary(gbps[p]),
      vsDirect: ratioSummary(gbps[p], gbps.direct ?? []),
      cpuPerGiB: cpu.medians,
      errors: errorsOf(results[p]),
      otherCores: summary(results[p].map((r) => r.otherCores)),
    };
    rows.push([p, fmtSummary(perPath[p].gbps), fmtSummary(perPath[p].vsDirect), cpu.text]);
  }
  const mode = m.mode;
  out.tables.push({
    mode,
    title:
      `S1 ${m.heading} ${direction === 'down' ? 'download (upstream → user)' : 'upload (user → upstream)'}, ` +
      `${bytes / MiB} MiB (${m.label}), GB/s (10^9 B/s)`,
    columns: ['path', 'GB/s median [min..max]', '× direct', 'CPU s/GiB per process (median)'],
    rows,
  });
  out.chart.push({
    mode,
    title: `S1 ${m.heading} bulk ${direction}: throughput ÷ ${mode === 'raw' ? 'raw ' : ''}direct`,
    bars: names.map((p) => ({ path: p, s: perPath[p].vsDirect })),
    reference: 1,
  });
  if (gbps.tunnel) {
    const vsRelay2 = gbps.relay2 ? ratioSummary(gbps.tunnel, gbps.relay2) : undefined;
    const vsSsh = gbps['ssh-aes'] ? ratioSummary(gbps.tunnel, gbps['ssh-aes']) : undefined;
    perPath.tunnel.vsRelay2 = vsRelay2;
    perPath.tunnel.vsSshAes = vsSsh;
    // "S1 raw down: tunnel ÷ two relays ≥ 0.65": the mode leads, so the two rows read apart.
    if (vsRelay2) {
      out.targets.push({
        mode,
        ...target(
          id,
          `${mode} ${direction}: tunnel ÷ two relays ≥ 0.65`,
          vsRelay2.median,
          '>=',
          0.65,
          fmtSummary(vsRelay2),
        ),
      });
    }
    if (vsSsh) {
      out.targets.push({
        mode,
        ...target(
          id,
          `${mode} ${direction}: tunnel ÷ ssh -R aes128-gcm ≥ 1.2`,
          vsSsh.median,
          '>=',
          1.2,
          fmtSummary(vsSsh),
        ),
      });
    }
  }
  return perPath;
}

export async function run(ctx) {
  // `directions` holds the passthrough figures (as before raw figures existed); `raw` the same shape.
  const bytes = ctx.opts.bytes;
  const out = { id, title, bytes, directions: {}, tables: [], targets: [], chart: [], notes: [] };
  const modes = pathModes(ctx);
  const rawMode = modes.find((m) => m.mode === 'raw');
  if (rawMode) out.raw = { bytes: rawMode.bytes, directions: {} };
  // Direction outermost: both kinds of figures of one direction are measured close together.
  for (const direction of ctx.opts.directions) {
    for (const m of modes) {
      const perPath = await measureDirection(ctx, m, direction, out);
      (m.mode === 'raw' ? out.raw : out).directions[direction] = perPath;
    }
  }
  groupByMode(out);
  out.notes.push(...rawSkipNotes(ctx));
  return out;
}
