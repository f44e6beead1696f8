/** Shared by the examples: how many optimizer steps to run (SPARSETUNE_EXAMPLE_STEPS, default 20). */
export function exampleSteps(fallback = 20): number {
  const raw = process.env.SPARSETUNE_EXAMPLE_STEPS;
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`SPARSETUNE_EXAMPLE_STEPS must be a positive integer, got '${raw}'`);
  return n;
}
