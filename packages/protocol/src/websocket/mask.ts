import { createRequire } from 'node:module';

/**
 * RFC 6455 §5.3 masking: byte i of a frame's payload is XORed with key[i % 4]. `phase` is the
 * position of `data[0]` within its frame's payload, so a payload can be (un)masked piece by
 * piece as it arrives or is gathered.
 */
interface NativeMask {
  mask(source: Buffer, mask: Buffer, output: Buffer, offset: number, length: number): void;
  unmask(buffer: Buffer, mask: Buffer): void;
}

// bufferutil (a dependency, prebuilt for linux-x64) masks 64 KiB an order of magnitude faster
// than a JS byte loop; without it (another platform, no prebuild) the loop below still works.
const native: NativeMask | undefined = loadNative();
// Below this a native call costs more than the loop.
const NATIVE_MIN_BYTES = 48;
// Scratch for a key rotated to a phase; native calls are synchronous, so one module buffer is enough.
const rotated = Buffer.alloc(4);

function loadNative(): NativeMask | undefined {
  try {
    return createRequire(import.meta.url)('bufferutil') as NativeMask;
  } catch {
    return undefined;
  }
}

function keyAt(key: Buffer, phase: number): Buffer {
  if (phase === 0) return key;
  for (let i = 0; i < 4; i++) rotated[i] = key[(i + phase) & 3]!;
  return rotated;
}

/** XORs `data` in place with `key`, starting at key byte `phase`. */
export function applyMask(data: Buffer, key: Buffer, phase: number): void {
  if (native !== undefined && data.length >= NATIVE_MIN_BYTES) {
    native.unmask(data, keyAt(key, phase));
    return;
  }
  for (let i = 0; i < data.length; i++) data[i] = data[i]! ^ key[(i + phase) & 3]!;
}

/** Writes `source` XOR `key` (from key byte `phase`) into `target` at `offset`. */
export function maskInto(source: Buffer, key: Buffer, phase: number, target: Buffer, offset: number): void {
  if (native !== undefined && source.length >= NATIVE_MIN_BYTES) {
    native.mask(source, keyAt(key, phase), target, offset, source.length);
    return;
  }
  for (let i = 0; i < source.length; i++) target[offset + i] = source[i]! ^ key[(i + phase) & 3]!;
}

/** Whether the native masking addon loaded (reported by benchmarks). */
export const nativeMaskLoaded = native !== undefined;
