#!/usr/bin/env node
/**
 * Long fuzz run of every parser a peer can reach (bench/lib/fuzz-targets.js): a coverage-guided
 * phase, then millions of mutations of the grown corpus. Writes a Markdown report, and each
 * failing input (hex) under bench/results/fuzz-crashes/. Exit code 1 when anything failed.
 *
 *   npm run bench:fuzz -- [--target all|<name>] [--cases N] [--guided N] [--seconds N] [--seed N]
 *                         [--report bench/results/fuzz-<date>.md]
 *
 * --cases: fast-phase cases per target (default 1,000,000); --guided: coverage-guided cases per
 * target (default 20,000); --seconds: the most one target may take (default 300).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fuzzTarget } from './lib/fuzz-engine.js';
import { FUZZ_TARGETS } from './lib/fuzz-targets.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    target: { type: 'string', default: 'all' },
    cases: { type: 'string', default: '1000000' },
    guided: { type: 'string', default: '20000' },
    seconds: { type: 'string', default: '300' },
    seed: { type: 'string', default: '1' },
    report: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(
    `usage: node bench/fuzz.js [--target all|${Object.keys(FUZZ_TARGETS).join('|')}] [--cases N] [--guided N] [--seconds N] [--seed N] [--report FILE]\n`,
  );
  process.exit(0);
}
const names = values.target === 'all' ? Object.keys(FUZZ_TARGETS) : values.target.split(',');
for (const name of names) {
  if (!FUZZ_TARGETS[name]) {
    process.stderr.write(`fuzz: unknown target ${name}\n`);
    process.exit(2);
  }
}

const rows = [];
let failed = 0;
for (const name of names) {
  const result = await fuzzTarget(FUZZ_TARGETS[name], {
    seed: Number(values.seed),
    cases: Number(values.cases),
    guidedCases: Number(values.guided),
    seconds: Number(values.seconds),
    onProgress: (p) =>
      process.stderr.write(`  ${name} ${p.phase}: ${p.done} cases, corpus ${p.corpus}, blocks ${p.blocks}\n`),
  });
  failed += result.failures.length;
  for (const [i, f] of result.failures.entries()) {
    const dir = path.join(HERE, 'results/fuzz-crashes');
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      path.join(dir, `${name}-seed${values.seed}-${i}.hex`),
      `${f.reason}\n${f.input.toString('hex')}\n`,
    );
  }
  const line = `${name}: ${result.cases} cases (${result.guidedCases} guided), corpus ${result.corpus}, ${result.blocks} blocks, ${Math.round(result.casesPerSecond)}/s, slowest ${result.slowestMs.toFixed(1)} ms, ${result.failures.length} failures`;
  process.stdout.write(`${line}\n`);
  for (const f of result.failures.slice(0, 3)) process.stdout.write(`  failure: ${f.reason}\n`);
  rows.push({ name, ...result });
}

if (values.report) {
  const total = rows.reduce((n, r) => n + r.cases, 0);
  const md = [
    `# Fuzz run, ${new Date().toISOString().slice(0, 10)}`,
    '',
    `\`node bench/fuzz.js --target ${values.target} --cases ${values.cases} --guided ${values.guided} --seconds ${values.seconds} --seed ${values.seed}\`, Node ${process.version}, one process.`,
    '',
    `${total.toLocaleString('en')} cases in all; ${failed} failures.`,
    '',
    '| target | cases | guided | corpus | blocks covered | cases/s | slowest case | failures |',
    '|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.name} | ${r.cases.toLocaleString('en')} | ${r.guidedCases.toLocaleString('en')} | ${r.corpus} | ${r.blocks} | ${Math.round(r.casesPerSecond).toLocaleString('en')} | ${r.slowestMs.toFixed(1)} ms | ${r.failures.length} |`,
    ),
    '',
  ].join('\n');
  writeFileSync(values.report, md);
}
process.exit(failed > 0 ? 1 : 0);
