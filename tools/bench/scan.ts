/** Running the built `evflow scan` CLI in a child process, as a user would, and reading its run summary. */
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** `dist/app/cli/main.js`, from `dist/tools/bench/scan.js`. */
export const CLI = fileURLToPath(new URL('../../app/cli/main.js', import.meta.url))
const GNU_TIME = '/usr/bin/time'

export interface ScanRun {
  /** Wall-clock seconds of the whole child process (Node start-up included). */
  readonly wallS: number
  /** `durationS` from the run summary (the pipeline only). */
  readonly durationS: number
  /** `rowsPerS` from the run summary. */
  readonly rowsPerS: number
  readonly rowsIn: number
  readonly rowsOk: number
  /** `peakRssMiB` from the run summary (the child's own `maxRSS`). */
  readonly peakRssMiB: number
  /** Max RSS measured from outside by GNU time, when installed. */
  readonly timeMaxRssMiB: number | null
  readonly inFlightPeakRecords: number
}

interface Summary {
  durationS: number
  rowsPerS: number
  rows: { in: number; ok: number }
  peakRssMiB: number
  inFlightPeakRecords: number
}

/** Runs `evflow scan <input> -o <out> ...args` and returns its figures; removes `out` afterwards. */
export function runScan(input: string, out: string, args: readonly string[] = []): Promise<ScanRun> {
  return runEvflow('scan', input, out, args)
}

/** Runs `evflow <pipeline> <input> -o <out> --json ...args` in a child process; returns its figures and summary. */
export async function runEvflow(pipeline: string, input: string, out: string, args: readonly string[] = [], options: { keep?: boolean } = {}): Promise<ScanRun & { summary: Summary & Record<string, unknown> }> {
  rmSync(out, { recursive: true, force: true })
  const timeFile = `${out}.time`
  const useTime = existsSync(GNU_TIME)
  // Run the CLI as its bin runs: with the node flags of its shebang.
  const shebang = readFileSync(CLI, 'utf8').split('\n', 1)[0]
  const nodeFlags = shebang.split(/\s+/).filter((word) => word.startsWith('--'))
  const cliArgs = [...nodeFlags, CLI, pipeline, input, '-o', out, '--json', ...args]
  const [command, commandArgs] = useTime
    ? [GNU_TIME, ['-f', '%M', '-o', timeFile, process.execPath, ...cliArgs]]
    : [process.execPath, cliArgs]
  const started = performance.now()
  const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn(command, commandArgs, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')))
    child.on('error', reject)
    child.on('exit', (code) => resolve({ code, stderr }))
  })
  const wallS = (performance.now() - started) / 1000
  if (code !== 0) throw new Error(`evflow ${pipeline} exited with ${code}: ${stderr.slice(-2000)}`)
  const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')) as Summary & Record<string, unknown>
  let timeMaxRssMiB: number | null = null
  if (useTime) {
    const kib = Number.parseInt(readFileSync(timeFile, 'utf8').trim().split('\n').pop() ?? '', 10)
    timeMaxRssMiB = Number.isFinite(kib) ? Math.round(kib / 1024) : null
  }
  if (!options.keep) rmSync(out, { recursive: true, force: true })
  rmSync(timeFile, { force: true })
  return {
    summary,
    wallS,
    durationS: summary.durationS,
    rowsPerS: summary.rowsPerS,
    rowsIn: summary.rows.in,
    rowsOk: summary.rows.ok,
    peakRssMiB: summary.peakRssMiB,
    timeMaxRssMiB,
    inFlightPeakRecords: summary.inFlightPeakRecords,
  }
}
