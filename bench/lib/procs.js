/**
 * Child processes and temporary directories of one bench run. Every process the bench starts is
 * registered here and killed at the end, on SIGINT/SIGTERM and on a crash; every temporary
 * directory is removed. Processes are only ever signalled by their own pid (and the pids of
 * their descendants, e.g. sshd's per-connection children).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { descendantsOf } from './sys.js';

const children = new Set();
const tempDirs = new Set();
let handlersInstalled = false;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A started child: its pid, the last lines of its output, and a way to wait for a line. */
export class Child {
  constructor(name, proc) {
    this.name = name;
    this.proc = proc;
    this.pid = proc.pid;
    this.lines = [];
    this.waiters = [];
    this.exitCode = undefined;
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exitCode = code ?? signal;
        children.delete(this);
        for (const w of this.waiters) w();
        resolve(this.exitCode);
      });
    });
    const onLine = (line) => {
      this.lines.push(line);
      if (this.lines.length > 200) this.lines.splice(0, this.lines.length - 100);
      for (const w of this.waiters) w();
    };
    if (proc.stdout) createInterface({ input: proc.stdout }).on('line', onLine);
    if (proc.stderr) createInterface({ input: proc.stderr }).on('line', onLine);
  }

  get alive() {
    return this.exitCode === undefined;
  }

  tail(n = 15) {
    return this.lines.slice(-n).join('\n');
  }

  /** Resolves with the first output line (past or future) matching `re`; rejects on exit or timeout. */
  waitForLine(re, timeoutMs = 15_000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const line = this.lines.find((l) => re.test(l));
        if (line !== undefined) return finish(null, line);
        if (!this.alive) return finish(new Error(`${this.name} exited (${this.exitCode}):\n${this.tail()}`));
      };
      const finish = (err, line) => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
        if (err) reject(err);
        else resolve(line);
      };
      const timer = setTimeout(
        () =>
          finish(new Error(`${this.name}: no line matching ${re} within ${timeoutMs} ms:\n${this.tail()}`)),
        timeoutMs,
      );
      this.waiters.push(check);
      check();
    });
  }

  /** SIGTERM (and its descendants), then SIGKILL after `graceMs`. */
  async stop(graceMs = 3_000) {
    if (!this.alive) return this.exitCode;
    const family = [this.pid, ...descendantsOf(this.pid)];
    signalAll(family, 'SIGTERM');
    const timer = setTimeout(() => signalAll([this.pid, ...descendantsOf(this.pid)], 'SIGKILL'), graceMs);
    const code = await this.exited;
    clearTimeout(timer);
    // Descendants that outlived their parent (sshd session processes) go too.
    signalAll(
      family.filter((p) => p !== this.pid),
      'SIGKILL',
    );
    return code;
  }
}

function signalAll(pids, signal) {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/**
 * Starts a process whose lifetime the bench owns. `stdio` defaults to piped output (kept as the
 * last lines for error messages); the environment is the bench's minus proxies unless `env` is given.
 */
export function startChild(name, command, args, options = {}) {
  const env = options.env ?? cleanEnv();
  const proc = spawn(command, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
    cwd: options.cwd,
  });
  return adopt(name, proc);
}

/** Registers a process started elsewhere (e.g. with fork) so it is stopped with the rest. */
export function adopt(name, proc) {
  installHandlers();
  const child = new Child(name, proc);
  children.add(child);
  proc.on('error', () => undefined);
  return child;
}

/** The bench's environment without proxies or NODE_OPTIONS (profiling passes its own). */
export function cleanEnv(extra = {}) {
  const env = { ...process.env };
  for (const key of Object.keys(env)) {
    if (/^(https?_proxy|no_proxy|all_proxy|node_options)$/i.test(key)) delete env[key];
  }
  return { ...env, ...extra };
}

export async function stopAll() {
  await Promise.all([...children].map((c) => c.stop(2_000)));
}

export function makeTempDir(prefix) {
  installHandlers();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

function removeTempDirs() {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** Stops every child and removes temporary directories; safe to call more than once. */
export async function cleanup() {
  await stopAll();
  removeTempDirs();
}

function installHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  // Last resort: whatever is still running when the bench exits is killed, synchronously.
  process.on('exit', () => {
    for (const c of children) signalAll([c.pid, ...descendantsOf(c.pid)], 'SIGKILL');
    removeTempDirs();
  });
  let signalled = false;
  const onSignal = (signal) => {
    if (signalled) process.exit(130);
    signalled = true;
    process.stderr.write(`\nbench: ${signal}, stopping every process it started\n`);
    cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

/**
 * A free TCP port on 127.0.0.1 (bind port 0, read it, close). Another process could take it
 * before the caller binds it; on this machine the window is small and start-up failures retry.
 */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `probe` (an async predicate) every `intervalMs` until it is true; throws after `timeoutMs`. */
export async function waitUntil(what, probe, timeoutMs = 15_000, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      if (await probe()) return;
    } catch (err) {
      lastErr = err;
    }
    await sleep(intervalMs);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${lastErr.message}` : ''}`,
  );
}
