#!/usr/bin/env node
/**
 * End-to-end benchmark of cluster-tunnel against the direct path, one and two plain Node relays
 * and OpenSSH `ssh -R`, all on 127.0.0.1 and all measured in the same run, interleaved
 * (A B C … A B C …), so that every figure is a ratio taken side by side on this machine.
 * S1, S2 and S5 measure twice: TLS end to end (the tunnel in SNI passthrough) and raw TCP (the
 * tunnel's TCP route), each against the other paths carrying the same bytes (--raw).
 *
 *   npm run bench                  the full suite (S1–S7), ≥ 5 rounds
 *   npm run bench -- --quick       a smoke version (under 3 minutes)
 *   npm run bench -- --only S1,S3  some scenarios
 *   npm run bench -- --only S1 --profile   the tunnel path only, server and agent under --cpu-prof
 *
 * Results: bench/results/<date>.json, .md (tables, PASS/MISS per target) and .svg (a chart of
 * the ratios). See bench/README.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { writeUpstreamCert } from './lib/certs.js';
import { GiB, MiB, summary } from './lib/harness.js';
import { ALL_PATHS, PATH_NOTES, RAW_PATH_NOTES, startPaths } from './lib/paths.js';
import { cleanup, makeTempDir, startChild } from './lib/procs.js';
import { summarizeProfiles } from './lib/profile.js';
import { writeReport } from './lib/report.js';
import { sshVersion } from './lib/ssh.js';
import { machineInfo } from './lib/sys.js';
import { NO_TCP_ROUTE, SERVER_BIN, profiledPids, supportsTcpRoute } from './lib/tunnel.js';
import * as s1 from './lib/scenarios/s1-bulk.js';
import * as s2 from './lib/scenarios/s2-parallel.js';
import * as s3 from './lib/scenarios/s3-http.js';
import * as s4 from './lib/scenarios/s4-connect.js';
import * as s5 from './lib/scenarios/s5-scale.js';
import * as s6 from './lib/scenarios/s6-slow-reader.js';
import * as s7 from './lib/scenarios/s7-delay.js';
import * as s8 from './lib/scenarios/s8-http-route.js';
import * as s9 from './lib/scenarios/s9-restart.js';
import * as s10 from './lib/scenarios/s10-chaos.js';
import * as s11 from './lib/scenarios/s11-agent-tls.js';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const SCENARIOS = [s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11];

const HELP = `usage: node bench/run.js [options]   (npm run bench -- [options])
  --quick            smoke version: smaller sizes, 3 rounds, no settling (< 3 minutes)
  --only <list>      scenarios to run, e.g. S1,S3 (default: all, S1..S11)
  --paths <list>     paths to compare (default: ${ALL_PATHS.join(',')})
  --reps <n>         rounds per scenario (default 5; --quick 3)
  --bytes <n>        bytes per bulk transfer in S1/S2 (suffix K, M, G; default 1G; --quick 64M)
  --raw <which>      S1, S2 and S5 figures: both (default) = TLS passthrough and raw TCP (the
                     tunnel's TCP route, plain TCP to a plain-HTTP upstream); only = raw only;
                     off = TLS passthrough only
  --raw-bytes <n>    bytes per raw-TCP bulk transfer in S1 (default: --bytes; --quick 32M, as
                     raw transfers are faster and the quick run must stay under 3 minutes);
                     S2 moves the same bytes in both modes
  --settle <s>       before each measurement, wait up to this long for the rest of the machine
                     to be quiet (default 1; --quick 0)
  --max-other <c>    a measurement during which other processes used more than c cores is
                     repeated (default 0.5)
  --retries <n>      repeats of a disturbed measurement (default 1; --quick 0); at most one
                     measurement in four of a scenario is repeated
  --direction <d>    bulk directions in S1 and S7: down, up or down,up (default both)
  --profile          run only the tunnel path with tunnel-server and tunnel-client under
                     node --cpu-prof; print and save the top self-time functions
  --out <dir>        where results go (default bench/results)
  --no-write         print only; write no result files
  --help`;

function parseSize(text) {
  const m = /^(\d+(?:\.\d+)?)([KMG]?)i?B?$/i.exec(text);
  if (!m) throw new Error(`not a size: ${text}`);
  const unit = { '': 1, K: 1024, M: MiB, G: GiB }[m[2].toUpperCase()];
  return Math.round(Number(m[1]) * unit);
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      paths: { type: 'string' },
      reps: { type: 'string' },
      bytes: { type: 'string' },
      raw: { type: 'string', default: 'both' },
      'raw-bytes': { type: 'string' },
      settle: { type: 'string' },
      'max-other': { type: 'string', default: '0.5' },
      retries: { type: 'string' },
      profile: { type: 'boolean', default: false },
      'tunnel-b': { type: 'string' },
      direction: { type: 'string' },
      out: { type: 'string', default: path.join(BENCH_DIR, 'results') },
      'no-write': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const quick = values.quick;
  const only = values.only ? values.only.toUpperCase().split(',') : SCENARIOS.map((s) => s.id);
  for (const id of only) if (!SCENARIOS.some((s) => s.id === id)) throw new Error(`unknown scenario ${id}`);
  const paths = values.profile ? ['tunnel'] : values.paths ? values.paths.split(',') : [...ALL_PATHS];
  for (const p of paths) if (!ALL_PATHS.includes(p)) throw new Error(`unknown path ${p}`);
  const tunnelB = values['tunnel-b'] ? path.resolve(values['tunnel-b']) : undefined;
  if (tunnelB) {
    if (!fs.existsSync(path.join(tunnelB, 'packages/server/dist/bin.js')))
      throw new Error(`--tunnel-b: no build in ${tunnelB}`);
    paths.push('tunnel-b');
  }
  if (!['both', 'only', 'off'].includes(values.raw)) throw new Error('--raw must be both, only or off');
  const reps = Number(values.reps ?? (quick ? 3 : 5));
  if (!(reps >= 1 && reps <= 50)) throw new Error('--reps must be between 1 and 50');
  const bytes = parseSize(values.bytes ?? (quick ? '64M' : '1G'));
  return Object.freeze({
    quick,
    only,
    paths,
    reps,
    bytes,
    raw: values.raw,
    rawBytes: values['raw-bytes'] ? parseSize(values['raw-bytes']) : quick ? 32 * MiB : bytes,
    settleMs: Number(values.settle ?? (quick ? 0 : 1)) * 1000,
    maxOtherCores: Number(values['max-other']),
    retries: Number(values.retries ?? (quick ? 0 : 1)),
    profile: values.profile,
    tunnelB,
    directions: values.direction ? values.direction.split(',') : ['down', 'up'],
    outDir: values.out,
    write: !values['no-write'],
  });
}

/** Starts bench/lib/upstream.js (`extra` args: the certificate, or --raw); resolves with { child, port }. */
async function startUpstream(name, extra) {
  const child = startChild(name, process.execPath, [path.join(BENCH_DIR, 'lib/upstream.js'), ...extra]);
  const port = Number((await child.waitForLine(/^listening \d+/)).split(' ')[1]);
  return { child, port };
}

