/**
 * bcrypt off the event loop. One bcrypt at the costs htpasswd files use takes tens to hundreds
 * of milliseconds of CPU; on the event loop that would stall every tunnel stream of the server
 * for as long. So hashing runs in one worker thread, started on first use, and at most
 * MAX_PASSWORD_CHECKS_IN_FLIGHT checks wait for it: a flood of logins costs one core and is
 * refused beyond that (docs/SECURITY.md), never the tunnel's traffic.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { TunnelError } from '@cluster-tunnel/protocol';

/** bcrypt checks queued or running at once, per server; more are refused (429, retryable). */
export const MAX_PASSWORD_CHECKS_IN_FLIGHT = 4;

// The worker is a data: URL module, so it runs the same from src (tests) and dist; it imports
// bcryptjs by absolute URL and answers each { id, password, salt } with { id, hash }.
const BCRYPT_URL = pathToFileURL(createRequire(import.meta.url).resolve('bcryptjs')).href;
const WORKER_SOURCE = `
import bcrypt from ${JSON.stringify(BCRYPT_URL)};
import { parentPort } from 'node:worker_threads';
parentPort.on('message', ({ id, password, salt }) => {
  let hash = '';
  try { hash = bcrypt.hashSync(password, salt); } catch {}
  parentPort.postMessage({ id, hash });
});`;

interface Pending {
  resolve(hash: string): void;
  reject(err: Error): void;
}

export class PasswordChecker {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private closed = false;

  /**
   * bcrypt of `password` with `salt` (a hash's first 29 characters, `$2y$NN$` and 22 more): the
   * hash to compare. TUN_ERR_LIMIT_EXCEEDED when too many are waiting already.
   */
  hash(password: string, salt: string): Promise<string> {
    if (this.closed) return Promise.reject(new TunnelError('TUN_ERR_ACCESS_DENIED', 'the server is closing'));
    if (this.pending.size >= MAX_PASSWORD_CHECKS_IN_FLIGHT) {
      return Promise.reject(
        new TunnelError('TUN_ERR_LIMIT_EXCEEDED', 'too many password checks at once; try again', {
          details: { limit: 'passwordChecks' },
        }),
      );
    }
    const id = this.nextId++;
    const worker = this.ensureWorker();
    return new Promise<string>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Only a worker with work keeps the process alive.
      worker.ref();
      worker.postMessage({ id, password, salt });
    });
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Idempotent: stops the worker; checks still waiting are refused. */
  async close(): Promise<void> {
    this.closed = true;
    const worker = this.worker;
    this.worker = undefined;
    this.failAll('the server is closing');
    await worker?.terminate();
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(WORKER_SOURCE)}`));
    worker.on('message', ({ id, hash }: { id: number; hash: string }) => {
      const waiting = this.pending.get(id);
      this.pending.delete(id);
      if (this.pending.size === 0) worker.unref();
      waiting?.resolve(hash);
    });
    // A worker that dies takes its checks with it; the next check starts a new one.
    const lost = (): void => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      this.failAll('the password check failed');
    };
    worker.on('error', lost);
    worker.on('exit', lost);
    this.worker = worker;
    return worker;
  }

  private failAll(why: string): void {
    for (const waiting of this.pending.values())
      waiting.reject(new TunnelError('TUN_ERR_ACCESS_DENIED', why));
    this.pending.clear();
  }
}
