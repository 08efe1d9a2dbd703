/**
 * `scan cli 64px`: the whole `evflow scan` command (read + decode + sha256 + write + commit) in a child
 * process on the 2,000-row shard, with its defaults. For reference next to the in-process decode cases.
 */
import { join } from 'node:path'

import { ROWS } from '../inputs.js'
import { runScan, type ScanRun } from '../scan.js'
import { median, spread } from '../stats.js'
import type { BenchCase, CaseResult } from '../types.js'

const MAX_REPS = 3

export const scanCli: BenchCase = {
  name: 'scan cli 64px',
  section: 'foundation',
  byDefault: true,
  description: 'evflow scan (read + decode 64px + sha256 + write) on 2,000 rows, child process, defaults',
  async run(context): Promise<CaseResult> {
    const input = await context.inputs.shard(ROWS)
    const reps = Math.min(context.settings.reps, MAX_REPS)
    const runs: ScanRun[] = []
    for (let rep = 0; rep < reps; rep++) {
      const run = await runScan(input.dir, join(context.inputs.dir, `out-scan-${rep}`))
      if (run.rowsOk !== ROWS) throw new Error(`scan: ${run.rowsOk} of ${ROWS} rows ok`)
      context.log(`scan cli rep ${rep + 1}/${reps}: ${run.rowsPerS} rows/s`)
      runs.push(run)
    }
    const bytesPerRow = input.fileBytes / ROWS
    return {
      rows: [
        {
          variant: 'evflow scan (pipeline)',
          'rows/s': spread(runs.map((r) => r.rowsPerS)),
          'MB/s': ((median(runs.map((r) => r.rowsPerS)) * bytesPerRow) / 1e6).toFixed(2),
          's': spread(runs.map((r) => r.durationS), 2),
        },
        {
          variant: 'evflow scan (process wall)',
          'rows/s': spread(runs.map((r) => ROWS / r.wallS)),
          'MB/s': ((median(runs.map((r) => ROWS / r.wallS)) * bytesPerRow) / 1e6).toFixed(2),
          's': spread(runs.map((r) => r.wallS), 2),
        },
      ],
      notes: [
        `\`evflow scan <2,000-row shard> -o <tmp> --json\` with its defaults (size 64, concurrency = max(2, cores)), ${reps} reps; "pipeline" is the summary's rowsPerS, "process wall" includes Node start-up and planning.`,
        'MB/s counts input file bytes.',
      ],
      settings: { rows: ROWS, reps, fileBytes: input.fileBytes },
      raw: runs,
    }
  },
}
