/**
 * The short version of bench/fuzz.js, run by `npm test`: every parser a peer can reach, fed a
 * few thousand mutations of valid inputs with a fixed seed, coverage-guided for the first few
 * hundred. Each case checks the invariants of bench/lib/fuzz-targets.js: only coded
 * TunnelErrors, the same result however the bytes are split, bounded session memory. The long
 * run (millions of cases) is `npm run bench:fuzz`; its figures are in bench/results.
 */
import { describe, expect, it } from 'vitest';
// The fuzzer drives the built packages, as the bench does (`npm test` builds first).
import { fuzzTarget } from '../../bench/lib/fuzz-engine.js';
import { FUZZ_TARGETS } from '../../bench/lib/fuzz-targets.js';

describe('fuzzing the parsers (short run)', () => {
  it.each(Object.keys(FUZZ_TARGETS))('%s: 4,000 mutated inputs break no invariant', async (name) => {
    const result = await fuzzTarget(FUZZ_TARGETS[name as keyof typeof FUZZ_TARGETS], {
      seed: 20261205,
      guidedCases: 300,
      cases: 4_000,
      seconds: 30,
    });
    expect(result.failures.map((f) => `${f.reason}: ${f.input.toString('hex').slice(0, 200)}`)).toEqual([]);
    // Every case ran (the seeds run too, in the guided phase), none cut short by the deadline.
    expect(result.cases).toBeGreaterThanOrEqual(4_300);
    expect(result.blocks).toBeGreaterThan(10);
  });
});
