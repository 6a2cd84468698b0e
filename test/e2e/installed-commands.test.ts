/**
 * What a newcomer types after `npm ci`: `npx tunnel-server --help` and `npx tunnel-client
 * --help`. npm links each package's `bin` (a committed file that loads the build) into
 * node_modules/.bin at install time, and the root `prepare` script builds; these run the links
 * exactly as npx does, as separate processes.
 */
import { execFile } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '../..');
const run = promisify(execFile);

describe.each([
  { command: 'tunnel-server', usage: /Usage: tunnel-server/, target: 'packages/server/bin/tunnel-server.js' },
  { command: 'tunnel-client', usage: /Usage: tunnel-client/, target: 'packages/client/bin/tunnel-client.js' },
])('$command, as installed', ({ command, usage, target }) => {
  const link = join(ROOT, 'node_modules/.bin', command);

  it('is linked into node_modules/.bin to its committed bin file', () => {
    expect(realpathSync(link)).toBe(join(ROOT, target));
  });

  it('prints its help and version', async () => {
    const help = await run(link, ['--help'], { timeout: 20_000 });
    expect(help.stdout).toMatch(usage);
    const version = await run(link, ['--version'], { timeout: 20_000 });
    expect(version.stdout.trim()).toBe('0.1.0');
  });
});
