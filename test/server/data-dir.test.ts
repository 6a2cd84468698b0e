/**
 * The data directory holds private keys: a start makes it 0700 and its secret files 0600 when
 * they are looser (mkdir and writeFile set a mode only on creation), and says so. Regression
 * loose-data-dir: an existing directory or demo.token kept whatever mode it had.
 */
import { chmod, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pollUntil } from '../helpers/streams.js';
import { startServer } from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';

const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

describe('the data directory', () => {
  it('is tightened to 0700 with 0600 keys and token at start, with a warning naming what changed', async () => {
    const dataDir = join(tempDir(), 'data');
    const first = await startServer({ dataDir });
    await first.proc.stop();
    // An operator's copy, a restore from backup, a umask of 022: all readable by others.
    await chmod(dataDir, 0o755);
    for (const f of ['ca.key', 'server.key', 'token-signing.key']) await chmod(join(dataDir, f), 0o644);
    await writeFile(join(dataDir, 'demo.token'), 'stale\n', { mode: 0o644 });
    await chmod(join(dataDir, 'demo.token'), 0o644);

    const second = await startServer({ dataDir, args: ['--print-next-steps'] });
    const warned = await second.proc.waitForLog((l) => l.msg === 'data directory permissions tightened');
    expect((warned.paths as string[]).map((p) => p.slice(dataDir.length)).sort()).toEqual(
      ['', '/ca.key', '/demo.token', '/server.key', '/token-signing.key'].sort(),
    );
    expect(await mode(dataDir)).toBe(0o700);
    for (const f of ['ca.key', 'server.key', 'token-signing.key'])
      expect(await mode(join(dataDir, f))).toBe(0o600);
    // --print-next-steps replaces the demo token (atomically, 0600), never rewrites it in place.
    await pollUntil(() => second.proc.stderr.some((l) => l.includes('demo.token')), 10_000, 'the next steps');
    expect(await mode(join(dataDir, 'demo.token'))).toBe(0o600);
    // Public files stay readable.
    expect(await mode(join(dataDir, 'ca.crt'))).toBe(0o644);
  });
});
