// The fake kube-apiserver fixture, driven directly (no tunnel) by the real kubectl, so that the
// tunnel tests can trust it: whatever fails through the tunnel is the tunnel's fault. Only what
// the tunnel suites do not already drive is here (authentication, certificate checks, exit codes,
// refusals, close()); watch, logs -f, exec -i and the 8 MiB read run once, through the tunnel
// (kubectl-passthrough.test.ts).
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { startFakeApiServer } from '../helpers/fake-apiserver.js';
import type { FakeApiServer } from '../helpers/fake-apiserver.js';
import { findKubectl, runKubectl, spawnKubectl, writeKubeconfig } from '../helpers/kubectl.js';
import type { KubeconfigOptions, KubectlProcess } from '../helpers/kubectl.js';
import { createTestCa } from '../helpers/pki.js';
import { pollUntil, withDeadline } from '../helpers/streams.js';

const routeHostname = 'cluster-u1.proxy.localhost';
const bearerToken = 'fake-token-0123456789';
const runTimeoutMs = 20_000;
const streamTimeoutMs = 10_000;

interface Fixture {
  server: FakeApiServer;
  dir: string;
  /** alice (system:masters) by client certificate. */
  kubeconfig: string;
  kubeconfigWith(name: string, options: Omit<KubeconfigOptions, 'server' | 'caPem'>): Promise<string>;
}

async function setup(): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'fake-apiserver-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const server = await startFakeApiServer({ hostnames: [routeHostname], bearerToken });
  onTestFinished(() => server.close());
  const alice = await server.issueClientCert('alice', ['system:masters']);
  const kubeconfigWith: Fixture['kubeconfigWith'] = (name, options) =>
    writeKubeconfig(join(dir, name), { server: server.url, caPem: server.caCertPem, ...options });
  const kubeconfig = await kubeconfigWith('alice', { certPem: alice.certPem, keyPem: alice.keyPem });
  return { server, dir, kubeconfig, kubeconfigWith };
}

function spawnTracked(args: string[], kubeconfig: string): KubectlProcess {
  const proc = spawnKubectl(args, { kubeconfig });
  onTestFinished(() => proc.kill());
  return proc;
}

beforeAll(() => {
  // Fail loudly, never skip: these tests exist to prove the real kubectl works.
  const kubectl = findKubectl();
  const version = JSON.parse(execFileSync(kubectl, ['version', '--client', '-o', 'json']).toString()) as {
    clientVersion: { major: string; minor: string };
  };
  const minor = Number.parseInt(version.clientVersion.minor, 10);
  if (version.clientVersion.major !== '1' || !(minor >= 31)) {
    throw new Error(
      `${kubectl} is v${version.clientVersion.major}.${version.clientVersion.minor}; need 1.31+ (WebSocket exec)`,
    );
  }
});

