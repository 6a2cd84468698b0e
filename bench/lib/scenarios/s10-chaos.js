/**
 * S10: chaos, the long version of test/e2e/rolling-restart.test.ts. Three tunnel-server replicas
 * (one data directory, copied) behind Debian's haproxy (round robin, /readyz checks on the admin
 * ports, connect retries), two agents that know only the balancer, and users opening a new TLS
 * connection through the tunnel for every request (`GET /small`, two at a time) the whole time.
 * Each cycle (--quick 1, full 3): a rolling restart of the servers, a rolling restart of the
 * agents, and a replica killed with SIGKILL then started again. Reported per phase: requests,
 * failures, p50/p99/max latency, and for the kill the time until every agent is back on the
 * restarted replica. Targets: no failed request in the rolling restarts; every agent back on a
 * killed replica within 5 s of its restart.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { HttpConn } from '../client.js';
import { fmtSummary, sleep, summary, target } from '../harness.js';
import { adopt, freePort, startChild, waitUntil } from '../procs.js';
import { clientBin, createTokenFile, startTunnelServer } from '../tunnel.js';

export const id = 'S10';
export const title = 'S10 chaos: replicas and agents restarted and killed under load';
export const hasRaw = false;
const HAPROXY = '/usr/sbin/haproxy';
const REPLICAS = 3;
const DRAIN_DELAY_MS = 800;

async function getJson(url) {
  return (await fetch(url)).json();
}

export async function run(ctx) {
  const out = { id, title, perPath: {}, tables: [], targets: [], chart: [], notes: [] };
  if (!fs.existsSync(HAPROXY)) {
    out.notes.push(`skipped: ${HAPROXY} is missing (apt-get install haproxy)`);
    return out;
  }
  const cycles = ctx.opts.quick ? 1 : 3;
  const replicas = [];
  const agents = [];
  let haproxy;
  const startReplica = async (i, generation, ports = {}) => {
    const name = `chaos-r${i}`;
    if (i > 0 && !fs.existsSync(path.join(ctx.dir, `${name}-data`))) {
      fs.cpSync(path.join(ctx.dir, 'chaos-r0-data'), path.join(ctx.dir, `${name}-data`), { recursive: true });
    }
    const serverId = `r${i}-${generation}`;
    const server = await startTunnelServer({
      dir: ctx.dir,
      name,
      ...ports,
      extraArgs: [
        ...['--server-id', serverId, '--server-count', String(REPLICAS)],
        ...['--drain-delay-ms', String(DRAIN_DELAY_MS), '--agent-wait-ms', '5s'],
      ],
    });
    return { ...server, serverId };
  };
  try {
    for (let i = 0; i < REPLICAS; i++) replicas.push(await startReplica(i, 0));
    const lbPort = await freePort();
    const config = [
      'global',
      '  maxconn 4096',
      'defaults',
      '  mode tcp',
      '  timeout connect 2s',
      '  timeout client 1h',
      '  timeout server 1h',
      '  retries 3',
      '  option redispatch',
      'frontend public',
      `  bind 127.0.0.1:${lbPort}`,
      '  default_backend replicas',
      'backend replicas',
      '  balance roundrobin',
      '  option httpchk',
      '  http-check send meth GET uri /readyz',
      '  default-server inter 200ms fall 2 rise 1',
      ...replicas.map((r, i) => `  server r${i} 127.0.0.1:${r.port} check port ${r.adminPort}`),
      '',
    ].join('\n');
    const configFile = path.join(ctx.dir, 'haproxy.cfg');
    fs.writeFileSync(configFile, config);
    haproxy = spawn(HAPROXY, ['-db', '-f', configFile], { stdio: ['ignore', 'ignore', 'inherit'] });
    adopt('haproxy', haproxy);
    await waitUntil(
      'haproxy',
      async () => (await fetch(`http://127.0.0.1:${replicas[0].adminPort}/readyz`)).ok,
    );
    await sleep(300);

    const tokenFile = await createTokenFile(replicas[0]);
    const startAgentProcess = (n) =>
      startChild(`chaos-agent-${n}`, process.execPath, [
        clientBin(replicas[0].root),
        ...['--server', `wss://127.0.0.1:${lbPort}/connect`, '--ca-file', replicas[0].caFile],
        ...['--token-file', tokenFile, '--route', `apiserver=127.0.0.1:${ctx.upstream.port}`],
        ...['--health-listen', 'off', '--log-level', 'warn', '--agent-id', `chaos-agent-${n}`],
        ...['--drain-timeout-ms', '2000'],
      ]);
    for (let n = 0; n < 2; n++) agents.push(startAgentProcess(n));
    /** Every agent holds a session to every replica: each replica's /status lists both. */
    const settled = async (timeoutMs = 20_000) =>
      waitUntil(
        'every agent on every replica',
        async () => {
          for (const r of replicas) {
            const ids = (await getJson(`http://127.0.0.1:${r.adminPort}/status`)).agents.map(
              (a) => a.agentId,
            );
            for (let n = 0; n < agents.length; n++) if (!ids.includes(`chaos-agent-${n}`)) return false;
          }
          return true;
        },
        timeoutMs,
        20,
      );
    await settled();

    // Users: a new TLS connection through the balancer for every request, two at a time.
    const requests = [];
    let running = true;
    const user = async () => {
      for (let i = 0; i < 1_000_000 && running; i++) {
        const startedAt = performance.now();
        let conn;
        try {
          conn = await HttpConn.open(lbPort, ctx.ca);
          await conn.request();
          requests.push({ startedAt, ms: performance.now() - startedAt, ok: true });
        } catch (err) {
          requests.push({
            startedAt,
            ms: performance.now() - startedAt,
            ok: false,
            err: String(err.message),
          });
        } finally {
          conn?.close();
        }
      }
    };
    const users = [user(), user()];
    const rows = [];
    const phase = async (name, fn) => {
      const from = requests.length;
      const startedAt = performance.now();
      const extra = await fn();
      await sleep(500);
      const done = requests.slice(from);
      const failed = done.filter((r) => !r.ok);
      const lat = summary(done.map((r) => r.ms));
      ctx.log(
        `${id} ${name}: ${done.length} requests, ${failed.length} failed${extra ? `; ${extra.text}` : ''}`,
      );
      if (failed.length > 0) ctx.log(`${id}   first failure: ${failed[0].err}`);
      rows.push([name, String(done.length), String(failed.length), fmtSummary(lat, 1), extra?.text ?? '']);
      out.perPath[name] = {
        requests: done.length,
        failed: failed.length,
        seconds: (performance.now() - startedAt) / 1000,
        ...extra,
      };
      return { failed: failed.length, extra };
    };
    let generation = 0;
    for (let cycle = 1; cycle <= cycles; cycle++) {
      generation++;
      const servers = await phase(`cycle ${cycle}: rolling restart of ${REPLICAS} servers`, async () => {
        for (let i = 0; i < REPLICAS; i++) {
          const { port, adminPort } = replicas[i];
          await replicas[i].child.stop(10_000);
          replicas[i] = await startReplica(i, generation, { port, adminPort });
          await settled();
        }
      });
      out.targets.push(
        target(id, `cycle ${cycle}: failed requests, rolling restart of servers`, servers.failed, '<=', 0),
      );
      const agentsPhase = await phase(`cycle ${cycle}: rolling restart of 2 agents`, async () => {
        for (let n = 0; n < agents.length; n++) {
          await agents[n].stop(10_000);
          agents[n] = startAgentProcess(n);
          await settled();
        }
      });
      out.targets.push(
        target(id, `cycle ${cycle}: failed requests, rolling restart of agents`, agentsPhase.failed, '<=', 0),
      );
      generation++;
      const kill = await phase(`cycle ${cycle}: SIGKILL of a replica`, async () => {
        const victim = 1 + (cycle % (REPLICAS - 1));
        const { port, adminPort } = replicas[victim];
        replicas[victim].child.proc.kill('SIGKILL');
        await replicas[victim].child.exited;
        await sleep(1_000);
        replicas[victim] = await startReplica(victim, generation, { port, adminPort });
        const restartedAt = performance.now();
        await settled();
        const rejoinMs = Math.round(performance.now() - restartedAt);
        return { rejoinMs, text: `every agent back ${rejoinMs} ms after its restart` };
      });
      out.targets.push(
        target(
          id,
          `cycle ${cycle}: every agent back on a killed replica`,
          kill.extra.rejoinMs,
          '<=',
          5_000,
          'ms after its restart',
        ),
      );
    }
    running = false;
    await Promise.all(users);
    out.tables.push({
      title: `S10 ${REPLICAS} replicas behind haproxy, 2 agents, a new TLS connection per request (GET /small, 2 users)`,
      columns: ['phase', 'requests', 'failed', 'latency ms (median [min..max])', ''],
      rows,
    });
    out.notes.push(
      'A killed replica may fail the requests open on it when it dies; the rolling restarts may fail none.',
    );
    return out;
  } finally {
    for (const a of agents) await a.stop(3_000);
    for (const r of replicas) await r.child.stop(3_000);
    if (haproxy && haproxy.exitCode === null) haproxy.kill('SIGKILL');
  }
}
