/**
 * Summarises the .cpuprofile files node --cpu-prof wrote (one per process): self time per
 * function and per source file, top first, so a miss can be explained by where the CPU went.
 */
import fs from 'node:fs';
import path from 'node:path';

const TOP = 15;

function selfTimes(profile) {
  const selfUs = new Map();
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    const d = deltas[i + 1] ?? deltas[i] ?? 0;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, d));
  }
  return selfUs;
}

function shortUrl(url) {
  if (!url) return '';
  const m = /\/(packages\/[^/]+\/dist\/.+|node_modules\/.+)$/.exec(url);
  if (m) return m[1];
  return url.replace(/^file:\/\//, '').replace(/^node:/, 'node:');
}

/** Self time per function and per source file, the `top` largest of each. */
export function summarizeProfile(profile, top = TOP) {
  const selfUs = selfTimes(profile);
  const fns = new Map();
  const files = new Map();
  let totalUs = 0;
  let idleUs = 0;
  for (const node of profile.nodes) {
    const us = selfUs.get(node.id) ?? 0;
    if (us === 0) continue;
    totalUs += us;
    const cf = node.callFrame;
    if (cf.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    const file = shortUrl(cf.url) || cf.functionName;
    const key = `${cf.functionName || '(anonymous)'} ${file}${cf.url ? `:${cf.lineNumber + 1}` : ''}`;
    fns.set(key, (fns.get(key) ?? 0) + us);
    files.set(file, (files.get(file) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const rank = (m) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, ms: us / 1000, pctBusy: (100 * us) / Math.max(1, busyUs) }));
  return {
    totalMs: totalUs / 1000,
    busyMs: busyUs / 1000,
    idleMs: idleUs / 1000,
    functions: rank(fns),
    files: rank(files),
  };
}

/** Reads every .cpuprofile in `dir`; `pidRoles` maps a pid to a process name for the headings. */
export function summarizeProfiles(dir, pidRoles) {
  const top = [];
  const lines = [];
  for (const file of fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .sort()) {
    const pid = Number(/^CPU\.\d+\.\d+\.(\d+)\./.exec(file)?.[1]);
    const role = pidRoles[pid] ?? `pid ${pid}`;
    const s = summarizeProfile(JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')));
    top.push({ role, file: path.join(dir, file), ...s });
    lines.push(
      `### ${role} (${path.join(dir, file)})`,
      '',
      `busy ${s.busyMs.toFixed(0)} ms of ${s.totalMs.toFixed(0)} ms profiled`,
      '',
      '| self ms | % of busy | function |',
      '|---:|---:|---|',
      ...s.functions.map((f) => `| ${f.ms.toFixed(0)} | ${f.pctBusy.toFixed(1)} | \`${f.name}\` |`),
      '',
      '| self ms | % of busy | file |',
      '|---:|---:|---|',
      ...s.files.map((f) => `| ${f.ms.toFixed(0)} | ${f.pctBusy.toFixed(1)} | \`${f.name}\` |`),
      '',
    );
  }
  return { top, text: lines.join('\n') };
}
