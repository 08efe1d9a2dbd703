/** Small statistics and timing helpers for benchmarks. */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

export function min(values: readonly number[]): number {
  return Math.min(...values)
}

export function max(values: readonly number[]): number {
  return Math.max(...values)
}

/** `median [min–max]` with `digits` decimals. */
export function spread(values: readonly number[], digits = 0): string {
  return `${median(values).toFixed(digits)} [${min(values).toFixed(digits)}–${max(values).toFixed(digits)}]`
}

export interface Timed {
  /** Wall-clock seconds. */
  readonly wallS: number
  /** CPU seconds of the whole process (all threads: main, libuv, libvips), user + system. */
  readonly cpuS: number
}

/** Runs `fn` after a full GC (when `--expose-gc`), timing wall clock and process CPU. */
export async function timed(fn: () => Promise<void>): Promise<Timed> {
  const gc = (globalThis as { gc?: () => void }).gc
  gc?.()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await fn()
  const wallS = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  return { wallS, cpuS: (cpu.user + cpu.system) / 1e6 }
}

/**
 * Interleaves variants: rep r runs every variant once, starting at a rotating offset (A B C, B C A, ...), so
 * machine noise and ordering effects hit each variant alike. Returns samples per variant, in rep order.
 */
export async function interleave<K extends string, S>(
  variants: readonly K[],
  reps: number,
  run: (variant: K, rep: number) => Promise<S>,
): Promise<Record<K, S[]>> {
  const samples = Object.fromEntries(variants.map((v) => [v, [] as S[]])) as Record<K, S[]>
  for (let rep = 0; rep < reps; rep++) {
    for (let i = 0; i < variants.length; i++) {
      const variant = variants[(rep + i) % variants.length]
      samples[variant].push(await run(variant, rep))
    }
  }
  return samples
}

/** Runs `tasks` with at most `concurrency` in flight. */
export async function pool<T>(items: readonly T[], concurrency: number, task: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0
  const lane = async () => {
    while (next < items.length) {
      const item = items[next++]
      await task(item)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, lane))
}
