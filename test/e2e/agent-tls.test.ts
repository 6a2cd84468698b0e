/**
 * The agent-tls route mode with real processes and the real kubectl, beyond the kubectl suite
 * (kubectl.test.ts runs get, watch, logs -f, exec -i and an 8 MiB read through it): the
 * certificate users see, why passthrough cannot serve such a cluster, exec-plugin credentials, a
 * user who arrives before the agent holds a certificate, and a certificate that expires under
 * open connections. The fake API server's certificate never carries the route hostname here, as
 * a managed cluster's does not.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { describe, expect, onTestFinished, test } from 'vitest';
import { sharedFixture } from '../helpers/cleanup.js';
import { BEARER_TOKEN, setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import { startFakeApiServer } from '../helpers/fake-apiserver.js';
import { runKubectl, spawnKubectl } from '../helpers/kubectl.js';
import { startLoadBalancer } from '../helpers/load-balancer.js';
import { pollUntil } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';
import {
  SERVER_BIN,
  createToken,
  liveServers,
  startAgent,
  startServer,
  tunnelKubeconfig,
  writeTokenFile,
} from '../helpers/tunnel.js';

const execFileAsync = promisify(execFile);
const runTimeoutMs = 20_000;
const ROUTE_HOST = 'cluster-u1.proxy.localhost';

/** The certificate a TLS client verifying against `caPem` is served for `servername` on `port`. */
function servedCertificate(port: number, servername: string, caPem: string): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: caPem }, () => {
      const cert = socket.getPeerX509Certificate();
      socket.end();
      if (cert) resolve(cert);
      else reject(new Error('no peer certificate'));
    });
    socket.once('error', reject);
    socket.setTimeout(10_000, () => socket.destroy(new Error('TLS handshake timed out')));
  });
}

const spkiSha256 = (cert: X509Certificate): string =>
  createHash('sha256')
    .update(cert.publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex');

describe('an agent-tls route', () => {
  const tunnel = sharedFixture(() => setupClusterTunnel({ mode: 'agent-tls' }));

  test("is served a certificate the route CA issued to the route hostname for the agent's own key", async () => {
    const t = tunnel();
    const routeCaPem = await readFile(join(t.server.dataDir, 'route-ca.crt'), 'utf8');
    const routeCa = new X509Certificate(routeCaPem);
    const installed = await t.agent.waitForLog((l) => l.msg === 'route certificate installed');
    const served = await servedCertificate(t.server.port, ROUTE_HOST, routeCaPem);

    expect(served.checkIssued(routeCa)).toBe(true);
    expect(served.verify(routeCa.publicKey)).toBe(true);
    expect(served.subjectAltName).toBe(`DNS:${ROUTE_HOST}`);
    expect(served.serialNumber).toBe(installed.serialNumber);
    // The key the agent made at start (it logs only the key's hash), never the server's.
    expect(spkiSha256(served)).toBe(installed.publicKeySha256);
    const serverCert = new X509Certificate(await readFile(join(t.server.dataDir, 'server.crt'), 'utf8'));
    expect(spkiSha256(served)).not.toBe(spkiSha256(serverCert));
    // Short-lived: the server's default lifetime, 24 h (notBefore is backdated 5 minutes).
    const lifetimeMs = Date.parse(served.validTo) - Date.parse(served.validFrom);
    expect(lifetimeMs).toBe(24 * 3_600_000 + 5 * 60_000);
    // The server logged what it signed, and never saw the agent's key.
    const issued = await t.server.proc.waitForLog((l) => l.msg === 'route certificate issued');
    expect(issued).toMatchObject({
      clusterId: 'u1',
      hostnames: [ROUTE_HOST],
      serialNumber: served.serialNumber,
    });
  });

  test('a client that does not trust the route CA fails the handshake; the agent logs it and the API server sees nothing', async () => {
    const t = tunnel();
    const requestsBefore = t.api.seenRequests.length;
    const logsBefore = t.agent.logs.length;
    // The API server's own CA is not the route CA: what a kubeconfig made for passthrough holds.
    await expect(servedCertificate(t.server.port, ROUTE_HOST, t.api.caCertPem)).rejects.toMatchObject({
      code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    });
    expect(
      await t.agent.waitForLog((l) => l.msg === 'user TLS handshake failed', 10_000, logsBefore),
    ).toMatchObject({ route: 'cluster-u1' });
    expect(t.api.seenRequests.length).toBe(requestsBefore);
  });

  test('reaches an API server that passthrough cannot: its certificate lacks the route hostname', async () => {
    const t = tunnel();
    // Cluster u2's agent serves the same API server in passthrough: kubectl checks the API
    // server's own certificate for cluster-u2.proxy.localhost, and it is not there.
    const tokenFile = await writeTokenFile(t.dir, await createToken(t.server.dataDir, 'u2'), 'u2.token');
    const agent = await startAgent({
      server: t.server,
      tokenFile,
      routes: [`apiserver=127.0.0.1:${t.api.port}`],
      agentId: 'agent-u2',
    });
    onTestFinished(async () => {
      await agent.stop();
    });
    const passthrough = await tunnelKubeconfig(tempDir(), {
      cluster: 'u2',
      port: t.server.port,
      caPem: t.api.caCertPem,
      token: BEARER_TOKEN,
    });

    const refused = await runKubectl(['get', 'pods'], { kubeconfig: passthrough, timeoutMs: runTimeoutMs });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/x509: certificate is valid for .*not cluster-u2\.proxy\.localhost/);

    const served = await runKubectl(['get', 'pods', '-o', 'name'], {
      kubeconfig: t.kubeconfig,
      timeoutMs: runTimeoutMs,
    });
    expect(served.stderr).toBe('');
    expect(served.stdout.split('\n').filter(Boolean)).toEqual(['pod/u1-web-1', 'pod/u1-web-2']);
  });

  test("carries an exec plugin's token; a kubeconfig with a client certificate is refused when it is made", async () => {
    const t = tunnel();
    const dir = tempDir();
    const plugin = join(dir, 'credential-plugin.mjs');
    // What an OIDC or cloud IAM plugin does: print an ExecCredential with a bearer token.
    await writeFile(
      plugin,
      `process.stdout.write(JSON.stringify({ apiVersion: 'client.authentication.k8s.io/v1', kind: 'ExecCredential', status: { token: ${JSON.stringify(BEARER_TOKEN)} } }));\n`,
    );
    const kubeconfig = await tunnelKubeconfig(dir, {
      cluster: 'u1',
      port: t.server.port,
      mode: 'agent-tls',
      dataDir: t.server.dataDir,
      exec: { command: process.execPath, args: [plugin] },
    });
    const before = t.api.seenIdentities.length;
    const result = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: runTimeoutMs });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(t.api.seenIdentities.slice(before)).toContain(`token:${BEARER_TOKEN}`);

    const user = await t.api.issueClientCert('alice', ['system:masters']);
    await writeFile(join(dir, 'alice.crt'), user.certPem);
    await writeFile(join(dir, 'alice.key'), user.keyPem);
    const cli = await execFileAsync(process.execPath, [
      SERVER_BIN,
      ...['kubeconfig', '--cluster', 'u1', '--mode', 'agent-tls', '--data-dir', t.server.dataDir],
      ...['--client-cert', join(dir, 'alice.crt'), '--client-key', join(dir, 'alice.key')],
    ]).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err,
    );
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(/client certificate cannot reach the API server through agent-tls/);
  });
});

