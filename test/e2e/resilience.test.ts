/**
 * The agent keeps the route alive with no manual step: it reconnects after the server restarts,
 * it reaches the server through a real HTTP CONNECT proxy (tinyproxy), and several agents of one
 * cluster share a route and fail over.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import { findKubectl, runKubectl } from '../helpers/kubectl.js';
import { startAgent, startServer } from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';
import { pollUntil } from '../helpers/streams.js';

const TIMEOUT_MS = 20_000;

beforeAll(() => {
  findKubectl();
});

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

async function getPods(kubeconfig: string): Promise<string> {
  const r = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: TIMEOUT_MS });
  if (r.code !== 0) throw new Error(`kubectl failed: ${r.stderr}`);
  return r.stdout;
}

describe('reconnect', () => {
  it('after the server restarts, the agent re-registers and kubectl works again', async () => {
    const t = await setupClusterTunnel();
    expect(await getPods(t.kubeconfig)).toContain('u1-web-1');
    const logsBefore = t.agent.logs.length;
    expect(await t.server.proc.stop()).toBe(0);
    // Same port and data dir (same CA and signing key), as after a pod restart behind a Service.
    const restarted = await startServer({ dataDir: t.server.dataDir, port: t.server.port });
    onTestFinished(async () => {
      await restarted.proc.stop();
    });
    await t.agent.waitForLog((l) => l.msg === 'agent registered', TIMEOUT_MS, logsBefore);
    expect(await getPods(t.kubeconfig)).toContain('u1-web-1');
  });
});

describe('egress through an HTTP CONNECT proxy', () => {
  it('the agent dials the server through tinyproxy, with credentials in the proxy URL', async () => {
    const tinyproxy = ['/usr/bin/tinyproxy', '/usr/sbin/tinyproxy'].find((p) => existsSync(p));
    if (!tinyproxy) throw new Error('tinyproxy is not installed (test/setup/system-packages.ts installs it)');
    const dir = tempDir();
    const port = await freePort();
    const logFile = join(dir, 'tinyproxy.log');
    const conf = join(dir, 'tinyproxy.conf');
    await writeFile(
      conf,
      [
        `Port ${port}`,
        'Listen 127.0.0.1',
        'Timeout 600',
        `LogFile "${logFile}"`,
        'LogLevel Connect',
        'MaxClients 20',
        'Allow 127.0.0.1',
        'BasicAuth agent s3cret',
        `PidFile "${join(dir, 'tinyproxy.pid')}"`,
        '',
      ].join('\n'),
    );
    const proxy = spawn(tinyproxy, ['-d', '-c', conf], { stdio: 'ignore' });
    onTestFinished(() => {
      proxy.kill('SIGKILL');
    });
    await pollUntil(
      () =>
        new Promise<boolean>((r) => {
          const s = net.connect(port, '127.0.0.1', () => {
            s.destroy();
            r(true);
          });
          s.on('error', () => r(false));
        }),
      10_000,
      'tinyproxy to listen',
    );
    const t = await setupClusterTunnel({
      agentEnv: { HTTPS_PROXY: `http://agent:s3cret@127.0.0.1:${port}`, NO_PROXY: 'kubernetes.default.svc' },
    });
    expect(await getPods(t.kubeconfig)).toContain('u1-web-1');
    const proxyLog = await readFile(logFile, 'utf8');
    expect(proxyLog).toMatch(new RegExp(`CONNECT.*127\\.0\\.0\\.1:${t.server.port}`));
    // The proxy password never reaches a log line.
    expect(JSON.stringify(t.agent.logs)).not.toContain('s3cret');
  });
});

describe('several agents of one cluster', () => {
  it('share a route, and when one leaves the other carries new connections', async () => {
    const t = await setupClusterTunnel();
    const second = await startAgent({
      server: t.server,
      tokenFile: t.tokenFile,
      routes: [`apiserver=127.0.0.1:${t.api.port}`],
      agentId: 'agent-u1-second',
    });
    for (let i = 0; i < 4; i++) await getPods(t.kubeconfig);
    const served = (agentId: string) =>
      t.server.proc.logs.filter((l) => l.msg === 'user connection closed' && l.agentId === agentId).length;
    await t.server.proc.waitForLog(
      (l) => l.msg === 'user connection closed' && l.agentId === 'agent-u1-second',
    );
    expect(served('agent-u1')).toBeGreaterThan(0);
    expect(served('agent-u1-second')).toBeGreaterThan(0);
    expect(await second.stop()).toBe(0);
    for (let i = 0; i < 3; i++) expect(await getPods(t.kubeconfig)).toContain('u1-web-1');
  });
});
