/**
 * The real kubectl against the fake kube-apiserver (test/helpers/fake-apiserver.ts), first
 * directly, then through a passthrough route and through an agent-tls route.
 *
 * Directly, the fixture proves itself, so that whatever fails through the tunnel is the tunnel's
 * fault: identities, certificate checks, 401s, exit codes, refusals, close().
 *
 * Through the tunnel: the real tunnel-server and tunnel-client processes and a kubeconfig printed
 * by `tunnel-server kubeconfig`. Passthrough (the Spectro Proxy "Palette-deployed" mode): an API
 * server whose certificate carries the route hostname; TLS runs from kubectl to the API server
 * and the API server sees kubectl's client certificate. agent-tls (a managed cluster): the API
 * server's certificate lacks the route hostname and it speaks HTTP/2 as a real one does (HTTP/1.1
 * for exec's WebSocket); TLS ends at the agent and kubectl's bearer token reaches the API server. Neither is decrypted by the tunnel server. List, watch, logs -f,
 * exec -i and an 8 MiB read each run once per mode. One tunnel per mode serves them all: each test
 * uses its own namespace, pod or object, so their order does not matter.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { sharedFixture } from '../helpers/cleanup.js';
import { setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import { startFakeApiServer } from '../helpers/fake-apiserver.js';
import type { FakeApiServer } from '../helpers/fake-apiserver.js';
import { findKubectl, runKubectl, spawnKubectl, writeKubeconfig } from '../helpers/kubectl.js';
import type { KubeconfigOptions, KubectlProcess } from '../helpers/kubectl.js';
import { createTestCa } from '../helpers/pki.js';
import { pollUntil, sha256, withDeadline } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';

const routeHostname = 'cluster-u1.proxy.localhost';
const bearerToken = 'fake-token-0123456789';
const runTimeoutMs = 20_000;
const streamTimeoutMs = 20_000;

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

test('a missing kubectl is a loud error naming where it looked, never a skip', () => {
  expect(() => findKubectl(['/nonexistent/bin'])).toThrow(
    /kubectl not found \(looked in \/nonexistent\/bin\)/,
  );
});

describe('kubectl against the fake kube-apiserver directly', () => {
  interface Fixture {
    server: FakeApiServer;
    /** alice (system:masters) by client certificate. */
    kubeconfig: string;
    kubeconfigWith(name: string, options: Omit<KubeconfigOptions, 'server' | 'caPem'>): Promise<string>;
  }

  /** A fake API server of its own for one test: what a test asserts about it is its doing alone. */
  async function setup(): Promise<Fixture> {
    const dir = tempDir('fake-apiserver-');
    const server = await startFakeApiServer({ hostnames: [routeHostname], bearerToken });
    onTestFinished(() => server.close());
    const alice = await server.issueClientCert('alice', ['system:masters']);
    const kubeconfigWith: Fixture['kubeconfigWith'] = (name, options) =>
      writeKubeconfig(join(dir, name), { server: server.url, caPem: server.caCertPem, ...options });
    const kubeconfig = await kubeconfigWith('alice', { certPem: alice.certPem, keyPem: alice.keyPem });
    return { server, kubeconfig, kubeconfigWith };
  }

  test("get pods lists the namespace's pods by name; the client certificate's CN and a bearer token are the identities", async () => {
    const { server, kubeconfig, kubeconfigWith } = await setup();
    server.addPod({ name: 'web-1' });
    server.addPod({ name: 'web-2', phase: 'Pending' });
    server.addPod({ name: 'elsewhere', namespace: 'kube-system' });
    const withToken = await kubeconfigWith('token', { token: bearerToken });

    const result = await runKubectl(['get', 'pods'], { kubeconfig, timeoutMs: runTimeoutMs });
    const byToken = await runKubectl(['get', 'pods'], { kubeconfig: withToken, timeoutMs: runTimeoutMs });

    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const names = result.stdout
      .trim()
      .split('\n')
      .slice(1)
      .map((line) => line.split(/\s+/)[0]);
    expect(names).toEqual(['web-1', 'web-2']);
    expect(result.stdout).toMatch(/^NAME\s+READY\s+STATUS/);
    expect(byToken.code).toBe(0);
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

// The same user's work through both modes that carry kubectl's TLS unread past the server:
// passthrough (TLS ends at the API server, whose certificate carries the route hostname; the user
// holds a client certificate) and agent-tls (TLS ends at the agent, with its route certificate;
// the API server's certificate lacks the route hostname, as a managed cluster's does; the user
// holds a bearer token).
describe.each(['passthrough', 'agent-tls'] as const)('kubectl through the %s route mode', (mode) => {
  // Cluster u1's API server holds pods u1-web-1 and u1-web-2 in the default namespace.
  const tunnel = sharedFixture(() => setupClusterTunnel({ mode }));

  test("lists pods, and the API server sees the kubeconfig's credentials", async () => {
    const t = tunnel();
    const logsBefore = t.server.proc.logs.length;
    const result = await runKubectl(['get', 'pods', '-o', 'name'], {
      kubeconfig: t.kubeconfig,
      timeoutMs: runTimeoutMs,
    });
    expect(result.stderr).toBe('');
    expect(result.stdout.split('\n').filter(Boolean)).toEqual(['pod/u1-web-1', 'pod/u1-web-2']);
    expect(t.api.seenIdentities).toContain(t.identity);
    // kubectl offers h2 and the API server picks it; through agent-tls both TLS legs agree on it
    // (the fixture speaks HTTP/2 there, as a real kube-apiserver does).
    expect(new Set(t.api.seenHttpVersions)).toEqual(new Set([mode === 'agent-tls' ? '2.0' : '1.1']));
    // The server logged this user connection with its byte counts.
    const closed = await t.server.proc.waitForLog(
      (l) => l.msg === 'user connection closed' && l.route === 'cluster-u1',
      15_000,
      logsBefore,
    );
    expect(closed.bytesIn).toBeGreaterThan(0);
    expect(closed.bytesOut).toBeGreaterThan(0);
  });

  test('streams a watch: a pod added while kubectl watches appears, and the watch stays open', async () => {
    const t = tunnel();
    t.api.addPod({ name: 'watched-1', namespace: 'watched' });
    const watch = spawnTracked(['get', 'pods', '-n', 'watched', '--watch', '-o', 'name'], t.kubeconfig);
    await watch.waitForOutput(/watched-1/, streamTimeoutMs);
    // The watch request follows the list; add the pod only once the API server holds it open.
    await pollUntil(
      () =>
        t.api.seenRequests.some((r) => r.includes('/namespaces/watched/pods?') && r.includes('watch=true')),
      streamTimeoutMs,
      'the watch request',
    );
    t.api.addPod({ name: 'late-arrival', namespace: 'watched' });
    await watch.waitForOutput(/late-arrival/, streamTimeoutMs);
    expect(watch.stdout().split('\n').filter(Boolean)).toEqual(['pod/watched-1', 'pod/late-arrival']);
    expect(watch.child.exitCode).toBe(null);
  });

  test('follows logs: existing lines, then lines appended while it follows', async () => {
    const t = tunnel();
    t.api.setLog('u1-web-2', ['first line', 'second line']);
    const logs = spawnTracked(['logs', '-f', 'u1-web-2'], t.kubeconfig);
    await logs.waitForOutput(/second line/, streamTimeoutMs);
    t.api.appendLog('u1-web-2', 'appended later');
    await logs.waitForOutput(/appended later/, streamTimeoutMs);
    expect(logs.stdout()).toBe('first line\nsecond line\nappended later\n');
  });

  test('execs with stdin echoed back over the WebSocket exec protocol', async () => {
    const t = tunnel();
    const input = Buffer.alloc(300_000, 'tunnel-exec ').toString();
    const result = await runKubectl(['exec', '-i', 'u1-web-1', '--', 'cat'], {
      kubeconfig: t.kubeconfig,
      input,
      timeoutMs: runTimeoutMs,
    });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout.length).toBe(input.length);
    expect(result.stdout === input).toBe(true);
    expect(
      t.api.seenRequests.some((r) => r.includes('/pods/u1-web-1/exec?') && r.endsWith('(upgrade)')),
    ).toBe(true);
  });

  test('returns an 8 MiB object byte-identical', async () => {
    const t = tunnel();
    const big = t.api.bigObject(8 * 1024 * 1024);
    const result = await runKubectl(['get', '--raw', big.path], {
      kubeconfig: t.kubeconfig,
      timeoutMs: runTimeoutMs,
    });
    expect(result.code).toBe(0);
    expect(result.stdoutBytes.length).toBe(big.sizeBytes);
    expect(sha256(result.stdoutBytes)).toBe(big.sha256);
    expect(JSON.parse(result.stdout)).toMatchObject({ kind: 'ConfigMap', metadata: { name: 'big' } });
  });
});
