/**
 * Memory as a test measures it: a full garbage collection first, then the JS heap plus the
 * buffers outside it (Node's Buffers live in ArrayBuffers, not on the JS heap).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

setFlagsFromString('--expose-gc');
// `gc` exists only in contexts created after the flag is set.
const gc = runInNewContext('gc') as () => void;

/** Bytes in use after a full collection: heap used plus ArrayBuffers. */
export function memoryInUseBytes(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}
