/** Types of fuzz-engine.js, for test/fuzz (the bench itself is plain JavaScript). */
import type { FuzzTarget } from './fuzz-targets.js';

export interface FuzzFailure {
  reason: string;
  input: Buffer;
}

export interface FuzzResult {
  cases: number;
  guidedCases: number;
  corpus: number;
  blocks: number;
  failures: FuzzFailure[];
  slowestMs: number;
  seconds: number;
  casesPerSecond: number;
}

export interface FuzzOptions {
  seed?: number;
  guidedCases?: number;
  cases?: number;
  seconds?: number;
  onProgress?: (p: { phase: string; done: number; corpus: number; blocks: number }) => void;
}

export function seededRandom(seed: number): () => number;
export function mutate(input: Buffer, other: Buffer, random: () => number): Buffer;
export function mutateJson(text: string, random: () => number): string | undefined;
export function fuzzTarget(target: FuzzTarget, options?: FuzzOptions): Promise<FuzzResult>;
