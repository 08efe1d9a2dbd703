/**
 * `scan cli 2k vs 20k rows`: the whole `evflow scan` command (read + decode 64px + sha256 + write + commit),
 * in child processes with its defaults, on the 2,000-row and the 20,000-row shards: rows/s for reference
 * next to the in-process decode cases, and peak RSS, which must not grow with the dataset
 * (target: 20k ≤ 1.15 × 2k).
 */
import { join } from 'node:path'

import { BIG_ROWS, ROWS, type ShardInput } from '../inputs.js'
import { runScan, type ScanRun } from '../scan.js'
import { median, spread } from '../stats.js'
import type { BenchCase, CaseResult, Row } from '../types.js'

const TARGET_RSS_RATIO = 1.15
/** Runs on the small shard (throughput and the RSS baseline); the big one runs once, after the first. */
const MAX_SMALL_RUNS = 3

export const scanCli: BenchCase = {
  name: 'scan cli + rss 2k vs 20k',
  section: 'foundation',
  byDefault: true,
  description: 'evflow scan (read + decode 64px + sha256 + write) in child processes with defaults: rows/s and peak RSS on 2,000 vs 20,000 rows of 256×256 JPEGs',
  async run(context): Promise<CaseResult> {
    const small = await context.inputs.shard(ROWS)
    const big = await context.inputs.shard(BIG_ROWS)
    const smallRuns = Math.min(context.settings.reps, MAX_SMALL_RUNS)
    const order: ShardInput[] = [small, big, ...Array.from({ length: smallRuns - 1 }, () => small)]
    const runs = new Map<ShardInput, ScanRun[]>([[small, []], [big, []]])
    for (const [i, input] of order.entries()) {
      const run = await runScan(input.dir, join(context.inputs.dir, `out-scan-${i}`))
      if (run.rowsOk !== input.rows) throw new Error(`scan: ${run.rowsOk} of ${input.rows} rows ok`)
      context.log(`scan ${input.rows} rows: ${run.rowsPerS} rows/s, peak RSS ${run.peakRssMiB} MiB`)
      runs.get(input)!.push(run)
    }
    const row = (input: ShardInput): Row => {
      const rs = runs.get(input)!
      const gnu = rs.map((r) => r.timeMaxRssMiB).filter((v): v is number => v !== null)
      return {
        rows: `${input.rows.toLocaleString('en')} (${rs.length} run${rs.length > 1 ? 's' : ''})`,
        'input MB': (input.fileBytes / 1e6).toFixed(1),
        'rows/s (pipeline)': spread(rs.map((r) => r.rowsPerS)),
        'rows/s (process)': spread(rs.map((r) => input.rows / r.wallS)),
        'input MB/s': ((median(rs.map((r) => r.rowsPerS)) * input.fileBytes) / input.rows / 1e6).toFixed(2),
        'peak RSS MiB': spread(rs.map((r) => r.peakRssMiB)),
        'max RSS MiB (GNU time)': gnu.length > 0 ? spread(gnu) : 'n/a',
        'in-flight peak rows': median(rs.map((r) => r.inFlightPeakRecords)),
      }
    }
    const smallRss = median(runs.get(small)!.map((r) => r.peakRssMiB))
    const bigRss = median(runs.get(big)!.map((r) => r.peakRssMiB))
    const ratio = bigRss / smallRss
    const smallRssAll = runs.get(small)!.map((r) => r.peakRssMiB)
    return {
      rows: [row(small), row(big)],
      checks: [
        {
          name: 'peak RSS 20k / 2k',
          target: `<= ${TARGET_RSS_RATIO.toFixed(2)}`,
          value: `${ratio.toFixed(2)} (${bigRss} / ${smallRss} MiB; against each 2k run ${(bigRss / Math.max(...smallRssAll)).toFixed(2)}–${(bigRss / Math.min(...smallRssAll)).toFixed(2)})`,
          met: ratio <= TARGET_RSS_RATIO,
        },
      ],
      notes: [
        `\`evflow scan <shard folder> -o <tmp> --json\` with defaults (size 64, concurrency max(2, cores), at most 1,024 rows / 256 MiB in flight); runs in order 2k, 20k${smallRuns > 1 ? `, then 2k × ${smallRuns - 1}` : ''}.`,
        '"pipeline" rows/s is the run summary\'s rowsPerS; "process" divides by the child\'s wall time (Node start-up, planning and commit included). Peak RSS is the summary\'s peakRssMiB (`process.resourceUsage().maxRSS`), cross-checked from outside with `/usr/bin/time -f %M`.',
      ],
      settings: { rows: [ROWS, BIG_ROWS], smallRuns, bigRuns: 1, fileBytes: [small.fileBytes, big.fileBytes] },
      raw: { small: runs.get(small), big: runs.get(big) },
    }
  },
}
