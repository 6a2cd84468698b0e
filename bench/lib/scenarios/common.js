/** Pieces several scenarios share: the processes of a path, one bulk transfer, table helpers. */
import { closeSocket, connectTls, download, upload } from '../client.js';
import { GiB, fmt, fmtSummary, quantile, sleep, summary } from '../harness.js';
import { cpuDelta, cpuSnapshot } from '../sys.js';

/** Every process that carries a path's bytes: the client (this process), the upstream, the middle. */
export function rolesOf(ctx, path) {
  return {
    client: { pid: process.pid, withChildren: false },
    upstream: { pid: ctx.upstream.child.pid, withChildren: false },
    ...path.roles,
  };
}

/**
 * One bulk transfer of `bytes` in `direction` ('down': upstream → user, 'up': user → upstream)
 * over a fresh connection (set up before the clock starts). Returns { ms, gbps, cpuPerGiB }.
 */
export async function bulkOnce(ctx, path, direction, bytes) {
  const socket = await connectTls(path.port, ctx.ca);
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
