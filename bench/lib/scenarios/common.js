/**
 * Pieces several scenarios share: the two kinds of figures (TLS passthrough and raw TCP), the
 * processes of a path, one bulk transfer, request loops, table helpers.
 */
import { closeSocket, connectPath, download, upload } from '../client.js';
import { GiB, fmt, fmtSummary, quantile, sleep, summary } from '../harness.js';
import { cpuDelta, cpuSnapshot } from '../sys.js';

/**
 * The kinds of figures S1, S2 and S5 measure, as `--raw` selects them: `passthrough` (one TLS
 * session end to end, the tunnel routing by SNI) and `raw` (plain TCP bytes to the raw upstream,
 * the tunnel's TCP route). Each: { mode, heading and label (for table titles), names (the paths
 * that run), paths, bytes (per S1 bulk transfer: --bytes or --raw-bytes) }.
 */
export function pathModes(ctx) {
  const modes = [];
  if (ctx.opts.raw !== 'only') {
    modes.push({
      mode: 'passthrough',
      heading: 'TLS passthrough',
      label: 'TLS end to end; tunnel: SNI passthrough',
      names: ctx.pathNames,
      paths: ctx.paths,
      bytes: ctx.opts.bytes,
    });
  }
  if (ctx.opts.raw !== 'off') {
    modes.push({
      mode: 'raw',
      heading: 'raw TCP',
      label: 'no TLS; tunnel: TCP route',
      names: ctx.pathNames.filter((p) => ctx.rawPaths[p]),
      paths: ctx.rawPaths,
      bytes: ctx.opts.rawBytes,
    });
  }
  return modes;
}

/**
 * Puts a scenario's tables, chart panels and targets in mode order (passthrough, then raw) while
 * keeping the measuring order within a mode, so each kind of figure reads as one block.
 */
export function groupByMode(out) {
  const order = (x) => (x.mode === 'raw' ? 1 : 0);
  for (const key of ['tables', 'chart', 'targets']) out[key].sort((a, b) => order(a) - order(b));
}

/** Notes for a scenario's report on raw paths that could not run (e.g. no --tcp-route yet). */
export function rawSkipNotes(ctx) {
  if (ctx.opts.raw === 'off') return [];
  return Object.entries(ctx.rawSkipped ?? {}).map(
    ([p, why]) => `Raw figures: the \`${p}\` path was skipped: ${why}. The other raw paths ran.`,
  );
}

/** Every process that carries a path's bytes: the client (this process), the upstream, the middle. */
export function rolesOf(ctx, path) {
  const upstream = path.raw ? ctx.rawUpstream : ctx.upstream;
  return {
    client: { pid: process.pid, withChildren: false },
    upstream: { pid: upstream.child.pid, withChildren: false },
    ...path.roles,
  };
}

/** A connection through `path`, open end to end: TLS with the upstream, or raw TCP (see connectRaw). */
export function openOn(ctx, path) {
  return connectPath(path.port, { raw: path.raw, ca: ctx.ca });
}

/**
 * One bulk transfer of `bytes` in `direction` ('down': upstream → user, 'up': user → upstream)
 * over a fresh connection (set up before the clock starts). Returns { ms, gbps, cpuPerGiB }.
 */
export async function bulkOnce(ctx, path, direction, bytes) {
  const socket = await openOn(ctx, path);
  try {
    const roles = rolesOf(ctx, path);
    const before = cpuSnapshot(roles);
    const ms = await (direction === 'down' ? download(socket, bytes) : upload(socket, bytes));
    const cpu = cpuDelta(before, cpuSnapshot(roles));
    const cpuPerGiB = {};
    for (const [role, s] of Object.entries(cpu.perRole)) cpuPerGiB[role] = (s * GiB) / bytes;
    return { ms, gbps: bytes / ms / 1e6, cpuPerGiB };
  } finally {
    await closeSocket(socket);
  }
}

/** Median CPU seconds per GiB per role over the rounds, as "client 0.52, upstream 0.61, …". */
export function cpuColumn(results) {
  const roles = new Set();
  for (const r of results) if (r.cpuPerGiB) for (const k of Object.keys(r.cpuPerGiB)) roles.add(k);
  const parts = [];
  const medians = {};
  for (const role of roles) {
    const s = summary(results.map((r) => r.cpuPerGiB?.[role] ?? NaN));
    medians[role] = s.median;
    parts.push(`${role} ${fmt(s.median, 2)}`);
  }
  return { text: parts.join(', '), medians };
}

export function row(...cells) {
  return cells.map((c) => (typeof c === 'string' ? c : fmtSummary(c)));
}

export function errorsOf(results) {
  return results.filter((r) => r.error !== undefined).map((r) => r.error);
}

/**
 * Closed loop on open HttpConns: each sends its next request as soon as the last is answered.
 * Latencies are kept after a short warm-up, for `seconds`. Returns { rps, p50, p99 }.
 */
export async function closedLoop(conns, seconds) {
  const lat = [];
  let measuring = false;
  let stop = false;
  const loop = async (c) => {
    while (!stop) {
      const ms = await c.request();
      if (measuring) lat.push(ms);
    }
  };
  const loops = conns.map(loop);
  // A failing connection ends the run at once instead of after `seconds`.
  const failed = Promise.all(loops).then(
    () => undefined,
    (err) => err,
  );
  await Promise.race([sleep(Math.min(500, seconds * 250)), failed]);
  measuring = true;
  const t0 = performance.now();
  const err = await Promise.race([sleep(seconds * 1000), failed]);
  measuring = false;
  const elapsed = (performance.now() - t0) / 1000;
  stop = true;
  const err2 = err ?? (await failed);
  if (err2) throw err2;
  return { rps: lat.length / elapsed, p50: quantile(lat, 0.5), p99: quantile(lat, 0.99) };
}

/**
 * One HttpConn from `open`, warmed with up to 200 requests, then `count` requests in a row:
 * the latency of each, as { p50, p99 } in ms (concurrency 1).
 */
export async function sequentialRequests(open, count) {
  const conn = await open();
  try {
    for (let i = 0; i < Math.min(200, count); i++) await conn.request();
    const lat = new Float64Array(count);
    for (let i = 0; i < count; i++) lat[i] = await conn.request();
    return { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99) };
  } finally {
    conn.close();
  }
}

/** `connections` HttpConns from `open` in a closed loop for `seconds` (closedLoop's figures). */
export async function concurrentRequests(open, connections, seconds) {
  const conns = await Promise.all(Array.from({ length: connections }, () => open()));
  try {
    return await closedLoop(conns, seconds);
  } finally {
    for (const c of conns) c.close();
  }
}
