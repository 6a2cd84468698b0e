/**
 * Stream and timing helpers shared by the protocol tests: reading a stream to its end or to a
 * byte count, hashing what was read, and waiting with a deadline.
 */
import { createHash } from 'node:crypto';
import type { Duplex, Readable } from 'node:stream';
import { defer } from './cleanup.js';
import { pipePair } from './transports.js';

/** The hex SHA-256 of `buf`: compares large payloads without printing them when they differ. */
export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/**
 * The one deadline: settles as `promise` does, or rejects with "timed out after `ms` ms: `what`"
 * if it takes longer. `what` may be a function, to describe the state at the deadline (the last
 * log lines, the output so far). A waiter that registered listeners removes them in `.finally`.
 */
export function withDeadline<T>(promise: Promise<T>, ms: number, what: string | (() => string)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`timed out after ${ms} ms: ${typeof what === 'function' ? what() : what}`));
    }, ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * The one poll helper: resolves with the first truthy value `probe` returns (it may be async),
 * checking every `intervalMs` (5 ms; more for a probe that costs the peer something, such as a
 * new connection); rejects after `timeoutMs` naming `what`.
 */
export async function pollUntil<T>(
  probe: () => T | Promise<T>,
  timeoutMs = 10_000,
  what = 'condition',
  intervalMs = 5,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  // Bounded by the deadline; the count only guards against a clock that stands still.
  for (let attempt = 0; attempt <= timeoutMs; attempt++) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Lets `turns` turns of the event loop pass, so queued I/O callbacks, nextTicks and microtasks run. */
export async function flushIo(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

/**
 * Everything `stream` yields until 'end', read in flowing mode ('data' events); rejects on
 * 'error'. It leaves the stream as it is, so a half-open stream can still be written:
 * `for await` (see readToEndWithForAwait) would destroy it, which resets a yamux stream.
 */
export function readToEnd(stream: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

/**
 * Everything `stream` yields until 'end', read with `for await` (paused mode, `read()`). The
 * loop destroys the stream when it is done: for a stream nothing more is written to, or to
 * exercise a paused-mode reader.
 */
export async function readToEndWithForAwait(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/**
 * Resolves with the chunks `stream` yields until they add up to at least `n` bytes (the last
 * chunk is kept whole, so more than `n` means the peer sent more), then stops listening and
 * pauses the stream. Rejects if the stream ends or fails first.
 */
export function readAtLeast(stream: Readable, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    function onData(chunk: Buffer): void {
      chunks.push(chunk);
      got += chunk.length;
      if (got >= n) {
        done();
        resolve(Buffer.concat(chunks));
      }
    }
    function onEnd(): void {
      done();
      reject(new Error(`stream ended after ${got} of ${n} bytes`));
    }
    function onError(err: Error): void {
      done();
      reject(err);
    }
    function done(): void {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.pause();
    }
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
  });
}

/** An in-memory pipePair() whose two ends are destroyed when the current test finishes. */
export function pipePairForTest(): { a: Duplex; b: Duplex } {
  const pair = pipePair();
  defer(() => {
    pair.a.destroy();
    pair.b.destroy();
  });
  return pair;
}
