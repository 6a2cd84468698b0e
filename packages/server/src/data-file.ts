import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
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
