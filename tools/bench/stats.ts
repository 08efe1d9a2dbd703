/** Small statistics and timing helpers for benchmarks. */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'

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
  /** CPU seconds of the main (event-loop) thread alone; null where /proc is not available. */
  readonly mainCpuS: number | null
}

let clockTicks: number | undefined

/** User + system CPU seconds of the main thread, from `/proc/self/task/<pid>/stat` (Linux); else null. */
export function mainThreadCpuS(): number | null {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    return (Number(fields[11]) + Number(fields[12])) / clockTicks
  } catch {
    return null
  }
}

/** Runs `fn` after a full GC (when `--expose-gc`), timing wall clock and process CPU. */
export async function timed(fn: () => Promise<void>): Promise<Timed> {
  const gc = (globalThis as { gc?: () => void }).gc
  gc?.()
  const main0 = mainThreadCpuS()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await fn()
  const wallS = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const main1 = mainThreadCpuS()
  return { wallS, cpuS: (cpu.user + cpu.system) / 1e6, mainCpuS: main0 === null || main1 === null ? null : main1 - main0 }
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
