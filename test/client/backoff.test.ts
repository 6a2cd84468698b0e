// Reconnect delays: full jitter under an exponential ceiling, capped, reset by a healthy session.
// Random and clock are injected: nothing here sleeps.
import { describe, expect, test } from 'vitest';
import { Backoff } from '../../packages/client/src/backoff.js';

function fakeTime() {
  let t = 1_000;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe('Backoff', () => {
  test('each delay is drawn uniformly under a ceiling that doubles per failure', () => {
    const draws = [0.5, 0.5, 0.5, 0.5];
    const b = new Backoff({
      initialMs: 100,
      maxMs: 100_000,
      healthyResetMs: 60_000,
      random: () => draws.shift()!,
    });
    expect([b.next(), b.next(), b.next(), b.next()]).toEqual([50, 100, 200, 400]);
    expect(b.attempt).toBe(4);
  });

  test('full jitter: a draw of 0 waits not at all, a draw near 1 waits almost the whole ceiling', () => {
    let r = 0;
    const b = new Backoff({ initialMs: 100, maxMs: 10_000, healthyResetMs: 60_000, random: () => r });
    for (let i = 0; i < 5; i++) b.next(); // ceiling now 3200
    r = 0;
    expect(b.next()).toBe(0);
    r = 0.999_999;
    const ceiling = b.ceilingMs;
    const delay = b.next();
    expect(delay).toBeLessThan(ceiling);
    expect(delay).toBeGreaterThanOrEqual(Math.floor(ceiling * 0.999));
  });

  test('delays stay within [0, min(max, initial * 2^attempt)) for any draw', () => {
    let seed = 42;
    const random = () => {
      // A small LCG: deterministic, spread over [0, 1).
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const b = new Backoff({ initialMs: 500, maxMs: 30_000, healthyResetMs: 60_000, random });
    for (let attempt = 0; attempt < 200; attempt++) {
      const ceiling = Math.min(30_000, 500 * 2 ** attempt);
      const delay = b.next();
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(ceiling);
    }
  });

  test('the ceiling stops at maxMs and the exponent stops growing there', () => {
    const b = new Backoff({ initialMs: 500, maxMs: 30_000, healthyResetMs: 60_000, random: () => 1 });
    const delays = Array.from({ length: 1_000 }, () => b.next());
    expect(delays.slice(0, 8)).toEqual([500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
    expect(Math.max(...delays)).toBe(30_000);
    expect(b.attempt).toBe(6);
    expect(Number.isFinite(b.ceilingMs)).toBe(true);
  });

  test('a session that stayed up healthyResetMs resets the delay to the first step', () => {
    const time = fakeTime();
    const b = new Backoff({
      initialMs: 100,
      maxMs: 10_000,
      healthyResetMs: 60_000,
      random: () => 1,
      now: time.now,
    });
    for (let i = 0; i < 5; i++) b.next();
    expect(b.ceilingMs).toBe(3_200);
    b.connected();
    time.advance(60_000);
    b.disconnected();
    expect(b.attempt).toBe(0);
    expect(b.next()).toBe(100);
  });

  test('a session that dropped sooner keeps the outage counting', () => {
    const time = fakeTime();
    const b = new Backoff({
      initialMs: 100,
      maxMs: 10_000,
      healthyResetMs: 60_000,
      random: () => 1,
      now: time.now,
    });
    for (let i = 0; i < 3; i++) b.next();
    b.connected();
    time.advance(59_999);
    b.disconnected();
    expect(b.attempt).toBe(3);
    expect(b.next()).toBe(800);
  });

  test('disconnected() without connected() changes nothing', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1_000, healthyResetMs: 0, random: () => 1 });
    b.next();
    b.disconnected();
    expect(b.attempt).toBe(1);
  });

  test('rejects an initial delay above the cap', () => {
    expect(() => new Backoff({ initialMs: 2_000, maxMs: 1_000, healthyResetMs: 0 })).toThrow(RangeError);
  });
});
