/** The one temp directory helper. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defer } from './cleanup.js';

export interface TempDir {
  readonly path: string;
  /** Removes the directory and everything in it. Idempotent. */
  remove(): void;
}

/**
 * A fresh directory the caller removes: for what outlives one test (an afterAll, a directory
 * made while tests are collected, a process-wide cache).
 */
export function createTempDir(prefix = 'tunnel-test-'): TempDir {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** A fresh directory, removed when the current test finishes (or with its shared fixture). */
export function tempDir(prefix = 'tunnel-test-'): string {
  const dir = createTempDir(prefix);
  defer(() => dir.remove());
  return dir.path;
}
