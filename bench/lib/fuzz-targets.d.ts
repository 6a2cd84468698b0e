/** Types of fuzz-targets.js, for test/fuzz (the bench itself is plain JavaScript). */
export interface FuzzTarget {
  seeds(): Promise<Buffer[]>;
  /** Built files whose block coverage guides the fuzzer. */
  files: string[];
  /** undefined, or which invariant the input broke. */
  run(input: Buffer, random: () => number): string | undefined | Promise<string | undefined>;
  /** The target's own mutator (structure-aware); the engine's byte mutator otherwise. */
  mutate?: (input: Buffer, other: Buffer, random: () => number) => Buffer;
}

export const FUZZ_TARGETS: Readonly<
  Record<
    | 'yamux-decoder'
    | 'yamux-session'
    | 'websocket-decoder'
    | 'client-hello'
    | 'control'
    | 'csr'
    | 'stream-prefix',
    FuzzTarget
  >
>;
