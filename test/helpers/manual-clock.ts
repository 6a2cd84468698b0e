/**
 * A Clock (packages/protocol) that moves only when told, for timer code tested without sleeping:
 * keepalive, spare-connection idle timeouts.
 */
import type { Clock } from '@cluster-tunnel/protocol';

interface Timer {
  at: number;
  fn: () => void;
}

/** `advance(ms)` runs every timer that falls due, in order, with `now()` at each one's due time. */
export class ManualClock implements Clock {
  /** `startMs`: where time starts (Date.now() for code that reads wall-clock times, such as certificates). */
  constructor(private nowMs = 0) {}

  private nextHandle = 1;
  private readonly timers = new Map<number, Timer>();

  now(): number {
    return this.nowMs;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const handle = this.nextHandle++;
    this.timers.set(handle, { at: this.nowMs + Math.max(0, ms), fn });
    return handle;
  }

  clearTimeout(handle: unknown): void {
    if (typeof handle === 'number') this.timers.delete(handle);
  }

  /** Timers set and neither fired nor cleared. */
  get pending(): number {
    return this.timers.size;
  }

  advance(ms: number): void {
    const target = this.nowMs + ms;
    // Bounded: a timer that re-arms itself at 0 ms cannot spin for ever.
    for (let fired = 0; fired < 10_000; fired++) {
      let due: [number, Timer] | undefined;
      for (const entry of this.timers) {
        if (entry[1].at <= target && (due === undefined || entry[1].at < due[1].at)) due = entry;
      }
      if (!due) break;
      this.timers.delete(due[0]);
      this.nowMs = due[1].at;
      due[1].fn();
    }
    this.nowMs = target;
  }
}
