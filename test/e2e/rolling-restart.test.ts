/**
 * Replicas come and go without users noticing (docs/ARCHITECTURE.md, "Many replicas"), tried as
 * an operator would: three real tunnel-server replicas (one data dir, copied) behind Debian's
 * haproxy (round robin, /readyz checks on the admin ports, connect retries), two agents of one
 * cluster that know only the balancer, and kubectl requests back to back through it the whole
 * time. A rolling restart of the servers and one of the agents cost no request; a replica killed
 * with SIGKILL costs only what was open on it, and once it is back every agent holds a session
 * to it within 5 s.
 */
import { cp } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { sharedFixture } from '../helpers/cleanup.js';
import { startFakeApiServer } from '../helpers/fake-apiserver.js';
import { startHaproxy } from '../helpers/haproxy.js';
import { findKubectl, runKubectl } from '../helpers/kubectl.js';
import { pollUntil } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';
import {
  createToken,
  freePort,
  liveServers,
  startAgent,
  startServer,
  tunnelKubeconfig,
  writeTokenFile,
  type CliProcess,
  type ServerHandle,
} from '../helpers/tunnel.js';

const REPLICAS = 3;
/** The balancer marks a draining replica down (2 checks 200 ms apart) well within this. */
const DRAIN_DELAY_MS = 800;
/** Longest a test waits for agents to settle after a change. */
const SETTLE_MS = 15_000;

beforeAll(() => {
  findKubectl(); // fails loudly when kubectl is missing
});

interface Replica {
  id: string;
  port: number;
  adminPort: number;
  dataDir: string;
  server: ServerHandle;
}

interface Request {
  startedAt: number;
  endedAt: number;
  ok: boolean;
  error?: string;
}

/**
 * kubectl requests back to back, two at a time, until stopped: what a user sees while the
 * replicas change. Bounded in count and time.
 */
function startLoad(kubeconfig: string): { requests: Request[]; stop: () => Promise<Request[]> } {
  const requests: Request[] = [];
  let running = true;
  const deadline = Date.now() + 120_000;
  const loop = async (): Promise<void> => {
    for (let i = 0; i < 5_000 && running && Date.now() < deadline; i++) {
      const startedAt = performance.now();
      const r = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: 20_000 });
      const ok = r.code === 0 && r.stdout.includes('u1-web-1');
      requests.push({ startedAt, endedAt: performance.now(), ok, ...(ok ? {} : { error: r.stderr.trim() }) });
    }
  };
  const loops = [loop(), loop()];
  return {
    requests,
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return requests;
    },
  };
}

function summary(what: string, requests: Request[]): string {
  const ms = requests.map((r) => r.endedAt - r.startedAt).sort((a, b) => a - b);
  const failed = requests.filter((r) => !r.ok).length;
  return (
    `${what}: ${requests.length} kubectl requests, ${failed} failed, ` +
    `median ${ms[Math.floor(ms.length / 2)]?.toFixed(0)} ms, slowest ${ms.at(-1)?.toFixed(0)} ms`
  );
}

