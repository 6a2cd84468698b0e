/**
 * The `tcp` route mode, driven as a user would: `tunnel-server start --tcp-route
 * cluster-u1-db=127.0.0.1:<port>` and a real agent serving route `db`; plain TCP clients connect
 * to that port. Bytes arrive intact both ways, half-close and server-speaks-first protocols
 * work, kubectl reaches the API server by address, and refusals are TCP resets with a logged code.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { findKubectl, runKubectl } from '../helpers/kubectl.js';
import { setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import { readAtLeast, readToEnd, sha256, withDeadline } from '../helpers/streams.js';
import {
  createToken,
  freePort,
  startAgent,
  startServer,
  tunnelKubeconfig,
  writeTokenFile,
  type ServerHandle,
} from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';

const TIMEOUT_MS = 20_000;

beforeAll(() => {
  findKubectl();
});

/**
 * A TCP target the test controls: `onConnection` gets every socket the agent opens (user
 * connections, and the spare the agent keeps while the route is busy).
 */
async function startTarget(onConnection: (socket: net.Socket) => void): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  );
  return (server.address() as net.AddressInfo).port;
}

/** Echoes everything, ending its side once the user has ended theirs. */
function echo(socket: net.Socket): void {
  socket.on('error', () => undefined);
  socket.pipe(socket);
}

/** A server with a TCP route on a port the kernel picks (port 0): the start log names it. */
async function serverWithTcpRoute(label: string): Promise<{ server: ServerHandle; routePort: number }> {
  const server = await startServer({ args: ['--tcp-route', `${label}=127.0.0.1:0`] });
  const line = await server.proc.waitForLog((l) => l.msg === 'tcp route listening' && l.route === label);
  const routePort = Number(/:(\d+)$/.exec(String(line.listen))?.[1]);
  expect(routePort).toBeGreaterThan(0);
  return { server, routePort };
}

async function agentFor(server: ServerHandle, uid: string, routes: string[]): Promise<void> {
  const dir = await tempDir();
  const tokenFile = await writeTokenFile(dir, await createToken(server.dataDir, uid));
  await startAgent({ server, tokenFile, routes, agentId: `agent-${uid}` });
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => resolve(socket));
    socket.once('error', reject);
    onTestFinished(() => void socket.destroy());
  });
}

/**
 * Connects and resolves with how the server ended the connection: its error code, or '' for a
 * clean end. The server may reset before the connect callback runs (then connect itself fails
 * with ECONNRESET): either way is the same answer, so this does not wait for 'connect' first.
 */
function refusal(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    onTestFinished(() => void socket.destroy());
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    socket.once('end', () => resolve(''));
    socket.resume();
  });
}

/** Resolves with the error code the socket ends with ('' for a clean end). */
function outcome(socket: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    socket.once('end', () => resolve(''));
    socket.resume();
  });
}

