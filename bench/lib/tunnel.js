/**
 * cluster-tunnel as the user runs it: `tunnel-server start` and `tunnel-client` as separate
 * processes (the built CLIs), the agent dialing wss://…/connect with a token minted by
 * `tunnel-server token create`, and a route `apiserver` (label cluster-bench) to the upstream.
 *
 * Both run at log level warn: the server logs every user connection at info, which would be
 * measured as tunnel cost (sshd logs nothing per connection either). Readiness comes from the
 * admin port (/healthz, then /status listing the agent), not from log lines.
 *
 * For the raw-TCP figures the agent also serves a route `raw` (label cluster-bench-raw) to the raw
 * upstream, and the server gets `--tcp-route cluster-bench-raw=127.0.0.1:<port>`: it listens on
 * that port and carries each accepted TCP connection as a stream to the agent holding the label.
 * Builds without --tcp-route still run every TLS path; the raw tunnel path is then skipped.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort, startChild, waitUntil } from './procs.js';

const execFileAsync = promisify(execFile);
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const serverBin = (root) => path.join(root, 'packages/server/dist/bin.js');
export const clientBin = (root) => path.join(root, 'packages/client/dist/bin.js');
export const SERVER_BIN = serverBin(ROOT);
export const CLUSTER_ID = 'bench';
export const ROUTE_LABEL = `cluster-${CLUSTER_ID}`;
/** The agent's route to the raw upstream, and the label the server's TCP route names. */
export const RAW_ROUTE_NAME = 'raw';
export const RAW_ROUTE_LABEL = `cluster-${CLUSTER_ID}-${RAW_ROUTE_NAME}`;
/** pid → process name of every tunnel process started under --cpu-prof (for the profile summary). */
export const profiledPids = {};

/** Node flags that make a process write a .cpuprofile into `dir` when it exits (not allowed in NODE_OPTIONS on Node 20). */
function profileArgs(dir) {
  return dir ? ['--cpu-prof', '--cpu-prof-dir', dir] : [];
}

/** Why the raw tunnel path is skipped when the build lacks the flag (reports and logs say this). */
export const NO_TCP_ROUTE =
  'this build of tunnel-server has no --tcp-route option (tunnel-server start --help); run npm run build once packages/server has it';

const serverHelp = new Map();

/**
 * Whether the build under `root` knows `tunnel-server start --<flag>` (asked once per build, from
 * its own --help), so the bench can run older builds (A/B) and skip what they lack with a clear
 * message instead of failing to start the server.
 */
function supportsFlag(root, flag) {
  if (!serverHelp.has(root)) {
    let help;
    try {
      help = execFileSync(process.execPath, [serverBin(root), 'start', '--help'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: 20_000,
      });
    } catch (err) {
      // Some CLIs exit non-zero after printing help; the text is what counts.
      help = `${err.stdout ?? ''}${err.stderr ?? ''}`;
    }
    serverHelp.set(root, help);
  }
  return new RegExp(`--${flag}\\b`).test(serverHelp.get(root));
}

/** Whether the build under `root` has the raw TCP route mode (`--tcp-route`). */
export function supportsTcpRoute(root = ROOT) {
  return supportsFlag(root, 'tcp-route');
}

/** GET on the admin port, bounded: resolves with { status, body }. */
function get(url, timeoutMs = 2_000) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

async function getJson(url) {
  const res = await get(url);
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  return JSON.parse(res.body);
}

/**
 * Starts a tunnel server (no agent). `profileDir` runs it under --cpu-prof. `maxAgents` raises
 * the server's limit (S5's idle agents). `tcpRoute` adds the raw TCP route (its port is
 * `tcpRoutePort` in the result). `port` and `adminPort` restart a server where it was (S9).
 */
export async function startTunnelServer({
  dir,
  name = 'tunnel',
  profileDir,
  maxAgents = 20_000,
  root = ROOT,
  nodeFlags = [],
  tcpRoute = false,
  port: fixedPort,
  adminPort: fixedAdminPort,
  extraArgs = [],
}) {
  const dataDir = path.join(dir, `${name}-data`);
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = fixedPort ?? (await freePort());
    const adminPort = fixedAdminPort ?? (await freePort());
    const tcpRoutePort = tcpRoute ? await freePort() : undefined;
    const child = startChild(`${name}-server`, process.execPath, [
      ...nodeFlags,
      ...profileArgs(profileDir),
      serverBin(root),
      'start',
      '--listen',
      `127.0.0.1:${port}`,
      '--admin-listen',
      `127.0.0.1:${adminPort}`,
      '--data-dir',
      dataDir,
      '--log-level',
      'warn',
      '--max-agents',
      String(maxAgents),
      '--drain-timeout-ms',
      '1000',
      // Every bench client connects from 127.0.0.1, hundreds at a time: the public port's
      // pending-connection caps (docs/SECURITY.md) are for the internet, not for this load.
      ...(supportsFlag(root, 'max-pending-connections-per-address')
        ? ['--max-pending-connections-per-address', '0', '--max-pending-connections', '100000']
        : []),
      ...(tcpRoute ? ['--tcp-route', `${RAW_ROUTE_LABEL}=127.0.0.1:${tcpRoutePort}`] : []),
      ...extraArgs,
    ]);
    if (profileDir) profiledPids[child.pid] = `${name}-server`;
    try {
      await waitUntil(
        'tunnel-server /healthz',
        async () => {
          if (!child.alive) throw new Error(`tunnel-server exited:\n${child.tail()}`);
          return (await get(`http://127.0.0.1:${adminPort}/healthz`)).status === 200;
        },
        20_000,
      );
      return { child, port, adminPort, tcpRoutePort, dataDir, caFile: path.join(dataDir, 'ca.crt'), root };
    } catch (err) {
      await child.stop();
      if (attempt === 2) throw err;
    }
  }
  throw new Error('unreachable');
}

