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
  // The executable only: the tinyproxy package would also start a system proxy service.
  'tinyproxy-bin': ['/usr/bin/tinyproxy', '/usr/sbin/tinyproxy'],
  /** A real client for http routes and refused names (test/e2e/http-route.test.ts, routing, hostile). */
  curl: ['/usr/bin/curl'],
  /** Apache's htpasswd, which writes the bcrypt files of basic access (test/e2e/http-route.test.ts). */
  'apache2-utils': ['/usr/bin/htpasswd'],
  /** A real L4 load balancer in front of server replicas (test/e2e/rolling-restart.test.ts). */
  haproxy: ['/usr/sbin/haproxy'],
  /** A real browser for dashboards through http routes, driven by playwright-core. */
  chromium: ['/usr/bin/chromium'],
} as const satisfies Record<string, readonly string[]>;

/** The packages of `packages` none of whose binaries exists. */
export function missingPackages(packages: Record<string, readonly string[]> = SYSTEM_PACKAGES): string[] {
  return Object.entries(packages)
    .filter(([, paths]) => !paths.some((p) => existsSync(p)))
    .map(([name]) => name);
}

/** Runs an apt-get command as root (through `sudo -n` when not root); true when it succeeded. */
function aptGet(args: string[]): boolean {
  const asRoot = process.getuid?.() === 0;
  const result = spawnSync(asRoot ? 'apt-get' : 'sudo', asRoot ? args : ['-n', 'apt-get', ...args], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    // A browser is a large download on a slow mirror; a stuck apt must still end the run.
    timeout: 900_000,
  });
  return result.status === 0;
}

/**
 * Installs whichever of `packages` is missing; throws, naming the packages and the command to
 * run by hand, when they cannot be installed.
 */
export function installMissing(packages: Record<string, readonly string[]> = SYSTEM_PACKAGES): void {
  const missing = missingPackages(packages);
  if (missing.length === 0) return;
  const install = ['install', '-y', '-qq', '--no-install-recommends', ...missing];
  process.stderr.write(
    `test setup: ${missing.join(', ')} missing; running apt-get install -y --no-install-recommends ${missing.join(' ')}\n`,
  );
  // A fresh machine may have no package lists yet: update, then try once more.
  const installed = aptGet(install) || (aptGet(['update', '-qq']) && aptGet(install));
  const still = missingPackages(packages);
  if (!installed || still.length > 0) {
    throw new Error(
      `the tests need the Debian packages ${still.join(', ')}, which could not be installed; run: ` +
        `sudo apt-get update && sudo apt-get install -y --no-install-recommends ${still.join(' ')}`,
    );
  }
}

export default function setup(): void {
  installMissing();
}
