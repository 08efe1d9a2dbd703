/** `evflow report <out>`: writes a self-contained HTML report of a run's output folder. */
import type { Command } from 'commander'

import { EVFLOW_VERSION } from '../../pipelines/run.js'
import { buildReport, type ReportOptions, type ReportResult } from '../report/index.js'
import { exitCodeHelp } from '../../src/errors.js'
import { nonNegativeInt } from './args.js'
import { examplesHelp } from './examples.js'

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(2)} MB`

/** The one line printed after a report is written. */
export function formatReportLine(result: ReportResult): string {
  const { rows } = result
  return (
    `report: ${result.path} (${mib(result.bytes)}): ${rows.total} rows (${rows.ok} ok, ${rows.error} error), ` +
    `${result.gallery} in the gallery, ${result.errorReasons} error reason(s), ${result.thumbnails.made} thumbnails in ${(result.durationMs / 1000).toFixed(1)} s\n`
  )
}

/**
 * Builds the report for a run command's `--report` flag and prints one line (a JSON line `{"event":"report"}`
 * with `json`) on stdout. A failure is printed on stderr, not thrown: the run's own result and exit code stand.
 */
export async function reportAfterRun(outDir: string, json: boolean): Promise<boolean> {
  try {
    const result = await buildReport({ outDir, evflow: EVFLOW_VERSION })
    process.stdout.write(json ? `${JSON.stringify({ event: 'report', time: new Date().toISOString(), ...result })}\n` : formatReportLine(result))
    return true
  } catch (error) {
    const e = error as Error
    process.stderr.write(`evflow: report not written: ${e.name ?? 'Error'}: ${e.message ?? String(error)}\n`)
    return false
  }
}

/** Registers `evflow report` on `program`. */
export function registerReportCommand(program: Command): void {
  program
    .command('report <out>')
    .description('write a self-contained HTML report of a run: summary, gallery of images beside their outputs, errors, where time went')
    .option('-o, --output <file>', 'where to write the page (.html; default <out>/_evflow/report.html)')
    .option('--reference <inputs...>', "reference Parquet files, folders or globs (as for evflow eval): adds the evaluation and each row's reference")
    .option('--id-column <name>', "column joining output and reference rows (default 'id')")
    .option('--sample <n>', 'ok rows sampled for the gallery (default 200)', nonNegativeInt)
    .option('--seed <n>', 'seed of the sample (default 1)', nonNegativeInt)
    .option('--verbose', 'print stacks on errors')
    .addHelpText(
      'after',
      `
The page has no external resource (inline CSS, SVG and thumbnails; it makes no network request) and
stays under 5 MB. It reads each output shard once, and the input rows of the sampled rows for thumbnails
(the completion records name each shard's input and rows).
${examplesHelp('report')}
${exitCodeHelp([0, 1, 2, 3], { 0: 'written', 2: 'no such folder, nothing committed in it, a reference missing', 3: 'a reference shard unreadable', 1: 'the page cannot be written' })}`,
    )
    .action(async (out: string, flags: { output?: string; reference?: string[]; idColumn?: string; sample?: number; seed?: number }) => {
      const options: ReportOptions = {
        outDir: out,
        evflow: EVFLOW_VERSION,
        ...(flags.output === undefined ? {} : { output: flags.output }),
        ...(flags.reference === undefined ? {} : { reference: flags.reference }),
        ...(flags.idColumn === undefined ? {} : { idColumn: flags.idColumn }),
        ...(flags.sample === undefined ? {} : { sample: flags.sample }),
        ...(flags.seed === undefined ? {} : { seed: flags.seed }),
      }
      process.stdout.write(formatReportLine(await buildReport(options)))
    })
}