describe('fake kube-apiserver with the real kubectl', () => {
  test('a missing kubectl is a loud error naming where it looked, never a skip', () => {
    expect(() => findKubectl(['/nonexistent/bin'])).toThrow(
      /kubectl not found \(looked in \/nonexistent\/bin\)/,
    );
  });

  test('kubectl get pods lists the pods by name', async () => {
    const { server, kubeconfig } = await setup();
    server.addPod({ name: 'web-1' });
    server.addPod({ name: 'web-2', phase: 'Pending' });
    server.addPod({ name: 'elsewhere', namespace: 'kube-system' });

    const result = await runKubectl(['get', 'pods'], { kubeconfig, timeoutMs: runTimeoutMs });

    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const names = result.stdout
      .trim()
      .split('\n')
      .slice(1)
      .map((line) => line.split(/\s+/)[0]);
    expect(names).toEqual(['web-1', 'web-2']);
    expect(result.stdout).toMatch(/^NAME\s+READY\s+STATUS/);
  });

  test('the client certificate CN reaches the apiserver as the identity, and so does a bearer token', async () => {
    const { server, kubeconfig, kubeconfigWith } = await setup();
    const withToken = await kubeconfigWith('token', { token: bearerToken });

    expect((await runKubectl(['get', 'pods'], { kubeconfig, timeoutMs: runTimeoutMs })).code).toBe(0);
    expect((await runKubectl(['get', 'pods'], { kubeconfig: withToken, timeoutMs: runTimeoutMs })).code).toBe(
      0,
    );

    expect(server.seenIdentities).toContain('alice');
    expect(server.seenIdentities).toContain(`token:${bearerToken}`);
    expect(new Set(server.seenIdentities)).toEqual(new Set(['alice', `token:${bearerToken}`]));
  });

  test('kubectl verifies the serving certificate against tls-server-name instead of the URL host', async () => {
    const { server, kubeconfigWith } = await setup();
    const alice = await server.issueClientCert('alice', []);
    const good = await kubeconfigWith('sni-good', { ...alice, tlsServerName: routeHostname });
    const bad = await kubeconfigWith('sni-bad', { ...alice, tlsServerName: 'cluster-other.example' });

    expect((await runKubectl(['get', 'pods'], { kubeconfig: good, timeoutMs: runTimeoutMs })).code).toBe(0);
    const refused = await runKubectl(['get', 'pods'], { kubeconfig: bad, timeoutMs: runTimeoutMs });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/x509: certificate is valid for .*not cluster-other\.example/);
  });

  test('requests without a verified client certificate or the bearer token get 401 and kubectl says Unauthorized', async () => {
    const { server, kubeconfigWith } = await setup();
    const foreignCa = await createTestCa('someone-else');
    const foreign = await foreignCa.issue({ commonName: 'mallory', client: true });
    const untrustedCert = await kubeconfigWith('foreign-cert', {
      certPem: foreign.certPem,
      keyPem: foreign.keyPem,
    });
    const wrongToken = await kubeconfigWith('wrong-token', { token: 'not-the-token' });

    for (const kubeconfig of [untrustedCert, wrongToken]) {
      // The 401 Status body's reason reaches the user...
      const raw = await runKubectl(['get', '--raw', '/api/v1/namespaces/default/pods'], {
        kubeconfig,
        timeoutMs: runTimeoutMs,
      });
      expect(raw.code).toBe(1);
      expect(raw.stderr).toMatch(/You must be logged in to the server \(Unauthorized\)/);
      // ...except through discovery, whose client words every 401 the same generic way
      // (real apiservers show the same "provide credentials" text on a cold cache).
      const get = await runKubectl(['get', 'pods'], { kubeconfig, timeoutMs: runTimeoutMs });
      expect(get.code).toBe(1);
      expect(get.stderr).toMatch(
        /You must be logged in to the server \((Unauthorized|the server has asked .* credentials)\)/,
      );
    }
    expect(server.seenIdentities).toEqual([]);
    expect(server.seenRequests.length).toBeGreaterThan(0);
  });

  test('a kubeconfig with no credentials makes kubectl prompt for a username and fail on closed stdin', async () => {
    const { server, kubeconfigWith } = await setup();
    const anonymous = await kubeconfigWith('anonymous', {});

    const result = await runKubectl(['get', 'pods'], {
      kubeconfig: anonymous,
      input: '',
      timeoutMs: runTimeoutMs,
    });

    expect(result.code).not.toBe(0);
    expect(result.stdout + result.stderr).toMatch(/Please enter Username/);
    expect(server.seenIdentities).toEqual([]);
  });

  test('kubectl exec reports the command exit code', async () => {
    const { server, kubeconfig } = await setup();
    server.addPod({ name: 'web-1' });

    const echo = await runKubectl(['exec', 'web-1', '--', 'echo', 'hello', 'there'], {
      kubeconfig,
      timeoutMs: runTimeoutMs,
    });
    const exit3 = await runKubectl(['exec', 'web-1', '--', 'sh', '-c', 'exit 3'], {
      kubeconfig,
      timeoutMs: runTimeoutMs,
    });

    expect([echo.code, echo.stdout]).toEqual([0, 'hello there\n']);
    expect(exit3.code).toBe(3);
  });

  test('kubectl port-forward is refused promptly (SPDY is out of scope for the fixture)', async () => {
    const { server, kubeconfig } = await setup();
    server.addPod({ name: 'web-1' });

    const result = await runKubectl(['port-forward', 'web-1', '0:80'], {
      kubeconfig,
      timeoutMs: runTimeoutMs,
    });

    expect(result.timedOut).toBe(false);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/error upgrading connection/);
  });

  test('close() ends open watches, log follows and exec sessions, and kubectl notices', async () => {
    const { server, kubeconfig } = await setup();
    server.addPod({ name: 'web-1' });
    server.setLog('web-1', ['ready']);
    const watch = spawnTracked(['get', 'pods', '--watch'], kubeconfig);
    const logs = spawnTracked(['logs', '-f', 'web-1'], kubeconfig);
    const exec = spawnTracked(['exec', '-i', 'web-1', '--', 'cat'], kubeconfig);
    exec.child.stdin?.write('ping\n');
    await Promise.all([
      watch.waitForOutput(/web-1/, streamTimeoutMs),
      logs.waitForOutput(/ready/, streamTimeoutMs),
      exec.waitForOutput(/ping/, streamTimeoutMs),
      pollUntil(
        () => server.seenRequests.some((r) => r.includes('watch=true')),
        streamTimeoutMs,
        'the watch request',
      ),
    ]);

    await withDeadline(server.close(), 5_000, 'server.close()');

    const exits = await withDeadline(
      Promise.all([watch.exited, logs.exited, exec.exited]),
      streamTimeoutMs,
      'kubectl exits',
    );
    expect(exits.every((e) => e.signal === null)).toBe(true);
    expect(exec.stdout()).toBe('ping\n');
  });
});
