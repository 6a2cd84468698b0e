/**
 * Starts the real CLIs (`tunnel-server`, `tunnel-client`) as child processes on 127.0.0.1, reads
 * their JSON log lines, and stops them when the test finishes.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { defer } from './cleanup.js';
import { withDeadline } from './streams.js';
import { tempDir } from './temp-dir.js';

const execFileAsync = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '../..');
export const SERVER_BIN = join(ROOT, 'packages/server/dist/bin.js');
export const CLIENT_BIN = join(ROOT, 'packages/client/dist/bin.js');

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export class CliProcess {
  readonly logs: LogLine[] = [];
  readonly stderr: string[] = [];
  private waiters: Array<() => void> = [];
  readonly exited: Promise<number | null>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        this.stderr.push(line);
      }
      for (const w of this.waiters) w();
    });
    createInterface({ input: child.stderr! }).on('line', (line) => {
      this.stderr.push(line);
      for (const w of this.waiters) w();
    });
    this.exited = new Promise((r) => child.once('exit', (code) => r(code)));
  }

  /** Resolves with the first log line (past or future) matching; fails after `timeoutMs`. */
  waitForLog(match: (l: LogLine) => boolean, timeoutMs = 15_000, after = 0): Promise<LogLine> {
    const seen = this.logs.slice(after).find(match);
    if (seen) return Promise.resolve(seen);
    let waiter: () => void = () => undefined;
    const found = new Promise<LogLine>((resolve) => {
      waiter = () => {
        const line = this.logs.slice(after).find(match);
        if (line) resolve(line);
      };
      this.waiters.push(waiter);
    });
    const lastLines = (): string =>
      `${this.name}: no matching log line; last lines:\n` +
      this.logs
        .slice(-15)
        .map((l) => JSON.stringify(l))
        .join('\n') +
      `\n${this.stderr.slice(-10).join('\n')}`;
    return withDeadline(found, timeoutMs, lastLines).finally(() => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
    });
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 5_000): Promise<number | null> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

function startCli(
  name: string,
  bin: string,
  args: string[],
  env: Record<string, string | undefined> = {},
): CliProcess {
  const child = spawn(process.execPath, [bin, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // No proxy from the developer's environment leaks in; tests pass one explicitly.
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
  });
  const proc = new CliProcess(name, child);
  defer(async () => {
    await proc.stop(2_000);
  });
  return proc;
}

/**
 * A port free on 127.0.0.1 right now, for listeners whose port is configured up front (TCP
 * routes). Another process could take it before it is used: acceptable on a test machine.
 */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface ServerHandle {
  proc: CliProcess;
  port: number;
  adminPort: number | undefined;
  dataDir: string;
  caFile: string;
  url: string;
}

/** Starts `tunnel-server start` and waits until it listens. */
export async function startServer(
  options: { dataDir?: string; port?: number; args?: string[]; env?: Record<string, string> } = {},
): Promise<ServerHandle> {
  const dataDir = options.dataDir ?? tempDir('tunnel-server-');
  const proc = startCli(
    'tunnel-server',
    SERVER_BIN,
    [
      'start',
      '--listen',
      `127.0.0.1:${options.port ?? 0}`,
      '--admin-listen',
      '127.0.0.1:0',
      '--data-dir',
      dataDir,
      '--log-level',
      'debug',
      '--drain-timeout-ms',
      '2000',
      // No wait for agents unless a test asks (a later --agent-wait-ms wins): refusals are at once.
      '--agent-wait-ms',
      '0',
      ...(options.args ?? []),
    ],
    options.env,
  );
  const line = await proc.waitForLog((l) => l.msg === 'tunnel server listening');
  const port = (line.listen as { port: number }).port;
  const adminPort = (line.admin as { port: number } | undefined)?.port;
  return {
    proc,
    port,
    adminPort,
    dataDir,
    caFile: join(dataDir, 'ca.crt'),
    url: `wss://127.0.0.1:${port}/connect`,
  };
}

/** Mints a token with the real CLI (`tunnel-server token create`). */
export async function createToken(dataDir: string, cluster: string, ttl = '1h'): Promise<string> {
  const { stdout } = await execFileAsync(process.execPath, [
    SERVER_BIN,
    'token',
    'create',
    '--cluster',
    cluster,
    '--ttl',
    ttl,
    '--data-dir',
    dataDir,
  ]);
  return stdout.trim();
}

