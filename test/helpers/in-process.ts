/**
 * The real server and the real agent as objects in the test's own process (no spawn): a
 * TunnelServer on 127.0.0.1 port 0 with its data directory in a temp dir, and TunnelAgents
 * dialing it over real TLS, WebSocket and yamux. Routing is observed through the server's
 * 'user-connection' events and return values, not log lines. Everything is stopped by the test.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { defer } from './cleanup.js';
import { createLogger, type Logger } from '@cluster-tunnel/config';
import { TunnelAgent, resolveClientConfig } from '@cluster-tunnel/client';
import {
  TunnelServer,
  createToken,
  resolveServerConfig,
  SIGNING_KEY_FILES,
  type UserConnectionEvent,
} from '@cluster-tunnel/server';
import type { Clock } from '@cluster-tunnel/protocol';
import { withDeadline } from './streams.js';
import { tempDir } from './temp-dir.js';

/** A log line as pino writes it. */
export type LogRecord = Record<string, unknown> & { msg: string; level: number };

/**
 * A logger that writes nowhere but `lines`, when given (set TUNNEL_TEST_LOG=1 to see the lines
 * on stderr).
 */
export function quietLogger(name: string, lines?: LogRecord[]): Logger {
  const sink = new Writable({
    write: (chunk: Buffer, _encoding, cb) => {
      if (lines)
        for (const text of chunk.toString('utf8').split('\n'))
          if (text) lines.push(JSON.parse(text) as LogRecord);
      cb();
    },
  });
  const destination = process.env.TUNNEL_TEST_LOG ? process.stderr : sink;
  return createLogger({ name, level: 'debug', format: 'json', destination });
}

export interface InProcessServer {
  server: TunnelServer;
  dataDir: string;
  /** The public port. */
  port: number;
  /** The CA that signed the server certificate (the agent trusts it). */
  caFile: string;
  /** Every 'user-connection' event, in order. */
  events: UserConnectionEvent[];
  /** Every line the server logged, parsed. */
  logs: LogRecord[];
  /** The next event matching `match` (one already seen counts). */
  nextEvent(match: (e: UserConnectionEvent) => boolean, timeoutMs?: number): Promise<UserConnectionEvent>;
  /** A token for an agent of `cluster`, signed with this server's key; `issuedAtMs` backdates it. */
  token(cluster: string, o?: { ttlMs?: number; issuedAtMs?: number }): Promise<string>;
}

/** Starts a TunnelServer with `args` (server flags) on top of loopback defaults. */
export async function startInProcessServer(
  args: readonly string[] = [],
  deps: { now?: () => number } = {},
): Promise<InProcessServer> {
  const dataDir = tempDir('tunnel-server-');
  const config = resolveServerConfig({
    // No wait for agents unless a test asks (--agent-wait-ms later in args wins): a refusal is at once.
    argv: [
      '--listen',
      '127.0.0.1:0',
      '--admin-listen',
      'off',
      '--data-dir',
      dataDir,
      '--agent-wait-ms',
      '0',
      ...args,
    ],
    env: {},
    cwd: dataDir,
    hostname: 'server-test',
  });
  const logs: LogRecord[] = [];
  const server = new TunnelServer(config, { log: quietLogger('tunnel-server', logs), ...deps });
  const events: UserConnectionEvent[] = [];
  const waiters = new Set<() => void>();
  server.on('user-connection', (e) => {
    events.push(e);
    for (const w of waiters) w();
  });
  defer(() => server.destroy());
  await server.start();
  // A --data-dir in `args` wins over the fresh one (a server restarted on its old directory).
  const privateKeyPem = await readFile(join(config.dataDir, SIGNING_KEY_FILES.privateKey), 'utf8');
  return {
    server,
    dataDir: config.dataDir,
    port: server.address.port,
    caFile: join(config.dataDir, 'ca.crt'),
    events,
    logs,
    nextEvent(match, timeoutMs = 10_000) {
      const seen = events.find(match);
      if (seen) return Promise.resolve(seen);
      let waiter: () => void = () => undefined;
      const found = new Promise<UserConnectionEvent>((resolve) => {
        waiter = () => {
          const e = events.find(match);
          if (e) resolve(e);
        };
        waiters.add(waiter);
      });
      return withDeadline(found, timeoutMs, 'a user-connection event').finally(() => waiters.delete(waiter));
    },
    token: (cluster) =>
      createToken({ privateKeyPem, clusterId: cluster, audience: config.domain, ttlMs: 3_600_000 }),
  };
}

export interface InProcessAgentOptions {
  cluster: string;
  /** `name=host:port` routes. */
  routes: readonly string[];
  agentId?: string;
  /** More client flags. */
  args?: readonly string[];
  /** Timers and wall-clock time of the agent (TunnelAgentOptions). */
  clock?: Clock;
  now?: () => number;
  /** Every line the agent logs, parsed, is pushed here. */
  logs?: LogRecord[];
}

/** Starts a TunnelAgent against `s` and resolves once the server has registered it. */
export async function startInProcessAgent(
  s: InProcessServer,
  o: InProcessAgentOptions,
): Promise<TunnelAgent> {
  const dir = tempDir('tunnel-agent-');
  const tokenFile = join(dir, 'agent.token');
  await writeFile(tokenFile, `${await s.token(o.cluster)}\n`, { mode: 0o600 });
  const agentId = o.agentId ?? `agent-${o.cluster}`;
  const config = resolveClientConfig({
    argv: [
      '--server',
      `wss://127.0.0.1:${s.port}/connect`,
      '--ca-file',
      s.caFile,
      '--token-file',
      tokenFile,
      '--agent-id',
      agentId,
      '--health-listen',
      'off',
      ...o.routes.flatMap((r) => ['--route', r]),
      ...(o.args ?? []),
    ],
    env: {},
    cwd: dir,
    hostname: agentId,
  });
  const agent = new TunnelAgent(config, {
    logger: quietLogger('tunnel-client', o.logs),
    ...(o.clock === undefined ? {} : { clock: o.clock }),
    ...(o.now === undefined ? {} : { now: o.now }),
  });
  defer(() => agent.destroy());
  const registered = new Promise<void>((resolve) => agent.once('registered', () => resolve()));
  await agent.start();
  await withDeadline(registered, 10_000, `agent ${agentId} registered`);
  return agent;
}
