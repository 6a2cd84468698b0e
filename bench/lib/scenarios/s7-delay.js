/**
 * S7: a 40 ms round trip between agent and server. No netem here (no sch_netem in this kernel),
 * so a Node delaying relay (bench/lib/relay.js --delay-ms 20: every chunk held 20 ms each way,
 * order kept) sits between tunnel-client and tunnel-server, and between ssh and sshd for ssh -R.
 * `delay-relay` (client → delay relay → upstream) shows what the relay alone allows: it is not
 * the bottleneck when it carries far more than the paths behind it.
 * Target: one tunnel stream ≥ 100 MB/s (window auto-tuning); ssh -R is held near 50 MB/s by its
 * 2 MiB channel window.
 */
import { MiB, fmtSummary, interleave, ratioSummary, series, summary, target } from '../harness.js';
import { startRelay } from '../paths.js';
import { SSH_CIPHERS, ensureSshd, startSshReverse, startSshd } from '../ssh.js';
import { startTunnel } from '../tunnel.js';
import { bulkOnce, errorsOf } from './common.js';

export const id = 'S7';
export const title = 'S7 40 ms round trip between agent and server';
const DELAY_MS = 20;

async function startDelayedPaths(ctx) {
  const { upstream } = ctx;
  const paths = {};
  const stops = [];
  const dr = await startRelay('delay-relay', upstream.port, DELAY_MS);
  paths['delay-relay'] = { name: 'delay-relay', port: dr.port, roles: { relay: { pid: dr.child.pid } } };
  stops.push(() => dr.child.stop());
  for (const tunnelName of ['tunnel', 'tunnel-b'].filter((p) => ctx.pathNames.includes(p))) {
    let relay;
    const t = await startTunnel({
      dir: ctx.dir,
      name: `s7-${tunnelName}`,
      upstreamPort: upstream.port,
      profileDir: ctx.profileDir,
      root: tunnelName === 'tunnel' ? undefined : ctx.opts.tunnelB,
      beforeAgent: async (serverPort) => {
        relay = await startRelay('delay-tunnel', serverPort, DELAY_MS);
        return relay.port;
      },
    });
    paths[`${tunnelName}-delay`] = {
      name: `${tunnelName}-delay`,
      port: t.port,
      roles: {
        server: { pid: t.server.child.pid },
        agent: { pid: t.agent.pid },
        'delay-relay': { pid: relay.child.pid },
      },
    };
    stops.push(
      () => t.stop(),
      () => relay.child.stop(),
    );
  }
  for (const [name, cipher] of Object.entries(SSH_CIPHERS)) {
    if (!ctx.pathNames.includes(name) || (ctx.opts.quick && name !== 'ssh-aes')) continue;
    if (!ctx.sshd) {
      ensureSshd(ctx.log);
      ctx.sshd = await startSshd(ctx.dir);
      stops.push(() => ctx.sshd.child.stop());
    }
    const relay = await startRelay(`delay-${name}`, ctx.sshd.port, DELAY_MS);
    const ssh = await startSshReverse({
      name: `${name}-delay`,
      sshdPort: ctx.sshd.port,
      viaPort: relay.port,
      keyFile: ctx.sshd.keyFile,
      cipher,
      upstreamPort: upstream.port,
    });
    paths[`${name}-delay`] = {
      name: `${name}-delay`,
      port: ssh.port,
      roles: {
        sshd: { pid: ctx.sshd.child.pid, withChildren: true },
        ssh: { pid: ssh.child.pid },
        'delay-relay': { pid: relay.child.pid },
      },
    };
    stops.unshift(
      () => ssh.child.stop(),
      () => relay.child.stop(),
    );
  }
  return {
    paths,
    async stop() {
      for (const s of stops) await s();
    },
  };
}

export async function run(ctx) {
  const bytes = ctx.opts.quick ? 64 * MiB : 256 * MiB;
  const out = { id, title, bytes, directions: {}, tables: [], targets: [], chart: [], notes: [] };
  const started = await startDelayedPaths(ctx);
  try {
    const names = Object.keys(started.paths);
    for (const direction of ctx.opts.directions) {
      ctx.log(`${id} ${direction}: ${bytes / MiB} MiB per transfer with ${2 * DELAY_MS} ms round trip`);
      const results = await interleave(
        ctx,
        names,
        ctx.opts.reps,
        (p) => bulkOnce(ctx, started.paths[p], direction, bytes),
        { warmup: (p) => bulkOnce(ctx, started.paths[p], direction, ctx.opts.quick ? 8 * MiB : 16 * MiB) },
      );
      const mbps = Object.fromEntries(names.map((p) => [p, series(results[p], 'gbps').map((x) => x * 1000)]));
      const perPath = {};
      const rows = [];
      for (const p of names) {
        perPath[p] = {
          mbps: summary(mbps[p]),
          vsSshAes: mbps['ssh-aes-delay'] ? ratioSummary(mbps[p], mbps['ssh-aes-delay']) : undefined,
          errors: errorsOf(results[p]),
        };
        rows.push([p, fmtSummary(perPath[p].mbps, 0), fmtSummary(perPath[p].vsSshAes)]);
      }
      out.directions[direction] = perPath;
      out.tables.push({
        title: `S7 ${direction === 'down' ? 'download' : 'upload'}, one stream, ${bytes / MiB} MiB, ${2 * DELAY_MS} ms round trip, MB/s (10^6 B/s)`,
        columns: ['path', 'MB/s', '÷ ssh -R aes128-gcm'],
        rows,
      });
      out.chart.push({
        title: `S7 ${direction}, 40 ms RTT: MB/s`,
        bars: names.map((p) => ({ path: p, s: perPath[p].mbps })),
        unit: 'MB/s',
        reference: 100,
      });
      const t = perPath['tunnel-delay'];
      if (t) {
        out.targets.push(
          target(
            id,
            `${direction}: one tunnel stream ≥ 100 MB/s at 40 ms RTT`,
            t.mbps.median,
            '>=',
            100,
            `${fmtSummary(t.mbps, 0)} MB/s`,
          ),
        );
      }
    }
  } finally {
    await started.stop();
    if (ctx.sshd && !ctx.sshd.child.alive) ctx.sshd = undefined;
  }
  return out;
}
