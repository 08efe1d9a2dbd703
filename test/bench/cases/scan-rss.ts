/**
 * `scan rss 2k vs 20k`: peak RSS of `evflow scan` on 2,000 and on 20,000 rows of 256×256 JPEGs (child
 * processes, defaults). Memory must not grow with the dataset: target 20k ≤ 1.15 × 2k.
 */
import { join } from 'node:path'

import { BIG_ROWS, ROWS } from '../inputs.js'
import { runScan, type ScanRun } from '../scan.js'
import type { BenchCase, CaseResult, Row } from '../types.js'

const TARGET_RATIO = 1.15

export const scanRss: BenchCase = {
  name: 'scan rss 2k vs 20k',
  section: 'foundation',
  byDefault: true,
  description: 'peak RSS of evflow scan on 2,000 vs 20,000 rows (child processes, defaults)',
  async run(context): Promise<CaseResult> {
    const small = await context.inputs.shard(ROWS)
    const big = await context.inputs.shard(BIG_ROWS)
    const runs: Record<'small' | 'big', ScanRun> = {
      small: await runScan(small.dir, join(context.inputs.dir, 'out-rss-small')),
      big: await runScan(big.dir, join(context.inputs.dir, 'out-rss-big')),
    }
    if (runs.small.rowsOk !== ROWS || runs.big.rowsOk !== BIG_ROWS) throw new Error('scan rss: not every row decoded ok')
    context.log(`scan rss: ${runs.small.peakRssMiB} MiB (${ROWS} rows), ${runs.big.peakRssMiB} MiB (${BIG_ROWS} rows)`)
    const row = (label: string, run: ScanRun, fileBytes: number): Row => ({
      rows: label,
      'input MB': (fileBytes / 1e6).toFixed(1),
      'peak RSS MiB (summary)': run.peakRssMiB,
      'max RSS MiB (GNU time)': run.timeMaxRssMiB ?? 'n/a',
      'in-flight peak rows': run.inFlightPeakRecords,
      'rows/s': run.rowsPerS,
    })
    const ratio = runs.big.peakRssMiB / runs.small.peakRssMiB
    const timeRatio = runs.big.timeMaxRssMiB !== null && runs.small.timeMaxRssMiB !== null ? runs.big.timeMaxRssMiB / runs.small.timeMaxRssMiB : null
    return {
      rows: [row(ROWS.toLocaleString('en'), runs.small, small.fileBytes), row(BIG_ROWS.toLocaleString('en'), runs.big, big.fileBytes)],
      checks: [
        {
          name: 'peak RSS 20k / 2k',
          target: `<= ${TARGET_RATIO.toFixed(2)}`,
          value: `${ratio.toFixed(2)}${timeRatio === null ? '' : ` (GNU time: ${timeRatio.toFixed(2)})`}`,
          met: ratio <= TARGET_RATIO,
        },
      ],
      notes: [`\`evflow scan <shard> -o <tmp> --json\` with defaults (max 1,024 rows / 256 MiB in flight); peak RSS from the run summary (\`process.resourceUsage().maxRSS\`), cross-checked with \`/usr/bin/time -f %M\`.`],
      settings: { rows: [ROWS, BIG_ROWS], fileBytes: [small.fileBytes, big.fileBytes] },
      raw: runs,
    }
  },
}
