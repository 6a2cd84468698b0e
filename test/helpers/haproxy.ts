/**
 * A real L4 load balancer for tests: Debian's haproxy in TCP mode, round robin over tunnel-server
 * replicas, each health-checked on its admin port's /readyz (as a Kubernetes Service follows
 * readiness), with connect retries redispatched to another replica. Started in the foreground on
 * 127.0.0.1 and stopped with the test (cleanup.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { defer } from './cleanup.js';
import { pollUntil } from './streams.js';
import { tempDir } from './temp-dir.js';
import { freePort } from './tunnel.js';

export const HAPROXY = '/usr/sbin/haproxy';

export interface Backend {
  /** The replica's public port. */
  port: number;
  /** Its admin port, where haproxy asks /readyz. */
  adminPort: number;
}

export interface Haproxy {
  readonly port: number;
  readonly stderr: string[];
}

/** How often haproxy checks each replica, and how many failures mark one down. */
export const CHECK_INTERVAL_MS = 200;
export const CHECK_FALL = 2;

export async function startHaproxy(backends: readonly Backend[]): Promise<Haproxy> {
  if (!existsSync(HAPROXY)) {
    throw new Error(
      `${HAPROXY} is missing: the test setup installs Debian's haproxy (test/setup/system-packages.ts)`,
    );
  }
  const port = await freePort();
  const config = [
    'global',
    '  maxconn 4096',
    'defaults',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout client 1h',
    '  timeout server 1h',
    // A replica that refuses the connect (stopped, killed): try again on another one.
    '  retries 3',
    '  option redispatch',
    'frontend public',
    `  bind 127.0.0.1:${port}`,
    '  default_backend replicas',
    'backend replicas',
    '  balance roundrobin',
    '  option httpchk',
    '  http-check send meth GET uri /readyz',
    `  default-server inter ${CHECK_INTERVAL_MS}ms fall ${CHECK_FALL} rise 1`,
    ...backends.map((b, i) => `  server r${i} 127.0.0.1:${b.port} check port ${b.adminPort}`),
    '',
  ].join('\n');
  const file = join(tempDir('haproxy-'), 'haproxy.cfg');
  await writeFile(file, config);
  const child = spawn(HAPROXY, ['-db', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr: string[] = [];
  child.stderr!.on('data', (d: Buffer) => stderr.push(d.toString()));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  defer(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  await pollUntil(
    async () => child.exitCode === null && (await accepts(port)),
    10_000,
    `haproxy listening on ${port}`,
  );
  return { port, stderr };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
