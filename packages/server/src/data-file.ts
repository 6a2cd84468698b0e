import { randomBytes } from 'node:crypto';
import { chmod, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TunnelError } from '@cluster-tunnel/protocol';

/** Files of the server's data directory (keys, certificates): read when present, written atomically. */

/** The file's text, or undefined when it does not exist; any other failure is TUN_ERR_CONFIG. */
export async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new TunnelError('TUN_ERR_CONFIG', `cannot read ${file}`, { cause: err });
  }
}

/** Write-then-rename, so a crash never leaves a half-written key or certificate behind. */
export async function writeAtomic(file: string, content: string, mode: number): Promise<void> {
  const temporary = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temporary, content, { mode, flag: 'wx' });
    await rename(temporary, file);
  } catch (cause) {
    await rm(temporary, { force: true });
    throw new TunnelError('TUN_ERR_CONFIG', `cannot write ${file}`, { cause });
  }
}

/** Group or other may read, write or enter: too loose for a directory of private keys. */
const LOOSE_BITS = 0o077;

/**
 * Makes the data directory 0700 and the named secret files in it 0600 where they are looser (a
 * directory made by hand, a copied key): mkdir and writeFile set a mode only on creation.
 * Never fails the start: what it changed and what it could not change (a mount point owned by
 * someone else) are returned for the log. Missing files are skipped.
 */
export async function tightenPermissions(
  dir: string,
  secretFiles: readonly string[],
): Promise<{ tightened: string[]; stillLoose: string[] }> {
  const tightened: string[] = [];
  const stillLoose: string[] = [];
  const targets: Array<[string, number]> = [
    [dir, 0o700],
    ...secretFiles.map((f): [string, number] => [join(dir, f), 0o600]),
  ];
  for (const [path, mode] of targets) {
    const current = await stat(path).then(
      (st) => st.mode & 0o777,
      () => undefined,
    );
    if (current === undefined || (current & LOOSE_BITS) === 0) continue;
    await chmod(path, mode).then(
      () => tightened.push(path),
      () => stillLoose.push(path),
    );
  }
  return { tightened, stillLoose };
}
