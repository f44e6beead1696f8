import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two cores: run two files at a time, each ORT session on one thread.
    maxWorkers: 2,
    env: { SPARSETUNE_THREADS: '1' },
  },
});
