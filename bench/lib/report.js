/**
 * Writes a run's results: bench/results/<date>.json (everything), <date>.md (PASS/MISS per
 * target, then each scenario's tables) and <date>.svg (horizontal bars of the ratios, min..max
 * whiskers, drawn by hand as SVG text).
 */
import fs from 'node:fs';
import path from 'node:path';
import { fmt, fmtSummary } from './harness.js';

const COLORS = {
  direct: '#7f7f7f',
  relay: '#9ecae1',
  relay2: '#3182bd',
  'ssh-aes': '#fd8d3c',
  'ssh-chacha': '#fdbe85',
  tunnel: '#31a354',
  'tunnel-b': '#a1d99b',
  'delay-relay': '#9ecae1',
  'tunnel-delay': '#31a354',
  'tunnel-b-delay': '#a1d99b',
  'ssh-aes-delay': '#fd8d3c',
  'ssh-chacha-delay': '#fdbe85',
};

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function markdown({ meta, results, profile }) {
  const lines = [];
  const targets = results.flatMap((r) => r.targets ?? []);
  lines.push(`# cluster-tunnel benchmark ${meta.date.slice(0, 10)} (${meta.mode})`, '');
  lines.push(
    `${meta.cores} cores (${meta.cpuModel}), Linux ${meta.kernel}, Node ${meta.node}` +
      (meta.openssh ? `, ${meta.openssh}` : '') +
      `; ${meta.options.reps} rounds per scenario, paths interleaved; run took ${meta.seconds} s; ` +
      `load average at the end ${meta.loadAverageAtEnd.map((x) => x.toFixed(2)).join(' ')}.`,
    '',
    'Every figure is a median over the rounds with [min..max]; ratios are taken within each round ' +
      '(the paths measured back to back), then summarised. GB/s = 10^9 B/s. Every path carries the ' +
      'same TLS session from the bench client (SNI cluster-bench.proxy.localhost) to the same Node ' +
      'HTTPS upstream (ECDSA P-256, TLS 1.3), all on 127.0.0.1; the tunnel routes it by SNI ' +
      '(passthrough). The raw figures (S1, S2, S5, tables and targets marked raw) carry plain TCP ' +
      'instead, the same requests to a plain-HTTP upstream, the tunnel through its TCP route; each ' +
      'is compared only with the other raw paths.',
    '',
  );
  lines.push('## Targets', '', '| | scenario | target | measured (median [min..max]) |', '|---|---|---|---|');
  for (const t of targets) {
    lines.push(
      `| ${t.pass ? 'PASS' : '**MISS**'} | ${t.scenario} | ${t.name} | ${t.detail || fmt(t.value)} |`,
    );
  }
  for (const r of results.filter((x) => x.failed))
    lines.push(`| **FAILED** | ${r.id} | the scenario did not complete | ${esc(r.failed)} |`);
  const passed = targets.filter((t) => t.pass).length;
  lines.push('', `${passed} of ${targets.length} targets met.`, '');
  const gaps = meta.gaps ?? [];
  if (gaps.length) lines.push('## Gaps', '', ...gaps.map((g) => `- ${g}`), '');
  lines.push('## Paths', '', ...Object.entries(meta.paths).map(([p, d]) => `- \`${p}\`: ${d}`), '');
  const rawPaths = Object.entries(meta.rawPaths ?? {});
  if (rawPaths.length) {
    lines.push('Raw TCP (same names, own processes where a path has them):', '');
    lines.push(...rawPaths.map(([p, d]) => `- \`${p}\` (raw): ${d}`));
    for (const [p, why] of Object.entries(meta.rawSkipped ?? {}))
      lines.push(`- \`${p}\` (raw): skipped, ${why}`);
    lines.push('');
  }
  for (const r of results) {
    lines.push(`## ${r.title}${r.seconds !== undefined ? ` (${r.seconds} s)` : ''}`, '');
    if (r.failed) lines.push(`Failed: ${r.failed}`, '');
    if (r.otherCores?.n) {
      lines.push(
        `Other processes on the machine used ${fmtSummary(r.otherCores)} cores during these measurements ` +
          '(median [min..max]; 2 cores in all).',
        '',
      );
    }
    for (const t of r.tables ?? []) {
      lines.push(`**${t.title}**`, '');
      lines.push(`| ${t.columns.join(' | ')} |`, `|${t.columns.map(() => '---').join('|')}|`);
      for (const row of t.rows) lines.push(`| ${row.join(' | ')} |`);
      lines.push('');
    }
    for (const n of r.notes ?? []) lines.push(`- ${n}`);
    if (r.notes?.length) lines.push('');
  }
  const misses = targets.filter((t) => !t.pass);
  lines.push('## Closing note', '');
  if (targets.length === 0)
    lines.push('No targets are judged in this run (they compare the tunnel with other paths).');
  else if (misses.length === 0) lines.push('Every target was met in this run.');
  else {
    lines.push(`${misses.length} target(s) missed in this run:`, '');
    for (const t of misses) lines.push(`- ${t.scenario} ${t.name}: ${t.detail || fmt(t.value)}`);
    lines.push(
      '',
      'bench/README.md ("Findings") explains each miss with its CPU profile and the fix it points to.',
    );
  }
  lines.push('');
  if (profile) lines.push('## CPU profile (tunnel path)', '', profile.text, '');
  return lines.join('\n');
}

