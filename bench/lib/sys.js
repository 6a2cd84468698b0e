/**
 * What the kernel says about processes and the machine, from /proc: CPU time per process (and
 * its descendants), resident memory, the machine's busy time. Linux only, like the bench.
 */
import fs from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat and /proc/stat (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

function readStat(pid) {
  try {
    const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(fields[1]), utime: Number(fields[11]), stime: Number(fields[12]) };
  } catch {
    return undefined;
  }
}

/** Every live pid's parent, from one pass over /proc. */
function parentTable() {
  const table = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(entry);
    if (stat) table.set(Number(entry), stat.ppid);
  }
  return table;
}

/** Pids of all live descendants of `pid` (children, grandchildren, …). */
export function descendantsOf(pid, table = parentTable()) {
  const out = [];
  const queue = [pid];
  for (let guard = 0; queue.length > 0 && guard < 100_000; guard++) {
    const parent = queue.shift();
    for (const [child, ppid] of table) {
      if (ppid === parent) {
        out.push(child);
        queue.push(child);
      }
    }
  }
  return out;
}

/** CPU seconds (user + system) used so far by `pid`, plus its descendants when `withChildren`. */
export function cpuSeconds(pid, withChildren = false, table) {
  const pids = withChildren ? [pid, ...descendantsOf(pid, table ?? parentTable())] : [pid];
  let ticks = 0;
  for (const p of pids) {
    const s = readStat(p);
    if (s) ticks += s.utime + s.stime;
  }
  return ticks / TICKS_PER_SECOND;
}

/** Resident set size in bytes (VmRSS), summed with descendants when `withChildren`. */
export function rssBytes(pid, withChildren = false) {
  const pids = withChildren ? [pid, ...descendantsOf(pid)] : [pid];
  let kib = 0;
  for (const p of pids) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'));
      if (m) kib += Number(m[1]);
    } catch {
      // gone
    }
  }
  return kib * 1024;
}

/** Busy CPU seconds of the whole machine so far (all cores; idle and iowait excluded). */
export function machineBusySeconds() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  const v = line.split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  return busy / TICKS_PER_SECOND;
}

/**
 * Snapshot of CPU time for a set of roles ({ role: { pid, withChildren } }) plus the whole
 * machine and everything this bench runs, so a measurement can report CPU per process and how
 * busy the rest of the machine was meanwhile.
 */
export function cpuSnapshot(roles) {
  const table = parentTable();
  const perRole = {};
  for (const [role, r] of Object.entries(roles)) perRole[role] = cpuSeconds(r.pid, r.withChildren, table);
  return {
    at: performance.now(),
    perRole,
    ours: cpuSeconds(process.pid, true, table),
    machine: machineBusySeconds(),
  };
}

/** CPU seconds per role between two snapshots, and the cores other processes used meanwhile. */
export function cpuDelta(a, b) {
  const perRole = {};
  for (const role of Object.keys(a.perRole)) perRole[role] = Math.max(0, b.perRole[role] - a.perRole[role]);
  const seconds = (b.at - a.at) / 1000;
  const other = b.machine - a.machine - (b.ours - a.ours);
  return { perRole, otherCores: seconds > 0 ? Math.max(0, other / seconds) : 0 };
}

export function machineInfo() {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1] ?? 'unknown';
  let kernel = 'unknown';
  try {
    kernel = fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    // not Linux
  }
  return { cpuModel: model, kernel };
}
