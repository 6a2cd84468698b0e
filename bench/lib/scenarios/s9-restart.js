/**
 * S9: a server restarted under 100 connected agents (real TunnelAgents, one process:
 * bench/lib/agent-fleet.js), once drained (SIGTERM: GoAway, the agents re-dial at once, jittered)
 * and once killed (SIGKILL: the agents' sessions just end, and they back off with jitter while
 * the server is down). The server comes back on the same port and data directory. Measured from
 * the moment it answers /healthz, on the server's own gauge of registered agents (sampled every
 * 50 ms): the time until every agent is back, when half and 90% were, the most that came back in
 * any 100 ms, and handshake timeouts on the server (a reconnect spike that trips them fails).
 * Targets: all back within 10 s, no handshake timeout.
 */
import { fork } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sleep, target } from '../harness.js';
import { adopt, cleanEnv } from '../procs.js';
import { startTunnelServer } from '../tunnel.js';

export const id = 'S9';
export const title = 'S9 100 agents through a server restart';
export const hasRaw = false;
const LIB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const AGENTS = 100;
const ALL_BACK_MS = 10_000;

async function metric(server, name, labels) {
  const text = await (await fetch(`http://127.0.0.1:${server.adminPort}/metrics`)).text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    if (labels && !line.includes(labels)) continue;
    total += Number(line.split(' ').at(-1));
  }
  return total;
}

export async function run(ctx) {
  const out = { id, title, perPath: {}, tables: [], targets: [], chart: [], notes: [] };
  const start = (fixed) =>
    startTunnelServer({ dir: ctx.dir, name: 'restart', ...fixed, extraArgs: ['--agent-wait-ms', '0'] });
  let server = await start({});
  let fleet;
  try {
    const rows = [];
    for (const mode of ['drained (SIGTERM)', 'killed (SIGKILL)']) {
      // A fresh fleet for each restart: agents whose sessions had been up for long, as in
      // production (a fleet reused across restarts would still carry the last one's backoff).
      await stopFleet(fleet);
      fleet = fork(
        path.join(LIB, 'agent-fleet.js'),
        ['--port', String(server.port), '--data-dir', server.dataDir, '--count', String(AGENTS)],
        { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], env: cleanEnv() },
      );
      adopt('agent-fleet', fleet);
      const ready = await new Promise((resolve, reject) => {
        fleet.once('message', resolve);
        fleet.once('exit', (code) => reject(new Error(`agent-fleet exited with ${code}`)));
      });
      if (ready.ok !== AGENTS) throw new Error(`only ${ready.ok} of ${AGENTS} agents registered`);
      ctx.log(`${id} ${AGENTS} agents registered in ${(ready.ms / 1000).toFixed(1)} s`);
      const { port, adminPort } = server;
      if (mode.startsWith('killed')) {
        server.child.proc.kill('SIGKILL');
        await server.child.exited;
      } else {
        await server.child.stop(10_000);
      }
      // Down for a moment, as a restarting pod is.
      await sleep(500);
      server = await start({ port, adminPort });
      const upAt = performance.now();
      // The server's own count of registered agents, sampled every 50 ms: when each came back as
      // the server saw it (the agents' process may deliver its events in batches).
      const samples = [];
      for (let n = 0; n < 600; n++) {
        const connected = await metric(server, 'tunnel_agents_connected');
        samples.push({ ms: Math.round(performance.now() - upAt), connected });
        if (connected >= AGENTS) break;
        await sleep(50);
      }
      const allBack = samples.at(-1).connected >= AGENTS ? samples.at(-1).ms : Infinity;
      const firstAt = (k) => samples.find((x) => x.connected >= k)?.ms ?? Infinity;
      // The most agents that came back within any 100 ms (two samples apart).
      let peak = 0;
      for (let k = 2; k < samples.length; k++)
        peak = Math.max(peak, samples[k].connected - samples[k - 2].connected);
      if (process.env.S9_DEBUG) ctx.log(JSON.stringify(samples));
      const times = { p50: firstAt(AGENTS / 2), p90: firstAt(AGENTS * 0.9) };
      const timeouts = await metric(server, 'tunnel_connections_total', 'outcome="timeout"');
      ctx.log(`${id} ${mode}: all ${AGENTS} back ${allBack} ms after the restart; at most ${peak} in 100 ms`);
      out.perPath[mode] = {
        allBackMs: allBack,
        p50: times.p50,
        p90: times.p90,
        peak,
        timeouts,
      };
      rows.push([
        mode,
        String(allBack),
        String(times.p50),
        String(times.p90),
        String(peak),
        String(timeouts),
      ]);
      out.targets.push(
        target(
          id,
          `${mode}: every agent back`,
          allBack,
          '<=',
          ALL_BACK_MS,
          'ms after the server answers /healthz',
        ),
      );
      out.targets.push(target(id, `${mode}: handshake timeouts`, timeouts, '<=', 0));
    }
    out.tables.push({
      title: `S9 ${AGENTS} agents, one server restarted on its port: registrations after it answers /healthz (ms)`,
      columns: ['restart', 'all back', 'p50', 'p90', 'most in 100 ms', 'handshake timeouts'],
      rows,
    });
    return out;
  } finally {
    await stopFleet(fleet);
    await server.child.stop();
  }
}

async function stopFleet(fleet) {
  if (fleet === undefined || fleet.exitCode !== null) return;
  fleet.removeAllListeners('exit');
  fleet.send({ type: 'close' });
  await Promise.race([new Promise((r) => fleet.once('exit', r)), sleep(3000)]);
  if (fleet.exitCode === null) fleet.kill('SIGKILL');
}