describe('route certificates with several replicas', () => {
  test('replicas sharing a route CA (route-ca create) all serve the route, and renewal goes over whichever is up', async () => {
    const caDir = tempDir();
    await execFileAsync(process.execPath, [SERVER_BIN, 'route-ca', 'create', '--data-dir', caDir]);
    const replicaArgs = (id: string) => [
      ...['--server-id', id, '--server-count', '2', '--route-cert-lifetime-ms', '4s'],
      ...['--route-ca-cert', join(caDir, 'route-ca.crt'), '--route-ca-key', join(caDir, 'route-ca.key')],
    ];
    const a = await startServer({ args: replicaArgs('server-a') });
    // Same CA, server certificate and token key: the second replica runs on a copy of the data dir.
    const bDataDir = join(tempDir(), 'data');
    await cp(a.dataDir, bDataDir, { recursive: true });
    const b = await startServer({ dataDir: bDataDir, args: replicaArgs('server-b') });
    const lb = await startLoadBalancer([a.port, b.port]);
    const api = await startFakeApiServer({ hostnames: [], bearerToken: BEARER_TOKEN });
    onTestFinished(() => api.close());
    api.addPod({ name: 'u1-web-1' });
    const dir = tempDir();
    const apiCa = join(dir, 'api-ca.pem');
    await writeFile(apiCa, api.caCertPem);
    const agent = await startAgent(
      {
        server: { ...a, url: `wss://127.0.0.1:${lb.port}/connect` },
        tokenFile: await writeTokenFile(dir, await createToken(a.dataDir, 'u1')),
        routes: [
          `apiserver=127.0.0.1:${api.port},mode=agent-tls,ca=${apiCa},serverName=kubernetes.default.svc`,
        ],
        agentId: 'agent-u1',
      },
      false,
    );
    await pollUntil(
      () => liveServers(agent).length === 2 || undefined,
      runTimeoutMs,
      'sessions to both replicas',
    );
    await agent.waitForLog((l) => l.msg === 'route certificate installed');
    const kubeconfigFor = (port: number) =>
      tunnelKubeconfig(tempDir(), {
        cluster: 'u1',
        port,
        caPem: readFileSync(join(caDir, 'route-ca.crt'), 'utf8'),
        mode: 'agent-tls',
        token: BEARER_TOKEN,
      });
    const viaA = await kubeconfigFor(a.port);
    const viaB = await kubeconfigFor(b.port);
    for (const kubeconfig of [viaA, viaB]) {
      const r = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: runTimeoutMs });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('pod/u1-web-1');
    }

    // server-a goes away for good: the next renewals go over server-b, and users of server-b
    // are served past the expiry of every certificate server-a signed.
    expect(await a.proc.stop()).toBe(0);
    const stoppedAt = Date.now();
    const fromB = await b.proc.waitForLog(
      (l) => l.msg === 'route certificate issued' && Date.parse(l.time as string) > stoppedAt,
      runTimeoutMs,
    );
    const installed = await agent.waitForLog(
      (l) => l.msg === 'route certificate installed' && l.serialNumber === fromB.serialNumber,
      runTimeoutMs,
    );
    expect(installed.serverId).toBe('server-b');
    await pollUntil(
      () => Date.now() > stoppedAt + 4_500 || undefined,
      10_000,
      'the older certificates to expire',
    );
    const r = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig: viaB, timeoutMs: runTimeoutMs });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('pod/u1-web-1');
    expect(agent.logs.filter((l) => l.code === 'TUN_ERR_ROUTE_CERT_PENDING')).toEqual([]);
  });
});

