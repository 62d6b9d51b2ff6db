/**
 * Statistics and formatting shared by the benchmark modules. Percentiles
 * are nearest-rank (the smallest sample with at least p% of the samples at
 * or below it), so every figure is a measured value.
 */

export const MiB = 2 ** 20;

/** The nearest-rank p-th percentile of `samples`. */
export function pct(samples, p) {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** The median (nearest rank: the lower middle of an even count). */
export function median(samples) {
  return pct(samples, 50);
}

export function sum(samples) {
  return samples.reduce((a, b) => a + b, 0);
}

export function mean(samples) {
  return sum(samples) / samples.length;
}

export function ms(v) {
  return `${v.toFixed(1)} ms`;
}

export function sec(v) {
  return `${(v / 1000).toFixed(2)} s`;
}

/** KiB (as /proc reports them) as MiB. */
export function mib(kib) {
  return `${(kib / 1024).toFixed(1)} MiB`;
}

/** Bytes as MiB. */
export function mibB(b) {
  return `${(b / MiB).toFixed(1)} MiB`;
}

export function sleep(n) {
  return new Promise((r) => setTimeout(r, n));
}