/**
 * What the report lists as not measured: the raw tunnel figures when they were asked for (raw on,
 * the tunnel among the paths, a scenario with raw figures selected) but could not run.
 */
function rawGaps(opts, wantRaw, rawSkipped) {
  const asked = opts.paths.includes('tunnel') && SCENARIOS.some((s) => s.hasRaw && opts.only.includes(s.id));
  if (!asked) return [];
  if (!wantRaw) {
    return [
      'Raw-TCP route figures (S1/S2/S5 "for the raw figures, a TCP route"): not measured in this run (--raw off).',
    ];
  }
  if (!rawSkipped.tunnel) return [];
  return [
    `Raw-TCP route figures (S1/S2/S5 "for the raw figures, a TCP route"): the tunnel's raw path did not ` +
      `run: ${rawSkipped.tunnel}. No raw targets are judged; the other paths' raw figures are reported.`,
  ];
}

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  const started = Date.now();
  const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)}s] ${msg}`);
  if (!fs.existsSync(SERVER_BIN))
    throw new Error('packages are not built: run npx tsc -b (npm run bench builds)');
  log(
    `bench: ${opts.quick ? 'quick' : 'full'}; scenarios ${opts.only.join(',')}; paths ${opts.paths.join(',')}; ` +
      `${opts.reps} rounds; ${os.cpus().length} cores; load ${os.loadavg()[0].toFixed(2)}`,
  );
  const dir = makeTempDir('cluster-tunnel-bench-');
  // Kept after the run (not a makeTempDir): the .cpuprofile files are for Chrome DevTools or speedscope.
  const profileDir = opts.profile
    ? fs.mkdtempSync(path.join(os.tmpdir(), 'cluster-tunnel-prof-'))
    : undefined;
  const cert = await writeUpstreamCert(dir);
  const upstream = await startUpstream('upstream', ['--cert', cert.certFile, '--key', cert.keyFile]);
  // The raw paths' own upstream (its own process, so its CPU is its own), when a scenario uses it.
  const wantRaw = opts.raw !== 'off' && SCENARIOS.some((s) => s.hasRaw && opts.only.includes(s.id));
  const rawUpstream = wantRaw ? await startUpstream('raw-upstream', ['--raw']) : undefined;
  // S5 starts its own tunnels; only S1 and S2 use the shared raw twins of the paths.
  const rawTwins = wantRaw && SCENARIOS.some((s) => s.usesRawTwins && opts.only.includes(s.id));
  const ctx = {
    opts,
    log,
    dir,
    profileDir,
    ca: cert.certPem,
    cert,
    upstream,
    rawUpstream,
    pathNames: opts.paths,
    paths: {},
    rawPaths: {},
    rawSkipped: {},
  };
  log('starting paths');
  const started_ = await startPaths(ctx, opts.paths, rawTwins ? rawUpstream : undefined);
  ctx.paths = started_.paths;
  ctx.rawPaths = started_.rawPaths;
  ctx.rawSkipped = started_.rawSkipped;
  ctx.stopPaths = started_.stop;
  // S5 alone still needs to know whether the raw tunnel can run.
  if (wantRaw && !rawTwins && opts.paths.includes('tunnel') && !supportsTcpRoute())
    ctx.rawSkipped.tunnel = NO_TCP_ROUTE;

  const results = [];
  for (const scenario of SCENARIOS) {
    if (!opts.only.includes(scenario.id)) continue;
    const t0 = Date.now();
    log(`== ${scenario.title}`);
    ctx.otherLoad = [];
    try {
      const r = await scenario.run(ctx);
      r.seconds = Math.round((Date.now() - t0) / 1000);
      r.otherCores = summary(ctx.otherLoad);
      results.push(r);
      for (const t of r.targets)
        log(`   ${t.pass ? 'PASS' : 'MISS'} ${t.scenario} ${t.name}: ${t.detail || t.value}`);
    } catch (err) {
      log(`   ${scenario.id} failed: ${err.stack ?? err}`);
      results.push({
        id: scenario.id,
        title: scenario.title,
        failed: String(err.message ?? err),
        targets: [],
      });
    }
  }
  await ctx.stopPaths();

  const meta = {
    date: new Date().toISOString(),
    mode: opts.profile ? 'profile' : opts.quick ? 'quick' : 'full',
    options: { ...opts, outDir: undefined },
    node: process.version,
    cores: os.cpus().length,
    ...machineInfo(),
    openssh: opts.paths.some((p) => p.startsWith('ssh')) ? sshVersion() : undefined,
    loadAverageAtEnd: os.loadavg(),
    seconds: Math.round((Date.now() - started) / 1000),
    paths: Object.fromEntries(opts.paths.map((p) => [p, PATH_NOTES[p]])),
    rawPaths: Object.fromEntries(Object.keys(ctx.rawPaths).map((p) => [p, RAW_PATH_NOTES[p]])),
    rawSkipped: ctx.rawSkipped,
    gaps: rawGaps(opts, wantRaw, ctx.rawSkipped),
  };
  let profile;
  if (profileDir) {
    profile = summarizeProfiles(profileDir, profiledPids);
    console.log(profile.text);
  }
  const files = writeReport({ meta, results, profile, outDir: opts.outDir, write: opts.write });
  for (const f of files) log(`wrote ${path.relative(process.cwd(), f)}`);
  log(`done in ${meta.seconds} s`);
}

main()
  .catch((err) => {
    console.error(`bench failed: ${err.stack ?? err}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
