/**
 * S1: one stream, bulk, each direction. Targets: the tunnel at ≥ 0.65× the two-relay ceiling and
 * ≥ 1.2× ssh -R aes128-gcm; CPU seconds per GiB per process reported.
 */
import { MiB, fmtSummary, interleave, ratioSummary, series, summary, target } from '../harness.js';
import { bulkOnce, cpuColumn, errorsOf } from './common.js';

export const id = 'S1';
export const title = 'S1 single-stream bulk';

export async function run(ctx) {
  const names = ctx.pathNames;
  const bytes = ctx.opts.bytes;
  const warm = ctx.opts.quick ? 8 * MiB : Math.max(16 * MiB, bytes / 8);
  const out = { id, title, bytes, directions: {}, tables: [], targets: [], chart: [], notes: [] };
  for (const direction of ctx.opts.directions) {
    ctx.log(`${id} ${direction}: ${bytes / MiB} MiB per transfer, ${ctx.opts.reps} rounds`);
    const results = await interleave(
      ctx,
      names,
      ctx.opts.reps,
      (p) => bulkOnce(ctx, ctx.paths[p], direction, bytes),
      { warmup: (p) => bulkOnce(ctx, ctx.paths[p], direction, warm) },
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
    out.directions[direction] = perPath;
    out.tables.push({
      title: `S1 ${direction === 'down' ? 'download (upstream → user)' : 'upload (user → upstream)'}, ${bytes / MiB} MiB, GB/s (10^9 B/s)`,
      columns: ['path', 'GB/s median [min..max]', '× direct', 'CPU s/GiB per process (median)'],
      rows,
    });
    out.chart.push({
      title: `S1 bulk ${direction}: throughput ÷ direct`,
      bars: names.map((p) => ({ path: p, s: perPath[p].vsDirect })),
      reference: 1,
    });
    if (gbps.tunnel) {
      const vsRelay2 = gbps.relay2 ? ratioSummary(gbps.tunnel, gbps.relay2) : undefined;
      const vsSsh = gbps['ssh-aes'] ? ratioSummary(gbps.tunnel, gbps['ssh-aes']) : undefined;
      perPath.tunnel.vsRelay2 = vsRelay2;
      perPath.tunnel.vsSshAes = vsSsh;
      if (vsRelay2) {
        out.targets.push(
          target(
            id,
            `${direction}: tunnel ÷ two relays ≥ 0.65`,
            vsRelay2.median,
            '>=',
            0.65,
            fmtSummary(vsRelay2),
          ),
        );
      }
      if (vsSsh) {
        out.targets.push(
          target(
            id,
            `${direction}: tunnel ÷ ssh -R aes128-gcm ≥ 1.2`,
            vsSsh.median,
            '>=',
            1.2,
            fmtSummary(vsSsh),
          ),
        );
      }
    }
  }
  out.notes.push(
    'Raw-TCP route figures are not available: the server routes user connections by TLS SNI only ' +
      '(no TCP route mode yet), so every path carries the same end-to-end TLS session.',
  );
  return out;
}