describe('route certificates over time', () => {
  test('a user who arrives before the agent holds a certificate is refused at the TLS level, and both sides log the code', async () => {
    // Two replicas announced and no shared route CA configured: this server signs nothing.
    const server = await startServer({ args: ['--server-count', '2'] });
    const dir = tempDir();
    const tokenFile = await writeTokenFile(dir, await createToken(server.dataDir, 'u1'));
    const agent = await startAgent({
      server,
      tokenFile,
      routes: ['apiserver=127.0.0.1:9,mode=agent-tls,insecure'],
      agentId: 'agent-u1',
    });
    const refusal = await agent.waitForLog((l) => l.msg.startsWith('no route certificate'));
    expect(refusal).toMatchObject({ code: 'TUN_ERR_CERT_SIGNING_REFUSED' });
    expect(await server.proc.waitForLog((l) => l.msg === 'route certificate refused')).toMatchObject({
      code: 'TUN_ERR_CERT_SIGNING_REFUSED',
      clusterId: 'u1',
    });
    // Made without the server (no route CA exists): any CA will do, TLS fails before it is used.
    const kubeconfig = await tunnelKubeconfig(dir, {
      cluster: 'u1',
      port: server.port,
      caPem: await readFile(server.caFile, 'utf8'),
      token: BEARER_TOKEN,
    });

    const result = await runKubectl(['get', 'pods'], { kubeconfig, timeoutMs: runTimeoutMs });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/remote error: tls: internal error/);
    expect(await agent.waitForLog((l) => l.msg === 'no route certificate yet: user refused')).toMatchObject({
      code: 'TUN_ERR_ROUTE_CERT_PENDING',
      route: 'cluster-u1',
    });
    expect(
      await server.proc.waitForLog((l) => l.audit === 'connection' && l.outcome === 'refused'),
    ).toMatchObject({ mode: 'agent-tls', route: 'cluster-u1', code: 'TUN_ERR_ROUTE_CERT_PENDING' });
  });

  test('an expiring route certificate is replaced, and connections opened under it go on past its expiry', async () => {
    const server = await startServer({ args: ['--route-cert-lifetime-ms', '3s'] });
    const t = await setupClusterTunnel({ mode: 'agent-tls', server });
    const first = await t.agent.waitForLog((l) => l.msg === 'route certificate installed');
    const watch = spawnKubectl(['get', 'pods', '-n', 'later', '--watch', '-o', 'name'], {
      kubeconfig: t.kubeconfig,
    });
    onTestFinished(() => watch.kill());
    await pollUntil(
      () => t.api.seenRequests.some((r) => r.includes('/namespaces/later/pods?') && r.includes('watch=true')),
      runTimeoutMs,
      'the watch request',
    );
    // Renewed at two thirds of its life, without a gap; then the first one expires.
    const second = await t.agent.waitForLog(
      (l) => l.msg === 'route certificate installed' && l.serialNumber !== first.serialNumber,
    );
    const expiredAt = Date.parse(first.notAfter as string);
    await pollUntil(() => Date.now() > expiredAt + 200, 10_000, 'the first certificate to expire');

    t.api.addPod({ name: 'after-expiry', namespace: 'later' });
    await watch.waitForOutput(/after-expiry/, runTimeoutMs);
    expect(watch.child.exitCode).toBe(null);
    // New connections get a current certificate: a renewed one, never the expired first.
    const result = await runKubectl(['get', 'pods', '-o', 'name'], {
      kubeconfig: t.kubeconfig,
      timeoutMs: runTimeoutMs,
    });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const routeCaPem = await readFile(join(server.dataDir, 'route-ca.crt'), 'utf8');
    const served = await servedCertificate(server.port, ROUTE_HOST, routeCaPem);
    expect(served.serialNumber).not.toBe(first.serialNumber);
    expect(Date.parse(served.validTo)).toBeGreaterThanOrEqual(Date.parse(second.notAfter as string));
    // Nothing was refused for want of a certificate.
    expect(t.agent.logs.filter((l) => l.code === 'TUN_ERR_ROUTE_CERT_PENDING')).toEqual([]);
  });
});