describe('a TCP route', () => {
  it('carries 8 MiB each way intact, with half-close, to the target the agent configured', async () => {
    const { server, routePort } = await serverWithTcpRoute('cluster-u1-db');
    const targetPort = await startTarget(echo);
    await agentFor(server, 'u1', [`db=127.0.0.1:${targetPort}`]);
    const socket = await connect(routePort);
    const payload = randomBytes(8 * 1024 * 1024);
    const received = readToEnd(socket);
    socket.end(payload); // half-close: the echo only ends after it has seen our FIN
    const echoed = await withDeadline(received, TIMEOUT_MS, 'the echo');
    expect(echoed.length).toBe(payload.length);
    expect(sha256(echoed)).toBe(sha256(payload));
    const closed = await server.proc.waitForLog(
      (l) => l.msg === 'user connection closed' && l.route === 'cluster-u1-db',
    );
    expect(closed).toMatchObject({ mode: 'tcp', bytesIn: payload.length, bytesOut: payload.length });
    const metrics = await fetch(`http://127.0.0.1:${server.adminPort}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/tunnel_connections_total\{mode="tcp",outcome="forwarded"\} 1/);
    const status = (await fetch(`http://127.0.0.1:${server.adminPort}/status`).then((r) => r.json())) as {
      modes: { tcp: { routes: unknown[] } };
    };
    expect(status.modes.tcp.routes).toEqual([
      { route: 'cluster-u1-db', listen: `127.0.0.1:${routePort}`, connections: 0, served: true },
    ]);
  });

  it('works for a protocol where the server speaks first (a banner before any user byte)', async () => {
    const { server, routePort } = await serverWithTcpRoute('cluster-u1-ssh');
    const targetPort = await startTarget((socket) => {
      socket.on('error', () => undefined);
      socket.write('SSH-2.0-target\r\n');
      socket.on('data', (d: Buffer) => socket.end(`got ${d.toString()}`));
    });
    await agentFor(server, 'u1', [`ssh=127.0.0.1:${targetPort}`]);
    const socket = await connect(routePort);
    const banner = await withDeadline(readAtLeast(socket, 16), TIMEOUT_MS, 'the banner');
    expect(banner.toString()).toBe('SSH-2.0-target\r\n');
    const rest = readToEnd(socket);
    socket.resume(); // readAtLeast left it paused
    socket.write('hello');
    expect((await withDeadline(rest, TIMEOUT_MS, 'the answer')).toString()).toBe('got hello');
  });

  it('lets kubectl reach the API server by address: TLS still ends at the API server', async () => {
    const { server, routePort } = await serverWithTcpRoute('cluster-u1');
    const t = await setupClusterTunnel({ server });
    // Same kubeconfig as through the public port, but its server is the TCP route's address.
    const user = await t.api.issueClientCert('bob-u1', ['system:masters']);
    const kubeconfig = await tunnelKubeconfig(await tempDir(), {
      cluster: 'u1',
      port: routePort,
      caPem: t.api.caCertPem,
      certPem: user.certPem,
      keyPem: user.keyPem,
    });
    const result = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: TIMEOUT_MS });
    expect(result.stderr).toBe('');
    expect(result.stdout.split('\n').filter(Boolean)).toEqual(['pod/u1-web-1', 'pod/u1-web-2']);
    expect(t.api.seenIdentities).toContain('bob-u1');
  });

  it('resets the user connection when no agent holds the label, and logs why', async () => {
    const { server, routePort } = await serverWithTcpRoute('cluster-nobody-db');
    expect(await withDeadline(refusal(routePort), TIMEOUT_MS, 'the reset')).toBe('ECONNRESET');
    const refused = await server.proc.waitForLog((l) => l.msg === 'user connection refused');
    expect(refused).toMatchObject({ mode: 'tcp', route: 'cluster-nobody-db', code: 'TUN_ERR_NO_ROUTE' });
    const metrics = await fetch(`http://127.0.0.1:${server.adminPort}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/tunnel_connections_total\{mode="tcp",outcome="no-agent"\} 1/);
  });

  it("resets the user connection when the agent cannot reach its target, with the agent's code", async () => {
    const { server, routePort } = await serverWithTcpRoute('cluster-u1-db');
    const closedPort = await freePort(); // nothing listens there
    await agentFor(server, 'u1', [`db=127.0.0.1:${closedPort}`]);
    expect(await withDeadline(refusal(routePort), TIMEOUT_MS, 'the reset')).toBe('ECONNRESET');
    const refused = await server.proc.waitForLog((l) => l.msg === 'user connection refused');
    expect(refused).toMatchObject({ mode: 'tcp', code: 'TUN_ERR_DIAL_FAILED' });
  });

  it('passes a reset by the target on to the user as a reset, not as a clean end', async () => {
    const { server, routePort } = await serverWithTcpRoute('cluster-u1-db');
    let resetTarget = (): void => undefined;
    const targetPort = await startTarget((socket) => {
      socket.on('error', () => undefined);
      socket.once('data', () => {
        socket.write('partial');
        resetTarget = () => socket.resetAndDestroy();
      });
    });
    await agentFor(server, 'u1', [`db=127.0.0.1:${targetPort}`]);
    const socket = await connect(routePort);
    socket.write('query');
    // The user has read what came before the reset (a reset that lands on unread bytes may
    // surface as a plain EOF in the kernel, even on a direct connection).
    expect((await withDeadline(readAtLeast(socket, 7), TIMEOUT_MS, 'the partial answer')).toString()).toBe(
      'partial',
    );
    const result = outcome(socket);
    resetTarget();
    expect(await withDeadline(result, TIMEOUT_MS, 'the reset')).toBe('ECONNRESET');
    const closed = await server.proc.waitForLog((l) => l.msg === 'user connection closed');
    expect(closed).toMatchObject({ mode: 'tcp', bytesIn: 5, bytesOut: 7 });
  });

  it('only an agent of the owning cluster can serve it: a foreign agent never gets its streams', async () => {
    const { server, routePort } = await serverWithTcpRoute('cluster-u1-db');
    const targetPort = await startTarget(echo);
    const dir = await tempDir();
    const foreignToken = await writeTokenFile(dir, await createToken(server.dataDir, 'u2'));
    // Agent u2 claims route `db` of its own cluster: cluster-u2-db, never cluster-u1-db.
    await startAgent({
      server,
      tokenFile: foreignToken,
      routes: [`db=127.0.0.1:${targetPort}`],
      agentId: 'agent-u2',
    });
    expect(await withDeadline(refusal(routePort), TIMEOUT_MS, 'the reset')).toBe('ECONNRESET');
    await server.proc.waitForLog((l) => l.msg === 'user connection refused' && l.code === 'TUN_ERR_NO_ROUTE');
  });
});
