/**
 * The standard normal quantile Φ⁻¹(p), computed with + − × ÷ and sqrt only.
 *
 * Why not Math.exp/Math.log: their last bit is implementation-defined (ECMAScript leaves it
 * open and V8 has changed them before). The noise table of the default generator is built from
 * these values, and every saved trajectory depends on that table bit for bit, so it must come
 * out the same on every platform and Node version. IEEE 754 rounds the five basic operations
 * correctly, so a fixed sequence of them is reproducible everywhere.
 *
 * Accuracy: ~1e-15 relative for p in [2^-40, 1/2] (checked against reference values in the tests).
 */

const LN2 = 0.6931471805599453;
/** ln 2 split so that k·LN2_HI is exact for |k| < 2^11 (Cody–Waite range reduction). */
const LN2_HI = 0.6931471803691238;
const LN2_LO = 1.9082149292705877e-10;
const INV_SQRT_PI = Math.sqrt(1 / Math.PI);
const SQRT_HALF = Math.sqrt(0.5);
const INV_SQRT_2PI = Math.sqrt(0.5 / Math.PI);

/** 2^k for integer k in [-1074, 1023], by repeated exact doubling/halving. */
function pow2(k: number): number {
  let r = 1;
  if (k >= 0) for (let i = 0; i < k; i++) r *= 2;
  else for (let i = 0; i > k; i--) r *= 0.5;
  return r;
}

/** e^x for x in [-700, 700]: range reduction by ln 2, then a Taylor series on |r| <= 0.35. */
export function expBasic(x: number): number {
  const k = Math.round(x / LN2);
  const r = x - k * LN2_HI - k * LN2_LO;
  // Horner form of sum_{n<=16} r^n/n!; the truncation is below 1e-19 on |r| <= 0.35.
  let s = 1;
  for (let n = 16; n >= 1; n--) s = 1 + (s * r) / n;
  return s * pow2(k);
}

/** ln x for finite x > 0: x = 2^e·m with m in [1, 2), ln m = 2·atanh((m − 1)/(m + 1)). */
export function logBasic(x: number): number {
  let e = 0;
  let m = x;
  while (m >= 2) {
    m *= 0.5;
    e++;
  }
  while (m < 1) {
    m *= 2;
    e--;
  }
  // s in [0, 1/3]: the odd series needs ~35 terms for full double precision.
  const s = (m - 1) / (m + 1);
  const s2 = s * s;
  let sum = 0;
  for (let n = 61; n >= 1; n -= 2) sum = 1 / n + s2 * sum;
  return e * LN2 + 2 * s * sum;
}

/** erfc(x) for x >= 0, relative accuracy ~1e-15. */
function erfcNonNegative(x: number): number {
  const ex2 = expBasic(-x * x);
  if (x < 2) {
    // erf(x) = (2/√π)·e^(−x²)·Σ 2^n·x^(2n+1)/(2n+1)!!  (all terms positive: no cancellation)
    let term = x;
    let sum = x;
    for (let n = 0; n < 120; n++) {
      term = (term * 2 * x * x) / (2 * n + 3);
      sum += term;
    }
    return 1 - 2 * INV_SQRT_PI * ex2 * sum;
  }
  // Continued fraction erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))), backwards.
  let f = x;
  for (let n = 200; n >= 1; n--) f = x + n / 2 / f;
  return (INV_SQRT_PI * ex2) / f;
}

/** Φ(z) for z <= 0 (the lower tail, computed with relative accuracy). */
function lowerTailCdf(z: number): number {
  return 0.5 * erfcNonNegative(-z * SQRT_HALF);
}

/**
 * Φ⁻¹(p) for p in (0, 1/2]: Abramowitz–Stegun 26.2.23 as the start (|error| < 4.5e-4), then
 * four Newton steps on Φ(z) = p (quadratic convergence: 4.5e-4 → ~1e-7 → ~1e-14 → exact).
 */
export function normalQuantileLower(p: number): number {
  if (!(p > 0 && p <= 0.5)) throw new RangeError(`normalQuantileLower needs p in (0, 1/2], got ${p}`);
  if (p === 0.5) return 0;
  const t = Math.sqrt(-2 * logBasic(p));
  let z = -(t - (2.515517 + t * (0.802853 + t * 0.010328)) / (1 + t * (1.432788 + t * (0.189269 + t * 0.001308))));
  for (let iter = 0; iter < 4; iter++) {
    const density = INV_SQRT_2PI * expBasic(-0.5 * z * z);
    z -= (lowerTailCdf(z) - p) / density;
  }
  return Math.min(z, 0);
}
