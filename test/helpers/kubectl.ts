// Runs the real kubectl against a kubeconfig written for one test, isolated from the host:
// no ~/.kube, no KUBECONFIG, no proxy variables unless the caller passes them in `env`.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { stringify } from 'yaml';
import { withDeadline } from './streams.js';

export interface KubeconfigOptions {
  server: string;
  caPem: string;
  certPem?: string;
  keyPem?: string;
  token?: string;
  /** Sent as SNI and checked against the serving certificate instead of the URL host. */
  tlsServerName?: string;
}

export interface KubectlOptions {
  kubeconfig: string;
  /** Extra environment (e.g. HTTPS_PROXY); the base environment is only PATH and HOME. */
  env?: Record<string, string>;
}

export interface RunKubectlOptions extends KubectlOptions {
  input?: string | Buffer;
  timeoutMs: number;
}

export interface KubectlResult {
  /** Exit code; null when killed (timeout). */
  code: number | null;
  stdout: string;
  stdoutBytes: Buffer;
  stderr: string;
  timedOut: boolean;
}

export interface KubectlProcess {
  child: ChildProcess;
  stdout(): string;
  stdoutBytes(): Buffer;
  stderr(): string;
  /** Resolves once stdout+stderr match; rejects on timeout or exit without a match. */
  waitForOutput(pattern: RegExp, timeoutMs: number): Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL if still running; resolves when the process is gone. Idempotent. */
  kill(): Promise<void>;
}

const b64 = (pem: string): string => Buffer.from(pem).toString('base64');

const defaultSearchDirs = (): string[] => [
  '/usr/bin',
  ...(process.env.PATH ?? '').split(delimiter).filter(Boolean),
];

/** The kubectl binary, or a loud error: the kubectl e2e tests must not silently skip. */
export function findKubectl(dirs: string[] = defaultSearchDirs()): string {
  for (const dir of dirs) {
    const candidate = join(dir, 'kubectl');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  throw new Error(
    `kubectl not found (looked in ${dirs.join(', ')}): these end-to-end tests drive the real kubectl v1.32; install it`,
  );
}

/**
 * Writes `<dir>/kubeconfig` (YAML) with one cluster, user and context; returns its path.
 * With neither a client certificate nor a token, kubectl prompts for a username on stdin.
 */
export async function writeKubeconfig(dir: string, options: KubeconfigOptions): Promise<string> {
  const user: Record<string, string> = {};
  if (options.certPem !== undefined) user['client-certificate-data'] = b64(options.certPem);
  if (options.keyPem !== undefined) user['client-key-data'] = b64(options.keyPem);
  if (options.token !== undefined) user.token = options.token;
  const cluster: Record<string, string> = {
    server: options.server,
    'certificate-authority-data': b64(options.caPem),
  };
  if (options.tlsServerName !== undefined) cluster['tls-server-name'] = options.tlsServerName;
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster }],
    users: [{ name: 'test', user }],
    contexts: [{ name: 'test', context: { cluster: 'test', user: 'test', namespace: 'default' } }],
    'current-context': 'test',
    preferences: {},
  };
  await mkdir(dir, { recursive: true });
  const path = join(dir, 'kubeconfig');
  await writeFile(path, stringify(config), { mode: 0o600 });
  return path;
}

function startKubectl(args: string[], options: KubectlOptions): ChildProcess {
  const home = dirname(options.kubeconfig);
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, ...options.env };
  // The discovery cache lives beside the kubeconfig so tests never share one.
  const fullArgs = ['--kubeconfig', options.kubeconfig, '--cache-dir', join(home, 'cache'), ...args];
  return spawn(findKubectl(), fullArgs, { env, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Starts a long-running kubectl (watch, logs -f, exec); the caller must `kill()` it. */
export function spawnKubectl(args: string[], options: KubectlOptions): KubectlProcess {
  const child = startKubectl(args, options);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (chunk: Buffer) => out.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => err.push(chunk));
  const stdoutBytes = (): Buffer => Buffer.concat(out);
  const stdout = (): string => stdoutBytes().toString();
  const stderr = (): string => Buffer.concat(err).toString();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal }));
    child.once('error', () => resolve({ code: null, signal: null }));
  });
  let done = false;
  void exited.then(() => (done = true));

  function waitForOutput(pattern: RegExp, timeoutMs: number): Promise<string> {
    const output = (): string => `\nstdout: ${stdout()}\nstderr: ${stderr()}`;
    let check: () => void = () => undefined;
    let onExit: () => void = () => undefined;
    const matched = new Promise<string>((resolve, reject) => {
      check = () => {
        const text = stdout() + stderr();
        if (pattern.test(text)) resolve(text);
      };
      onExit = () => {
        check();
        reject(new Error(`kubectl exited before output matched ${pattern}${output()}`));
      };
      check();
      child.stdout?.on('data', check);
      child.stderr?.on('data', check);
      child.once('close', onExit);
    });
    return withDeadline(matched, timeoutMs, () => `output matching ${pattern}${output()}`).finally(() => {
      child.stdout?.off('data', check);
      child.stderr?.off('data', check);
      child.off('close', onExit);
    });
  }

  async function kill(): Promise<void> {
    if (!done) child.kill('SIGKILL');
    await exited;
  }

  return { child, stdout, stdoutBytes, stderr, waitForOutput, exited, kill };
}

/** Runs kubectl to completion, killing it after `timeoutMs`. */
export async function runKubectl(args: string[], options: RunKubectlOptions): Promise<KubectlResult> {
  const proc = spawnKubectl(args, options);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void proc.kill();
  }, options.timeoutMs);
  proc.child.stdin?.on('error', () => undefined); // kubectl may exit before reading its input
  proc.child.stdin?.end(options.input);
  try {
    const { code } = await proc.exited;
    const stdoutBytes = proc.stdoutBytes();
    return { code, stdout: stdoutBytes.toString(), stdoutBytes, stderr: proc.stderr(), timedOut };
  } finally {
    clearTimeout(timer);
    await proc.kill();
  }
}
