/**
 * The Spectro Proxy "Palette-deployed" mode, end to end: the real tunnel-server and tunnel-client
 * processes, a fake kube-apiserver whose certificate carries the route hostname, and the real
 * kubectl with a kubeconfig printed by `tunnel-server kubeconfig`. TLS runs from kubectl to the
 * API server; the tunnel never decrypts it (the API server sees kubectl's client certificate).
 */
import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { findKubectl, runKubectl, spawnKubectl } from '../helpers/kubectl.js';
import { setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import { pollUntil } from '../helpers/streams.js';

const TIMEOUT_MS = 20_000;

beforeAll(() => {
  findKubectl(); // fails loudly when kubectl is missing
});

describe('kubectl through a passthrough route', () => {
  it('lists pods, and the API server sees the kubeconfig client certificate (TLS end to end)', async () => {
    const t = await setupClusterTunnel();
    const result = await runKubectl(['get', 'pods', '-o', 'name'], {
      kubeconfig: t.kubeconfig,
      timeoutMs: TIMEOUT_MS,
    });
    expect(result.stderr).toBe('');
    expect(result.stdout.split('\n').filter(Boolean)).toEqual(['pod/u1-web-1', 'pod/u1-web-2']);
    expect(t.api.seenIdentities).toContain('alice-u1');
    // The server logged the user connection with its byte counts.
    const closed = await t.server.proc.waitForLog(
      (l) => l.msg === 'user connection closed' && l.route === 'cluster-u1',
    );
    expect(closed.bytesIn).toBeGreaterThan(0);
    expect(closed.bytesOut).toBeGreaterThan(0);
  });

  it('streams a watch: a pod added while kubectl watches appears, and the watch stays open', async () => {
    const t = await setupClusterTunnel();
    const watch = spawnKubectl(['get', 'pods', '--watch', '-o', 'name'], { kubeconfig: t.kubeconfig });
    onTestFinished(() => watch.kill());
    await watch.waitForOutput(/u1-web-2/, TIMEOUT_MS);
    // The watch request follows the list; add the pod only once the API server holds it open.
    await pollUntil(() => t.api.seenRequests.some((r) => r.includes('watch=true')), TIMEOUT_MS, 'the watch');
    t.api.addPod({ name: 'late-arrival' });
    await watch.waitForOutput(/late-arrival/, TIMEOUT_MS);
    expect(watch.stdout().split('\n').filter(Boolean)).toEqual([
      'pod/u1-web-1',
      'pod/u1-web-2',
      'pod/late-arrival',
    ]);
    expect(watch.child.exitCode).toBe(null);
  });

  it('follows logs: existing lines, then lines appended while it follows', async () => {
    const t = await setupClusterTunnel();
    t.api.setLog('u1-web-1', ['first line', 'second line']);
    const logs = spawnKubectl(['logs', '-f', 'u1-web-1'], { kubeconfig: t.kubeconfig });
    onTestFinished(() => logs.kill());
    await logs.waitForOutput(/second line/, TIMEOUT_MS);
    t.api.appendLog('u1-web-1', 'appended later');
    await logs.waitForOutput(/appended later/, TIMEOUT_MS);
    expect(logs.stdout()).toBe('first line\nsecond line\nappended later\n');
  });

  it('execs with stdin echoed back over the WebSocket exec protocol', async () => {
    const t = await setupClusterTunnel();
    const input = Buffer.alloc(300_000, 'tunnel-exec ').toString();
    const result = await runKubectl(['exec', '-i', 'u1-web-1', '--', 'cat'], {
      kubeconfig: t.kubeconfig,
      input,
      timeoutMs: TIMEOUT_MS,
    });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout.length).toBe(input.length);
    expect(result.stdout === input).toBe(true);
    expect(
      t.api.seenRequests.some((r) => r.includes('/pods/u1-web-1/exec?') && r.endsWith('(upgrade)')),
    ).toBe(true);
  });

  it('returns an 8 MiB object byte-identical', async () => {
    const t = await setupClusterTunnel();
    const big = t.api.bigObject(8 * 1024 * 1024);
    const result = await runKubectl(['get', '--raw', big.path], {
      kubeconfig: t.kubeconfig,
      timeoutMs: TIMEOUT_MS,
    });
    expect(result.code).toBe(0);
    expect(result.stdoutBytes.length).toBe(big.sizeBytes);
    expect(createHash('sha256').update(result.stdoutBytes).digest('hex')).toBe(big.sha256);
    expect(JSON.parse(result.stdout)).toMatchObject({ kind: 'ConfigMap', metadata: { name: 'big' } });
  });
});