/** Horizontal bar panels, one per chart entry of every scenario. */
export function svg({ meta, results }) {
  const panels = results.flatMap((r) => r.chart ?? []);
  const W = 820;
  const LABEL = 130;
  const BAR = 520;
  const ROW = 20;
  const HEAD = 30;
  const GAP = 16;
  let y = 40;
  const parts = [];
  for (const panel of panels) {
    const bars = panel.bars.filter((b) => b.s && Number.isFinite(b.s.median));
    if (bars.length === 0) continue;
    const hi =
      Math.max(panel.reference ?? 0, ...bars.map((b) => Math.max(b.s.max, b.s.median)), 0) * 1.05 || 1;
    const lo = Math.min(0, ...bars.map((b) => Math.min(b.s.min, b.s.median)));
    const x = (v) => LABEL + ((v - lo) / (hi - lo)) * BAR;
    parts.push(`<text x="10" y="${y + 18}" font-weight="bold">${esc(panel.title)}</text>`);
    y += HEAD;
    const top = y;
    for (const b of bars) {
      const color = COLORS[b.path] ?? '#636363';
      const x0 = x(Math.min(0, b.s.median));
      const x1 = x(Math.max(0, b.s.median));
      parts.push(`<text x="${LABEL - 6}" y="${y + 14}" text-anchor="end">${esc(b.path)}</text>`);
      parts.push(
        `<rect x="${x0.toFixed(1)}" y="${y + 3}" width="${Math.max(1, x1 - x0).toFixed(1)}" height="${ROW - 6}" fill="${color}"/>`,
      );
      if (b.s.n > 1) {
        const wy = y + ROW / 2;
        parts.push(
          `<line x1="${x(b.s.min).toFixed(1)}" x2="${x(b.s.max).toFixed(1)}" y1="${wy}" y2="${wy}" stroke="#222" stroke-width="1"/>`,
          `<line x1="${x(b.s.min).toFixed(1)}" x2="${x(b.s.min).toFixed(1)}" y1="${wy - 4}" y2="${wy + 4}" stroke="#222"/>`,
          `<line x1="${x(b.s.max).toFixed(1)}" x2="${x(b.s.max).toFixed(1)}" y1="${wy - 4}" y2="${wy + 4}" stroke="#222"/>`,
        );
      }
      const digits = Math.abs(b.s.median) >= 100 ? 0 : Math.abs(b.s.median) >= 10 ? 1 : 2;
      parts.push(
        `<text x="${(x(Math.max(b.s.max, b.s.median, 0)) + 6).toFixed(1)}" y="${y + 14}">${fmt(b.s.median, digits)}${panel.unit ? ` ${esc(panel.unit)}` : '×'}</text>`,
      );
      y += ROW;
    }
    if (panel.reference !== undefined) {
      const rx = x(panel.reference).toFixed(1);
      parts.push(
        `<line x1="${rx}" x2="${rx}" y1="${top - 2}" y2="${y + 2}" stroke="#d62728" stroke-dasharray="4 3"/>`,
        `<text x="${rx}" y="${y + 14}" text-anchor="middle" fill="#d62728" font-size="10">${fmt(panel.reference, panel.reference >= 10 ? 0 : 1)}</text>`,
      );
      y += 12;
    }
    if (lo < 0) {
      const zx = x(0).toFixed(1);
      parts.push(`<line x1="${zx}" x2="${zx}" y1="${top - 2}" y2="${y + 2}" stroke="#444"/>`);
    }
    y += GAP;
  }
  const H = y + 20;
  const title = `cluster-tunnel vs direct, Node relays and ssh -R — ${meta.date.slice(0, 10)} (${meta.mode}), median with min..max`;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="10" y="22" font-size="14" font-weight="bold">${esc(title)}</text>`,
    ...parts,
    `<text x="10" y="${H - 6}" font-size="10" fill="#555">${esc(`${meta.cores} cores, Node ${meta.node}; dashed line: reference (direct = 1, or the target)`)}</text>`,
    '</svg>',
    '',
  ].join('\n');
}

/** Writes the files (unless `write` is false); returns their paths. */
export function writeReport({ meta, results, profile, outDir, write }) {
  const md = markdown({ meta, results, profile });
  if (!write) {
    console.log(`\n${md}`);
    return [];
  }
  fs.mkdirSync(outDir, { recursive: true });
  const suffix =
    meta.mode === 'full'
      ? ''
      : meta.mode === 'profile'
        ? `-profile-${meta.options.only.join('-')}`
        : `-${meta.mode}`;
  const base = path.join(outDir, `${meta.date.slice(0, 10)}${suffix}`);
  const json = {
    meta,
    targets: results.flatMap((r) => r.targets ?? []),
    gaps: meta.gaps ?? [],
    results,
    profile: profile ? { top: profile.top } : undefined,
  };
  fs.writeFileSync(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
  fs.writeFileSync(`${base}.md`, md);
  const files = [`${base}.json`, `${base}.md`];
  if (meta.mode !== 'profile' && results.some((r) => r.chart?.length)) {
    fs.writeFileSync(`${base}.svg`, svg({ meta, results }));
    files.push(`${base}.svg`);
  }
  return files;
}
