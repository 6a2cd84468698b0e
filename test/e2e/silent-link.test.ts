/**
 * A link that goes silent (a relay the test freezes: no FIN, no RST, as when a NAT or firewall
 * drops its state) between the server and one of a cluster's two agents. With the healthy agent
 * there, kubectl never fails and never waits long: a silent agent is passed over after about a
 * second (docs/ARCHITECTURE.md, "Many replicas"), pinged at once and dropped when the ping does
 * not come back; the agent behind the frozen link notices the silence the same way and dials
 * again.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { startFakeApiServer } from '../helpers/fake-apiserver.js';
import { findKubectl, runKubectl } from '../helpers/kubectl.js';
import { startLoadBalancer } from '../helpers/load-balancer.js';
import { pollUntil } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';
import { createToken, startAgent, startServer, tunnelKubeconfig, writeTokenFile } from '../helpers/tunnel.js';
import { defer } from '../helpers/cleanup.js';

beforeAll(() => {
  findKubectl(); // fails loudly when kubectl is missing
});

describe('an agent behind a link that goes silent', () => {
  it('costs no kubectl request and none over 2 s; its session is dropped within seconds and it dials again', async () => {
    const api = await startFakeApiServer({ hostnames: ['cluster-u1.proxy.localhost'] });
    defer(() => api.close());
    api.addPod({ name: 'u1-web-1' });
    const server = await startServer();
    const dir = tempDir();
    const tokenFile = await writeTokenFile(dir, await createToken(server.dataDir, 'u1'));
    const routes = [`apiserver=127.0.0.1:${api.port}`];
    await startAgent({ server, tokenFile, routes, agentId: 'agent-healthy' });
    // The other agent reaches the server through a relay the test can freeze.
    const relay = await startLoadBalancer([server.port]);
    const behindRelay = await startAgent({
      server: { ...server, url: `wss://127.0.0.1:${relay.port}/connect` },
      tokenFile,
      routes,
      agentId: 'agent-silent',
      args: ['--keepalive-interval-ms', '1s'],
    });
    const user = await api.issueClientCert('alice-u1', ['system:masters']);
    const kubeconfig = await tunnelKubeconfig(dir, {
      cluster: 'u1',
      port: server.port,
      caPem: api.caCertPem,
      certPem: user.certPem,
      keyPem: user.keyPem,
    });
    const get = async (): Promise<{ ok: boolean; ms: number; stderr: string }> => {
      const started = performance.now();
      const r = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: 20_000 });
      return {
        ok: r.code === 0 && r.stdout.includes('u1-web-1'),
        ms: performance.now() - started,
        stderr: r.stderr,
      };
    };
    // Both agents carry users before the freeze.
    for (let i = 0; i < 4; i++) expect((await get()).ok).toBe(true);
    await server.proc.waitForLog((l) => l.msg === 'user connection closed' && l.agentId === 'agent-silent');

    const logsBefore = server.proc.logs.length;
    const agentLogsBefore = behindRelay.logs.length;
    const frozenAt = performance.now();
    expect(relay.freeze()).toBe(1);
    const results = [];
    for (let i = 0; i < 12; i++) results.push(await get());
    console.log(
      `silent link: ${results.length} kubectl requests, ${results.filter((r) => !r.ok).length} failed, ` +
        `slowest ${Math.max(...results.map((r) => r.ms)).toFixed(0)} ms`,
    );
    expect(results.filter((r) => !r.ok)).toEqual([]);
    for (const r of results) expect(r.ms).toBeLessThan(2_000);

    // The server dropped the silent session within seconds of the freeze.
    const dropped = await server.proc.waitForLog(
      (l) => l.msg === 'agent silent: session dropped' && l.agentId === 'agent-silent',
      10_000,
      logsBefore,
    );
    expect(Date.parse(String(dropped.time))).toBeGreaterThan(0);
    expect(performance.now() - frozenAt).toBeLessThan(15_000);
    // The agent noticed the silence on its side too, and came back through a new connection.
    await behindRelay.waitForLog((l) => l.msg === 'session ended', 10_000, agentLogsBefore);
    await behindRelay.waitForLog((l) => l.msg === 'agent registered', 10_000, agentLogsBefore);
    await pollUntil(
      () =>
        server.proc.logs
          .slice(logsBefore)
          .some((l) => l.msg === 'agent connected' && l.agentId === 'agent-silent'),
      10_000,
      'the agent back on the server',
    );
    for (let i = 0; i < 4; i++) expect((await get()).ok).toBe(true);
  });
});
