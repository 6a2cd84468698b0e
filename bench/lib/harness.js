/**
 * The measuring discipline shared by every scenario: paths run interleaved (A B C … A B C …),
 * each measurement waits briefly for a quiet machine and records how busy the rest of the
 * machine was; figures are medians with min..max, and ratios are taken within one round (the
 * paths measured back to back), never across runs.
 */
import { cpuDelta, cpuSnapshot } from './sys.js';
import { sleep } from './procs.js';

export { sleep };

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Quantile q in [0, 1] of a sorted-or-not list (nearest rank). */
export function quantile(xs, q) {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  const rank = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[rank];
}

/** { median, min, max, n, values } of the finite values. */
export function summary(values) {
  const v = values.filter((x) => Number.isFinite(x));
  return {
    median: median(v),
    min: v.length ? Math.min(...v) : NaN,
    max: v.length ? Math.max(...v) : NaN,
    n: v.length,
    values: v,
  };
}

/** Per-round ratios a[i] / b[i] (the two paths of one round), summarised. */
export function ratioSummary(a, b) {
  const out = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) out.push(a[i] / b[i]);
  return summary(out);
}

/** Per-round differences a[i] − b[i], summarised. */
export function diffSummary(a, b) {
  const out = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) out.push(a[i] - b[i]);
  return summary(out);
}

export function fmt(x, digits = 2) {
  if (!Number.isFinite(x)) return 'n/a';
  return x.toFixed(digits);
}

/** "1.23 [1.10..1.40]" */
export function fmtSummary(s, digits = 2, scale = 1) {
  if (!s || !Number.isFinite(s.median)) return 'n/a';
  if (s.n === 1) return fmt(s.median * scale, digits);
  return `${fmt(s.median * scale, digits)} [${fmt(s.min * scale, digits)}..${fmt(s.max * scale, digits)}]`;
}

/**
 * Waits (at most `maxMs`) until processes other than this bench's use under `thresholdCores`
 * for 250 ms, so other work on a small machine disturbs a measurement less. Returns the load seen.
 */
export async function settle(maxMs, thresholdCores = 0.25) {
  if (maxMs <= 0) return NaN;
  const deadline = Date.now() + maxMs;
  let other = NaN;
  for (let i = 0; i < 1000; i++) {
    const a = cpuSnapshot({});
    await sleep(250);
    other = cpuDelta(a, cpuSnapshot({})).otherCores;
    if (other <= thresholdCores || Date.now() >= deadline) break;
  }
  return other;
}

/**
 * Runs `measure(path, round)` for every round and path, interleaved, and returns
 * { [path]: [result per round] }. Each result gets `otherCores` (the rest of the machine's load
 * during it); a run disturbed above `ctx.opts.maxOtherCores` is repeated up to
 * `ctx.opts.retries` times and the least disturbed attempt kept. A failed measurement is kept as
 * { error } so one bad run does not sink the scenario.
 */
export async function interleave(ctx, paths, rounds, measure, { warmup, timeoutMs = 180_000 } = {}) {
  const results = Object.fromEntries(paths.map((p) => [p, []]));
  // A busy machine must not double the run: at most one measurement in four is repeated.
  let retryBudget = Math.ceil((rounds * paths.length) / 4);
  if (warmup) {
    for (const p of paths) {
      try {
        await withTimeout(warmup(p), timeoutMs, `warm-up of ${p}`);
      } catch (err) {
        ctx.log(`  warm-up ${p} failed: ${err.message}`);
      }
    }
  }
  for (let round = 0; round < rounds; round++) {
    for (const p of paths) {
      let best;
      for (let attempt = 0; attempt <= ctx.opts.retries; attempt++) {
        await settle(ctx.opts.settleMs);
        const before = cpuSnapshot({});
        let r;
        try {
          r = await withTimeout(measure(p, round), timeoutMs, `measurement of ${p}`);
        } catch (err) {
          r = { error: err.message };
        }
        r.otherCores = cpuDelta(before, cpuSnapshot({})).otherCores;
        if (
          !best ||
          (r.error === undefined && (best.error !== undefined || r.otherCores < best.otherCores))
        ) {
          best = r;
        }
        if (r.error !== undefined || r.otherCores <= ctx.opts.maxOtherCores || retryBudget <= 0) break;
        if (attempt < ctx.opts.retries) retryBudget -= 1;
      }
      if (best.error) ctx.log(`  ${p} round ${round + 1}: ERROR ${best.error}`);
      ctx.otherLoad?.push(best.otherCores);
      results[p].push(best);
    }
    ctx.log(`  round ${round + 1}/${rounds} done`);
  }
  return results;
}

/** The values of `key` from each round's result (NaN for failed rounds). */
export function series(results, key) {
  return results.map((r) => (r.error === undefined ? r[key] : NaN));
}

/** A PASS/MISS line for the report. `ok` is computed from `value` and `limit` by `op`. */
export function target(scenario, name, value, op, limit, detail = '') {
  const pass = Number.isFinite(value) && (op === '>=' ? value >= limit : value <= limit);
  return { scenario, name, value, op, limit, pass, detail };
}

/** Races a promise against a timer. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
