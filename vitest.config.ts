import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const source = (pkg: string): string =>
  fileURLToPath(new URL(`./packages/${pkg}/src/index.ts`, import.meta.url));

export default defineConfig({
  // Tests and the packages they load share one copy of each package, its source: a class is the
  // same class in both (instanceof holds) and a stale dist/ cannot change a result. Processes the
  // tests spawn (the CLIs) run the build, which `npm test` makes first.
  resolve: {
    alias: {
      '@cluster-tunnel/protocol': source('protocol'),
      '@cluster-tunnel/config': source('config'),
      '@cluster-tunnel/server': source('server'),
      '@cluster-tunnel/client': source('client'),
    },
  },
  test: {
    // Real sockets, TLS and child processes: give slow machines room, but never hang CI.
    testTimeout: 60_000,
    hookTimeout: 30_000,
    // Debian packages the tests drive (tinyproxy-bin, curl, chromium), installed once when missing.
    globalSetup: ['test/setup/system-packages.ts'],
    pool: 'forks',
    // A test that asserts nothing fails: it cannot pass by returning early.
    expect: { requireAssertions: true },
    maxWorkers: 2,
    reporters: ['default'],
    projects: [
      {
        extends: true,
        test: {
          name: 'main',
          include: ['test/**/*.test.ts'],
          exclude: ['test/hostile/**'],
          sequence: { groupOrder: 0 },
        },
      },
      {
        // The attack suites measure a bystander's latency while an attacker floods a server:
        // they run after everything else, one file at a time, so the only load on the machine
        // is the attack itself.
        extends: true,
        test: {
          name: 'hostile',
          include: ['test/hostile/**/*.test.ts'],
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