/** A session cookie for an http route of the bench cluster, from `tunnel-server link create`. */
export async function createSessionCookie(server, route) {
  const { stdout } = await execFileAsync(process.execPath, [
    serverBin(server.root),
    'link',
    'create',
    ...[
      '--cluster',
      CLUSTER_ID,
      '--route',
      route,
      '--port',
      String(server.port),
      '--data-dir',
      server.dataDir,
    ],
  ]);
  return `tunnel_session=${new URL(stdout.trim()).searchParams.get('token')}`;
}

/** Mints an agent token with the real CLI. */
export async function createTokenFile(server, clusterId = CLUSTER_ID) {
  const { stdout } = await execFileAsync(process.execPath, [
    serverBin(server.root),
    'token',
    'create',
    '--cluster',
    clusterId,
    '--ttl',
    '24h',
    '--data-dir',
    server.dataDir,
  ]);
  const file = path.join(server.dataDir, `${clusterId}.token`);
  fs.writeFileSync(file, `${stdout.trim()}\n`, { mode: 0o600 });
  return file;
}

/**
 * Starts a tunnel-client with route apiserver → 127.0.0.1:<upstreamPort> (and raw →
 * 127.0.0.1:<rawUpstreamPort> when given), dialing the server directly or through `viaPort` (a
 * delay relay in front of the server's port); resolves once the server's /status lists its routes.
 */
export async function startAgent({
  server,
  name = 'tunnel',
  upstreamPort,
  rawUpstreamPort,
  viaPort,
  profileDir,
  nodeFlags = [],
  // More `name=target` routes (an http route's URL target, say), and their labels to wait for.
  extraRoutes = [],
}) {
  const labels = [
    ROUTE_LABEL,
    ...(rawUpstreamPort ? [RAW_ROUTE_LABEL] : []),
    ...extraRoutes.map((r) => `cluster-${CLUSTER_ID}-${r.slice(0, r.indexOf('='))}`),
  ];
  const tokenFile = await createTokenFile(server);
  const before = (await getJson(`http://127.0.0.1:${server.adminPort}/status`)).agents.length;
  const child = startChild(`${name}-agent`, process.execPath, [
    ...nodeFlags,
    ...profileArgs(profileDir),
    clientBin(server.root),
    '--server',
    `wss://127.0.0.1:${viaPort ?? server.port}/connect`,
    '--ca-file',
    server.caFile,
    '--token-file',
    tokenFile,
    '--route',
    `apiserver=127.0.0.1:${upstreamPort}`,
    ...(rawUpstreamPort ? ['--route', `${RAW_ROUTE_NAME}=127.0.0.1:${rawUpstreamPort}`] : []),
    ...extraRoutes.flatMap((r) => ['--route', r]),
    '--health-listen',
    'off',
    '--log-level',
    'warn',
    '--agent-id',
    `${name}-agent`,
    '--drain-timeout-ms',
    '1000',
  ]);
  if (profileDir) profiledPids[child.pid] = `${name}-agent`;
  await waitUntil(
    'the agent to register',
    async () => {
      if (!child.alive) throw new Error(`tunnel-client exited:\n${child.tail()}`);
      const status = await getJson(`http://127.0.0.1:${server.adminPort}/status`);
      return status.agents.length > before && labels.every((l) => status.routes.includes(l));
    },
    20_000,
  );
  return child;
}

/**
 * Server + agent; `beforeAgent(serverPort)` may return a port for the agent to dial instead.
 * With `rawUpstreamPort` and a build that has --tcp-route, the tunnel also carries raw TCP:
 * `rawPort` is where users connect for it (undefined otherwise).
 */
export async function startTunnel({
  dir,
  name = 'tunnel',
  upstreamPort,
  rawUpstreamPort,
  profileDir,
  beforeAgent,
  root = ROOT,
  nodeFlags = [],
}) {
  const raw = rawUpstreamPort !== undefined && supportsTcpRoute(root);
  const server = await startTunnelServer({ dir, name, profileDir, root, nodeFlags, tcpRoute: raw });
  const viaPort = beforeAgent ? await beforeAgent(server.port) : undefined;
  const agent = await startAgent({
    server,
    name,
    upstreamPort,
    rawUpstreamPort: raw ? rawUpstreamPort : undefined,
    viaPort,
    profileDir,
    nodeFlags,
  });
  return {
    server,
    agent,
    port: server.port,
    rawPort: server.tcpRoutePort,
    async stop() {
      // Agent first: the server's drain then has no agent to wait for. SIGTERM lets --cpu-prof write.
      await agent.stop(5_000);
      await server.child.stop(5_000);
    },
  };
}

/**
 * The server's own view of its memory, from prom-client's default metrics on the admin port:
 * V8 heap in use and external (ArrayBuffer) memory, in bytes. NaN when unavailable.
 */
export async function serverMemory(server) {
  try {
    const res = await get(`http://127.0.0.1:${server.adminPort}/metrics`, 5_000);
    const value = (name) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(res.body)?.[1] ?? NaN);
    return {
      heapUsed: value('nodejs_heap_size_used_bytes'),
      external: value('nodejs_external_memory_bytes'),
    };
  } catch {
    return { heapUsed: NaN, external: NaN };
  }
}