/** A link to an http route, made with the real CLI (`tunnel-server link create`). */
export async function createLink(
  server: ServerHandle,
  cluster: string,
  route: string,
  user: string,
): Promise<string> {
  const { stdout } = await execFileAsync(process.execPath, [
    SERVER_BIN,
    'link',
    'create',
    ...['--cluster', cluster, '--route', route, '--user', user, '--port', String(server.port)],
    ...['--data-dir', server.dataDir],
  ]);
  return stdout.trim();
}

/** A server process and an agent process of `cluster` serving `routes` (`name=target`). */
export async function startServerAndAgent(
  cluster: string,
  routes: string[],
  serverArgs: string[] = [],
): Promise<ServerHandle> {
  const server = await startServer({ args: serverArgs });
  const tokenFile = await writeTokenFile(tempDir(), await createToken(server.dataDir, cluster));
  await startAgent({ server, tokenFile, routes, agentId: `agent-${cluster}` });
  return server;
}

export async function writeTokenFile(dir: string, token: string, name = 'agent.token'): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  return file;
}

export interface AgentOptions {
  server: ServerHandle;
  tokenFile: string;
  routes: string[];
  agentId?: string;
  env?: Record<string, string>;
  args?: string[];
}

/** Starts `tunnel-client` against a server; resolves once it has registered. */
export async function startAgent(o: AgentOptions, waitRegistered = true): Promise<CliProcess> {
  const args = [
    '--server',
    o.server.url,
    '--ca-file',
    o.server.caFile,
    '--token-file',
    o.tokenFile,
    '--health-listen',
    'off',
    '--log-level',
    'debug',
    '--backoff-initial-ms',
    '100',
    '--backoff-max-ms',
    '1000',
    '--auth-retry-ms',
    '1000',
    '--drain-timeout-ms',
    '2000',
    ...(o.agentId ? ['--agent-id', o.agentId] : []),
    ...o.routes.flatMap((r) => ['--route', r]),
    ...(o.args ?? []),
  ];
  const proc = startCli(`tunnel-client ${o.agentId ?? ''}`.trim(), CLIENT_BIN, args, o.env);
  if (waitRegistered) await proc.waitForLog((l) => l.msg === 'agent registered');
  return proc;
}

/** The server replicas an agent process holds a session to now: registered, and not yet ended. */
export function liveServers(agent: CliProcess): string[] {
  const up = new Map<string, number>();
  for (const l of agent.logs) {
    const id = l.serverId as string;
    if (l.msg === 'agent registered') up.set(id, (up.get(id) ?? 0) + 1);
    if (l.msg === 'session ended') up.set(id, (up.get(id) ?? 0) - 1);
  }
  return [...up]
    .filter(([, n]) => n > 0)
    .map(([id]) => id)
    .sort();
}

/**
 * Prints a kubeconfig with the real CLI (`tunnel-server kubeconfig`). Passthrough trusts
 * `caPem` (the API server's CA); agent-tls trusts the route CA in `dataDir` (the server's).
 */
export async function tunnelKubeconfig(
  dir: string,
  o: {
    cluster: string;
    port: number;
    caPem?: string;
    certPem?: string;
    keyPem?: string;
    token?: string;
    mode?: 'passthrough' | 'agent-tls';
    dataDir?: string;
    exec?: { command: string; args: string[] };
  },
): Promise<string> {
  const args = [
    SERVER_BIN,
    'kubeconfig',
    '--cluster',
    o.cluster,
    '--server-url',
    `https://127.0.0.1:${o.port}`,
  ];
  if (o.mode !== undefined) args.push('--mode', o.mode);
  if (o.dataDir !== undefined) args.push('--data-dir', o.dataDir);
  if (o.caPem !== undefined) {
    const caFile = join(dir, `${o.cluster}-apiserver-ca.pem`);
    await writeFile(caFile, o.caPem);
    args.push('--ca-file', caFile);
  }
  if (o.certPem && o.keyPem) {
    await writeFile(join(dir, `${o.cluster}-client.crt`), o.certPem);
    await writeFile(join(dir, `${o.cluster}-client.key`), o.keyPem, { mode: 0o600 });
    args.push(
      '--client-cert',
      join(dir, `${o.cluster}-client.crt`),
      '--client-key',
      join(dir, `${o.cluster}-client.key`),
    );
  }
  if (o.token) args.push('--token', o.token);
  if (o.exec) args.push('--exec-command', o.exec.command, ...o.exec.args.flatMap((a) => ['--exec-arg', a]));
  const { stdout } = await execFileAsync(process.execPath, args);
  const file = join(dir, `${o.cluster}.kubeconfig`);
  await writeFile(file, stdout, { mode: 0o600 });
  return file;
}

export async function readText(path: string): Promise<string> {
  return readFile(path, 'utf8');
}
