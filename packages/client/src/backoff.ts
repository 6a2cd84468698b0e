/**
 * Reconnect delays: exponential backoff with full jitter (AWS architecture blog, "Exponential
 * Backoff And Jitter"): `delay = random() * min(maxMs, initialMs * 2^attempt)`. Full jitter
 * spreads a fleet of agents that lost the same server over the whole window, so a restarted
 * server is not hit by every agent in the same millisecond.
 */

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** A session that stayed up this long resets the delay to `initialMs`. */
  healthyResetMs: number;
  /** Uniform in [0, 1); injectable so tests pin the jitter. */
  random?: () => number;
  /** Monotonic milliseconds; injectable so tests need no sleeping. */
  now?: () => number;
}

export class Backoff {
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly healthyResetMs: number;
  private readonly random: () => number;
  private readonly now: () => number;
  private failures = 0;
  private upSince: number | undefined;

  constructor(options: BackoffOptions) {
    if (!(options.initialMs > 0) || !(options.maxMs >= options.initialMs)) {
      throw new RangeError('backoff needs 0 < initialMs <= maxMs');
    }
    this.initialMs = options.initialMs;
    this.maxMs = options.maxMs;
    this.healthyResetMs = options.healthyResetMs;
    this.random = options.random ?? Math.random;
    this.now = options.now ?? (() => performance.now());
  }

  /** Failures since the last reset: the exponent of the next delay. */
  get attempt(): number {
    return this.failures;
  }

  /** The ceiling the next delay is drawn under. */
  get ceilingMs(): number {
    return Math.min(this.maxMs, this.initialMs * 2 ** this.failures);
  }

  /** Draws the delay before the next attempt and counts one more failure. */
  next(): number {
    const ceiling = this.ceilingMs;
    // Stop growing once at the cap: the exponent must not run off to Infinity over a long outage.
    if (ceiling < this.maxMs) this.failures += 1;
    const r = Math.min(Math.max(this.random(), 0), 1);
    return Math.floor(r * ceiling);
  }

  reset(): void {
    this.failures = 0;
  }

  /** A session came up (registered): remember when, to judge its health when it ends. */
  connected(): void {
    this.upSince = this.now();
  }

  /** The session ended: if it lived `healthyResetMs`, the outage counting starts afresh. */
  disconnected(): void {
    if (this.upSince === undefined) return;
    const upMs = this.now() - this.upSince;
    this.upSince = undefined;
    if (upMs >= this.healthyResetMs) this.reset();
  }
}
