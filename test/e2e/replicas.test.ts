/**
 * Several server replicas behind one L4 load balancer (docs/ARCHITECTURE.md, "Many replicas"): two real
 * tunnel-server processes with one CA and token signing key (the second runs on a copy of the
 * first's data dir), each told `--server-count 2`, a round-robin TCP balancer in front, and one
 * real agent that dials only the balancer. kubectl pointed straight at either replica reaches
 * the cluster, so the agent holds a session to each; when a replica goes away and comes back on
 * the same port, the agent finds it again.
 */
import { cp } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { startFakeApiServer } from '../helpers/fake-apiserver.js';
import { findKubectl, runKubectl } from '../helpers/kubectl.js';
import { startLoadBalancer } from '../helpers/load-balancer.js';
import {
  createToken,
  liveServers,
  startAgent,
  startServer,
  tunnelKubeconfig,
  writeTokenFile,
  type LogLine,
} from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';

const TIMEOUT_MS = 20_000;

beforeAll(() => {
  findKubectl(); // fails loudly when kubectl is missing
});

async function getPods(kubeconfig: string): Promise<string> {
  const r = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: TIMEOUT_MS });
  if (r.code !== 0) throw new Error(`kubectl failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

const registeredWith =
  (serverId: string) =>
  (l: LogLine): boolean =>
    l.msg === 'agent registered' && l.serverId === serverId;

describe('server replicas behind a load balancer', () => {
  it('the agent holds a session to each replica, loses one when it stops and finds it again after its restart', async () => {
    const replicaArgs = (id: string) => ['--server-id', id, '--server-count', '2'];
    const a = await startServer({ args: replicaArgs('server-a') });
    // Same CA, server certificate and signing key: the second replica runs on a copy of the data dir.
    const bDataDir = join(tempDir('tunnel-server-b-'), 'data');
    await cp(a.dataDir, bDataDir, { recursive: true });
    const b = await startServer({ dataDir: bDataDir, args: replicaArgs('server-b') });
    const lb = await startLoadBalancer([a.port, b.port]);

    const api = await startFakeApiServer({ hostnames: ['cluster-u1.proxy.localhost'] });
    onTestFinished(() => api.close());
    api.addPod({ name: 'u1-web-1' });
    const dir = tempDir();
    const tokenFile = await writeTokenFile(dir, await createToken(a.dataDir, 'u1'));
    const agent = await startAgent(
      {
        // The agent knows only the balancer's address (and the replicas' shared CA).
        server: { ...a, url: `wss://127.0.0.1:${lb.port}/connect` },
        tokenFile,
        routes: [`apiserver=127.0.0.1:${api.port}`],
        agentId: 'agent-u1',
      },
      false,
    );
    await agent.waitForLog(registeredWith('server-a'), TIMEOUT_MS);
    await agent.waitForLog(registeredWith('server-b'), TIMEOUT_MS);
    expect(liveServers(agent)).toEqual(['server-a', 'server-b']);
    expect(agent.logs.find(registeredWith('server-b'))?.serverCount).toBe(2);

    // One kubeconfig per replica, each pointing straight at that replica's port.
    const user = await api.issueClientCert('alice-u1', ['system:masters']);
    const kubeconfigFor = async (port: number) =>
      tunnelKubeconfig(tempDir(), {
        cluster: 'u1',
        port,
        caPem: api.caCertPem,
        certPem: user.certPem,
        keyPem: user.keyPem,
      });
    const viaA = await kubeconfigFor(a.port);
    const viaB = await kubeconfigFor(b.port);
    expect(await getPods(viaA)).toContain('u1-web-1');
    expect(await getPods(viaB)).toContain('u1-web-1');
    // Each replica carried its user over its own session with the agent.
    await agent.waitForLog((l) => l.msg === 'user connection closed' && l.serverId === 'server-a');
    await agent.waitForLog((l) => l.msg === 'user connection closed' && l.serverId === 'server-b');

    // server-b goes away: the agent keeps serving through server-a.
    const beforeStop = agent.logs.length;
    expect(await b.proc.stop()).toBe(0);
    await agent.waitForLog(
      (l) => l.msg === 'session ended' && l.serverId === 'server-b',
      TIMEOUT_MS,
      beforeStop,
    );
    for (let i = 0; i < 3; i++) expect(await getPods(viaA)).toContain('u1-web-1');
    expect(liveServers(agent)).toEqual(['server-a']);

    // server-b comes back on the same port and data dir: the agent's second slot finds it.
    const beforeRestart = agent.logs.length;
    const restarted = await startServer({ dataDir: bDataDir, port: b.port, args: replicaArgs('server-b') });
    await agent.waitForLog(registeredWith('server-b'), TIMEOUT_MS, beforeRestart);
    expect(liveServers(agent)).toEqual(['server-a', 'server-b']);
    expect(await getPods(viaB)).toContain('u1-web-1');
    expect(await getPods(viaA)).toContain('u1-web-1');
    await restarted.proc.waitForLog((l) => l.msg === 'user connection closed' && l.route === 'cluster-u1');
    // Landing on server-a again while server-b was away is routine, never an error.
    expect(agent.logs.filter((l) => l.level >= 50)).toEqual([]);
  });
});