describe('replicas behind haproxy under continuous kubectl load', () => {
  const fixture = sharedFixture(async (scope) => {
    const api = await startFakeApiServer({ hostnames: ['cluster-u1.proxy.localhost'] });
    api.addPod({ name: 'u1-web-1' });
    const base = tempDir('replicas-');
    const replicas: Replica[] = [];
    const args = (r: Pick<Replica, 'id' | 'adminPort'>): string[] => [
      ...[
        '--server-id',
        r.id,
        '--server-count',
        String(REPLICAS),
        '--admin-listen',
        `127.0.0.1:${r.adminPort}`,
      ],
      ...['--drain-delay-ms', String(DRAIN_DELAY_MS), '--agent-wait-ms', '5s'],
    ];
    // Replicas and agents started later, from a test, live as long as the fixture.
    const start = async (r: Omit<Replica, 'server'>): Promise<Replica> => ({
      ...r,
      server: await scope(() => startServer({ dataDir: r.dataDir, port: r.port, args: args(r) })),
    });
    for (let i = 0; i < REPLICAS; i++) {
      const dataDir = join(base, `r${i}`);
      // One CA, certificate and signing key for all: the others run on copies of the first's.
      if (i > 0) await cp(replicas[0]!.dataDir, dataDir, { recursive: true });
      replicas.push(
        await start({ id: `r${i}-a`, port: await freePort(), adminPort: await freePort(), dataDir }),
      );
    }
    const lb = await startHaproxy(replicas);
    const dir = tempDir();
    const tokenFile = await writeTokenFile(dir, await createToken(replicas[0]!.dataDir, 'u1'));
    const startAgentProcess = (agentId: string): Promise<CliProcess> =>
      scope(() =>
        startAgent(
          {
            // The agents know only the balancer's address (and the replicas' shared CA).
            server: { ...replicas[0]!.server, url: `wss://127.0.0.1:${lb.port}/connect` },
            tokenFile,
            routes: [`apiserver=127.0.0.1:${api.port}`],
            agentId,
          },
          false,
        ),
      );
    const agents = [await startAgentProcess('agent-1'), await startAgentProcess('agent-2')];
    const holdAll = (): Promise<boolean> =>
      pollUntil(
        () => agents.every((a) => replicas.every((r) => liveServers(a).includes(r.id))),
        SETTLE_MS,
        'every agent holding a session to every replica',
        50,
      );
    await holdAll();
    const user = await api.issueClientCert('alice-u1', ['system:masters']);
    const kubeconfig = await tunnelKubeconfig(dir, {
      cluster: 'u1',
      port: lb.port,
      caPem: api.caCertPem,
      certPem: user.certPem,
      keyPem: user.keyPem,
    });
    return { api, replicas, agents, start, startAgentProcess, holdAll, kubeconfig };
  });

  it('a rolling restart of every server replica, one at a time, fails no request', async () => {
    const { replicas, start, holdAll, kubeconfig } = fixture();
    const load = startLoad(kubeconfig);
    for (const [i, r] of replicas.entries()) {
      // SIGTERM: not ready, still serving for the drain delay, then GoAway and exit.
      expect(await r.server.proc.stop(10_000)).toBe(0);
      // A new replica (a new pod: a new id) where the old one was.
      replicas[i] = await start({ ...r, id: `${r.id.split('-')[0]}-b` });
      await holdAll();
    }
    const requests = await load.stop();
    console.log(summary('rolling restart of 3 servers', requests));
    expect(requests.length).toBeGreaterThan(20);
    expect(requests.filter((r) => !r.ok)).toEqual([]);
  });

  it('a rolling restart of the agents, one at a time, fails no request', async () => {
    const { agents, startAgentProcess, holdAll, kubeconfig } = fixture();
    const load = startLoad(kubeconfig);
    for (const [i, agent] of agents.entries()) {
      // SIGTERM: GoAway to every replica (which stop routing to it at once), streams finish.
      expect(await agent.stop(10_000)).toBe(0);
      agents[i] = await startAgentProcess(`agent-${i + 1}`);
      await holdAll();
    }
    const requests = await load.stop();
    console.log(summary('rolling restart of 2 agents', requests));
    expect(requests.length).toBeGreaterThan(10);
    expect(requests.filter((r) => !r.ok)).toEqual([]);
  });

  it('a replica killed with SIGKILL fails only what was open on it; back, it has every agent within 5 s', async () => {
    const { replicas, agents, start, kubeconfig } = fixture();
    const load = startLoad(kubeconfig);
    await pollUntil(() => load.requests.length >= 4, 10_000, 'the load running');
    const victim = replicas[1]!;
    const killedAt = performance.now();
    victim.server.proc.child.kill('SIGKILL');
    await victim.server.proc.exited;
    await pollUntil(
      () => agents.every((a) => !liveServers(a).includes(victim.id)),
      SETTLE_MS,
      'the agents to lose the killed replica',
    );
    replicas[1] = await start({ ...victim, id: 'r1-c' });
    const restartedAt = performance.now();
    await pollUntil(
      () => agents.every((a) => liveServers(a).includes('r1-c')),
      SETTLE_MS,
      'every agent to find the restarted replica',
      20,
    );
    const rejoinMs = performance.now() - restartedAt;
    // A little more load on the full set, then count.
    const settled = load.requests.length;
    await pollUntil(() => load.requests.length >= settled + 6, 10_000, 'more requests');
    const requests = await load.stop();
    console.log(
      `${summary('SIGKILL of a replica', requests)}; every agent back on it ${rejoinMs.toFixed(0)} ms after its restart`,
    );
    expect(rejoinMs).toBeLessThan(5_000);
    // Only requests already open when it died may fail.
    expect(requests.filter((r) => !r.ok && r.startedAt > killedAt)).toEqual([]);
  });
});
