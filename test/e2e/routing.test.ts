/**
 * SNI routing on the public port, driven by real clients: curl for refused names, kubectl for
 * two isolated clusters, and a TLS client whose ClientHello arrives one byte per TCP segment.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import { findKubectl, runKubectl } from '../helpers/kubectl.js';
import { startServer } from '../helpers/tunnel.js';

const execFileAsync = promisify(execFile);
const TIMEOUT_MS = 20_000;

beforeAll(() => {
  findKubectl();
});

async function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync('curl', ['-sS', '--max-time', '10', ...args], {
      env: { PATH: process.env.PATH },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('names the server does not serve', () => {
  it('refuses an unknown hostname and a route without an agent at the TLS level, and counts them', async () => {
    const server = await startServer();
    const resolve = (host: string) => ['--resolve', `${host}:${server.port}:127.0.0.1`];
    const unknown = await curl([...resolve('www.example.com'), `https://www.example.com:${server.port}/`]);
    expect(unknown.code).toBe(35); // curl: TLS handshake failed
    expect(unknown.stderr).toMatch(/unrecognized name/i);
    const noAgent = await curl([
      ...resolve('cluster-nobody.proxy.localhost'),
      `https://cluster-nobody.proxy.localhost:${server.port}/`,
    ]);
    expect(noAgent.code).toBe(35);
    expect(noAgent.stderr).toMatch(/unrecognized name/i);
    // Never a plaintext page inside TLS: nothing was served.
    expect(unknown.stdout + noAgent.stdout).toBe('');
    const host = await server.proc.waitForLog((l) => l.msg === 'connection refused: unknown host');
    expect(host).toMatchObject({ serverName: 'www.example.com', code: 'TUN_ERR_UNKNOWN_HOST' });
    const route = await server.proc.waitForLog((l) => l.msg === 'user connection refused');
    expect(route).toMatchObject({ route: 'cluster-nobody', code: 'TUN_ERR_NO_ROUTE' });
    const metrics = await fetch(`http://127.0.0.1:${server.adminPort}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/tunnel_connections_total\{outcome="unknown-host"\} 1/);
    expect(metrics).toMatch(/tunnel_connections_total\{mode="passthrough",outcome="no-agent"\} 1/);
  });

  it("serves the server's own name with its certificate: health over TLS", async () => {
    const server = await startServer();
    const health = await curl([
      '--cacert',
      server.caFile,
      '--resolve',
      `proxy.localhost:${server.port}:127.0.0.1`,
      `https://proxy.localhost:${server.port}/healthz`,
    ]);
    expect(health).toMatchObject({ code: 0, stdout: 'ok\n' });
  });
});

describe('two clusters at once', () => {
  it("keep apart: each kubeconfig reaches only its own cluster's API server", async () => {
    const a = await setupClusterTunnel({ uid: 'a' });
    const b = await setupClusterTunnel({ uid: 'b', server: a.server });
    const podsA = await runKubectl(['get', 'pods', '-o', 'name'], {
      kubeconfig: a.kubeconfig,
      timeoutMs: TIMEOUT_MS,
    });
    const podsB = await runKubectl(['get', 'pods', '-o', 'name'], {
      kubeconfig: b.kubeconfig,
      timeoutMs: TIMEOUT_MS,
    });
    expect(podsA.stdout).toContain('pod/a-web-1');
    expect(podsA.stdout).not.toContain('b-web');
    expect(podsB.stdout).toContain('pod/b-web-1');
    expect(podsB.stdout).not.toContain('a-web');
    expect(a.api.seenIdentities.every((id) => id === 'alice-a')).toBe(true);
    expect(b.api.seenIdentities.every((id) => id === 'alice-b')).toBe(true);
    expect(a.api.seenIdentities.length).toBeGreaterThan(0);
    expect(b.api.seenIdentities.length).toBeGreaterThan(0);
  });
});

/** A socket wrapper that sends its first `slowBytes` one byte per TCP segment. */
class DribbleSocket extends Duplex {
  private sent = 0;
  constructor(
    private readonly socket: net.Socket,
    private readonly slowBytes: number,
  ) {
    super();
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.push(d));
    socket.on('end', () => this.push(null));
    socket.on('error', (e) => this.destroy(e));
  }
  override _read(): void {}
  override async _write(
    chunk: Buffer,
    _enc: BufferEncoding,
    cb: (err?: Error | null) => void,
  ): Promise<void> {
    let offset = 0;
    while (this.sent < this.slowBytes && offset < chunk.length) {
      this.socket.write(chunk.subarray(offset, offset + 1));
      offset++;
      this.sent++;
      // Let the byte leave as its own segment before the next one.
      await new Promise((r) => setTimeout(r, 1));
    }
    if (offset < chunk.length) this.socket.write(chunk.subarray(offset));
    cb();
  }
  override _final(cb: () => void): void {
    this.socket.end();
    cb();
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.socket.destroy();
    cb(err);
  }
}

describe('a ClientHello that arrives one byte per TCP segment', () => {
  it('still routes to the cluster and completes a verified TLS request to its API server', async () => {
    const t = await setupClusterTunnel();
    const user = await t.api.issueClientCert('slow-user', []);
    const raw = net.connect(t.server.port, '127.0.0.1');
    onTestFinished(() => void raw.destroy());
    await new Promise((r) => raw.once('connect', r));
    const secure = tls.connect({
      socket: new DribbleSocket(raw, 2_000),
      servername: 'cluster-u1.proxy.localhost',
      ca: t.api.caCertPem,
      cert: user.certPem,
      key: user.keyPem,
    });
    onTestFinished(() => void secure.destroy());
    await new Promise((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    expect(secure.authorized).toBe(true);
    secure.write('GET /version HTTP/1.1\r\nHost: cluster-u1.proxy.localhost\r\nConnection: close\r\n\r\n');
    let response = '';
    secure.on('data', (d: Buffer) => (response += d.toString()));
    await new Promise((r) => secure.once('end', r));
    expect(response).toMatch(/^HTTP\/1.1 200/);
    expect(response).toContain('gitVersion');
    expect(t.api.seenIdentities).toContain('slow-user');
    expect(await readFile(t.tokenFile, 'utf8')).not.toBe('');
  });
});
