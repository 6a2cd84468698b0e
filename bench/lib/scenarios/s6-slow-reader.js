/**
 * S6: one user stops reading in the middle of a download. Four other users do small keep-alive
 * requests (closed loop) before (phase A) and while (phase B) the stalled download holds its
 * path. Targets for the tunnel: the others' p99 moves ≤ 1.5× (B ÷ A, same round), and the
 * server's memory grows ≤ 2 windows + 8 MiB (RSS at the end of B − at the end of A), a window
 * being the stream's receive-window ceiling (maxWindowBytes, 16 MiB: auto-tuning may reach it
 * on loopback).
 */
import { HttpConn, closeSocket, connectTls, download } from '../client.js';
import { GiB, MiB, fmtSummary, interleave, series, sleep, summary, target, withTimeout } from '../harness.js';
import { rssBytes } from '../sys.js';
import { closedLoop, errorsOf } from './common.js';

export const id = 'S6';
export const title = 'S6 one user stops reading mid-download';
const OTHERS = 4;
const MAX_WINDOW_BYTES = 16 * MiB;
const LIMIT_MIB = (2 * MAX_WINDOW_BYTES + 8 * MiB) / MiB;

function middleRss(path) {
  const out = {};
  for (const [role, r] of Object.entries(path.roles)) out[role] = rssBytes(r.pid, r.withChildren);
  return out;
}

async function stallOnce(ctx, path, seconds) {
  const others = await Promise.all(Array.from({ length: OTHERS }, () => HttpConn.open(path.port, ctx.ca)));
  let stalled;
  try {
    const before = await closedLoop(others, seconds);
    const rssA = middleRss(path);
    stalled = await connectTls(path.port, ctx.ca);
    const progress = { bytes: 0 };
    // Never completes: the user stops reading after 4 MiB; the rejection on close is expected.
    download(stalled, 64 * GiB, progress).catch(() => undefined);
    await withTimeout(
      (async () => {
        while (progress.bytes < 4 * MiB) await sleep(5);
      })(),
      10_000,
      'the stalled download to start',
    );
    stalled.pause();
    await sleep(500);
    const during = await closedLoop(others, seconds);
    const rssB = middleRss(path);
    const growthMiB = {};
    for (const role of Object.keys(rssA)) growthMiB[role] = (rssB[role] - rssA[role]) / MiB;
    return {
      p99Before: before.p99,
      p99During: during.p99,
      p99Ratio: during.p99 / before.p99,
      p50Ratio: during.p50 / before.p50,
      growthMiB,
      stalledAtMiB: progress.bytes / MiB,
    };
  } finally {
    stalled?.destroy();
    for (const c of others) c.close();
    if (stalled) await closeSocket(stalled, 500);
  }
}

export async function run(ctx) {
  const names = ctx.pathNames;
  const seconds = ctx.opts.quick ? 0.5 : 2;
  const out = { id, title, perPath: {}, tables: [], targets: [], chart: [], notes: [] };
  ctx.log(`${id}: ${OTHERS} users × ${seconds} s before and during one stalled download`);
  const results = await interleave(ctx, names, ctx.opts.reps, (p) => stallOnce(ctx, ctx.paths[p], seconds));
  const rows = [];
  for (const p of names) {
    const roles = Object.keys(ctx.paths[p].roles);
    const growth = {};
    for (const role of roles) growth[role] = summary(results[p].map((r) => r.growthMiB?.[role] ?? NaN));
    const s = {
      p99Before: summary(series(results[p], 'p99Before')),
      p99During: summary(series(results[p], 'p99During')),
      p99Ratio: summary(series(results[p], 'p99Ratio')),
      p50Ratio: summary(series(results[p], 'p50Ratio')),
      growthMiB: growth,
      errors: errorsOf(results[p]),
    };
    out.perPath[p] = s;
    rows.push([
      p,
      fmtSummary(s.p99Before, 3),
      fmtSummary(s.p99During, 3),
      fmtSummary(s.p99Ratio),
      fmtSummary(s.p50Ratio),
      roles.map((r) => `${r} ${fmtSummary(growth[r], 1)}`).join(', ') || '—',
    ]);
  }
  out.tables.push({
    title: `S6 ${OTHERS} users' GET /small latency before and during one stalled 64 GiB download (${seconds} s each)`,
    columns: [
      'path',
      'p99 before ms',
      'p99 during ms',
      'p99 during ÷ before',
      'p50 during ÷ before',
      'memory growth MiB (middle processes)',
    ],
    rows,
  });
  out.chart.push({
    title: 'S6 others’ p99 during a stalled download ÷ before',
    bars: names.map((p) => ({ path: p, s: out.perPath[p].p99Ratio })),
    reference: 1,
  });
  const t = out.perPath.tunnel;
  if (t) {
    out.targets.push(
      target(id, 'others’ p99 during ÷ before ≤ 1.5', t.p99Ratio.median, '<=', 1.5, fmtSummary(t.p99Ratio)),
      target(
        id,
        `server memory growth ≤ 2 windows + 8 MiB (${LIMIT_MIB} MiB)`,
        t.growthMiB.server.max,
        '<=',
        LIMIT_MIB,
        `${fmtSummary(t.growthMiB.server, 1)} MiB`,
      ),
    );
  }
  return out;
}
