import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Real sockets, TLS and child processes: give slow machines room, but never hang CI.
    testTimeout: 60_000,
    hookTimeout: 30_000,
    pool: 'forks',
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
