/**
 * A rate limit for things a peer may do now and then but never in a flood (pings, frames that
 * carry nothing): up to `burst` at once, refilled at `perSecond`. Time comes from the caller's
 * clock (milliseconds), so tests need no sleeping. `perSecond: Infinity` never limits.
 */
export class TokenBucket {
  private tokens: number;
  private lastMs: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number,
  ) {
    this.tokens = burst;
    this.lastMs = now();
  }

  /** Takes one token; false when none is left (the caller refuses or ends the peer). */
  take(): boolean {
    if (this.perSecond === Number.POSITIVE_INFINITY) return true;
    const nowMs = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((nowMs - this.lastMs) * this.perSecond) / 1000);
    this.lastMs = nowMs;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
