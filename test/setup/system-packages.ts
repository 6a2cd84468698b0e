/**
 * Vitest global setup: the Debian packages the tests drive, installed once when missing, so
 * `npm test` passes on a fresh machine with nothing installed by hand. Quiet when everything is
 * present. kubectl is not among them: it comes with the machine image, and the kubectl tests
 * fail loudly without it (test/helpers/kubectl.ts).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Debian package → the binaries that prove it is installed (any one of them). */
export const SYSTEM_PACKAGES = {
  /** An HTTP CONNECT egress proxy for the agent (test/e2e/resilience.test.ts). */
  tinyproxy: ['/usr/bin/tinyproxy', '/usr/sbin/tinyproxy'],
  /** A real client for refused names on the public port (test/e2e/routing.test.ts). */
  curl: ['/usr/bin/curl'],
  /** A real browser for dashboards through http routes, driven by playwright-core. */
  chromium: ['/usr/bin/chromium'],
} as const satisfies Record<string, readonly string[]>;

export function missingPackages(): string[] {
  return Object.entries(SYSTEM_PACKAGES)
    .filter(([, paths]) => !paths.some((p) => existsSync(p)))
    .map(([name]) => name);
}

function run(command: string, args: string[]): boolean {
  const asRoot = process.getuid?.() === 0;
  const result = spawnSync(asRoot ? command : 'sudo', asRoot ? args : ['-n', command, ...args], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    timeout: 300_000,
  });
  return result.status === 0;
}

export default function setup(): void {
  const missing = missingPackages();
  if (missing.length === 0) return;
  const install = ['install', '-y', '-qq', '--no-install-recommends', ...missing];
  process.stderr.write(`test setup: installing Debian packages the tests need: ${missing.join(' ')}\n`);
  // Package lists may be absent on a fresh machine: update once, then try again.
  const installed = run('apt-get', install) || (run('apt-get', ['update', '-qq']) && run('apt-get', install));
  const still = missingPackages();
  if (!installed || still.length > 0) {
    throw new Error(
      `the tests need the Debian packages ${still.join(', ')}; install them with: ` +
        `sudo apt-get install -y ${still.join(' ')}`,
    );
  }
}
