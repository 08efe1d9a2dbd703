#!/usr/bin/env -S node --max-semi-space-size=2
/**
 * The `evflow` command line. One command per registered pipeline (`evflow scan ...`), plus `inspect`.
 * The shebang caps V8's young generation (`--max-semi-space-size=2`, MiB): measured, it keeps a long scan's
 * peak RSS at a short scan's at no throughput cost (docs/benchmarks.md).
 * Flags override `--config file.json`, which overrides the pipeline's defaults; the resolved config is
 * frozen, printed at start and stored in the output. Exit codes: see docs/cli.md.
 */
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Command, Option } from 'commander'

import { pipelines } from '../../pipelines/index.js'
import { EVFLOW_VERSION, runPipeline, type RunOptions } from '../../pipelines/run.js'
import { flagHelp, type PipelineDefinition } from '../../pipelines/definition.js'
import { EvflowError, PipelineConfigError, RunInterruptedError, describeError } from '../../src/errors.js'
import { registerEvalCommand } from './eval-command.js'
import { registerQueueCommands } from './queue-commands.js'
import { addReadOptions, positiveInt, readConfigFile } from './args.js'
import { describeShardFile, formatDescription } from './inspect.js'
import { formatSummary, jsonProgress, recordSeries, teeProgress, terminalProgress } from './progress.js'
import { registerReportCommand, reportAfterRun } from './report-command.js'

export const EXIT = {
  ok: 0,
  unexpected: 1,
  usage: 2,
  shardsFailed: 3,
  locked: 4,
  interrupted: 130,
  modelCannotRun: 6,
} as const

const RUN_KEYS = ['imageColumn', 'idColumn', 'keep', 'rows', 'rowGroups', 'limit', 'maxRecordsInFlight', 'maxBytesInFlight', 'overwrite'] as const

/** Merges defaults < config file < flags into one frozen config; throws `PipelineConfigError` naming the field. */
export function resolveConfig(
  definition: PipelineDefinition,
  fileConfig: Record<string, unknown>,
  flagConfig: Record<string, unknown>,
): { config: object; run: Partial<RunOptions> } {
  const merged: Record<string, unknown> = { ...definition.defaults }
  const run: Record<string, unknown> = {}
  for (const source of [fileConfig, flagConfig]) {
    for (const [key, value] of Object.entries(source)) {
      if (value === undefined) continue
      if ((RUN_KEYS as readonly string[]).includes(key)) run[key] = value
      else merged[key] = value
    }
  }
  const parsed = definition.schema.safeParse(merged)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    const field = issue.path.length > 0 ? issue.path.join('.') : ((issue as { keys?: string[] }).keys?.join(', ') ?? 'config')
    throw new PipelineConfigError(field, issue.message)
  }
  return { config: Object.freeze(parsed.data as object), run: run as Partial<RunOptions> }
}

interface CommonFlags {
  out: string
  config?: string
  imageColumn?: string
  idColumn?: string
  keep?: string[]
  rows?: [number, number]
  rowGroups?: [number, number]
  limit?: number
  overwrite?: boolean
  json?: boolean
  maxInFlight?: number
  maxBytesInFlight?: number
  verbose?: boolean
  report?: boolean
}

function addPipelineCommand(program: Command, definition: PipelineDefinition): void {
  const command = addReadOptions(
    program
      .command(`${definition.name} <inputs...>`)
      .description(definition.summary)
      .requiredOption('-o, --out <dir>', 'output folder (one output shard per input shard)'),
  )
    .option('--overwrite', 'redo shards that are already committed')
    .option('--json', 'JSON lines on stdout instead of a progress bar')
    .option('--max-in-flight <n>', 'most rows between reader and writer (default 1024)', positiveInt)
    .option('--max-bytes-in-flight <n>', "most bytes held by the rows in flight and the model's batches (default 512 MiB)", positiveInt)
    .option('--verbose', 'print stacks on errors')
    .option('--report', 'at the end, write an HTML report to <out>/_evflow/report.html (see evflow report)')
  for (const flag of definition.flags) {
    // The default shown is the pipeline's own (`vqa`: 8 new tokens, `caption`: 32).
    const option = new Option(flag.flags, flagHelp(flag, definition.defaults))
    const parse = flag.parse ?? ((text: string) => text)
    if (flag.repeatable) option.argParser((text: string, previous: unknown[] | undefined) => [...(previous ?? []), parse(text)])
    else if (flag.parse) option.argParser((text: string) => parse(text))
    command.addOption(option)
  }
  command.addHelpText(
    'after',
    `\nExamples:\n  evflow ${definition.name} fixtures/shards -o out/${definition.name}\n  evflow ${definition.name} 'data/**/*.parquet' -o out/ --keep url,caption --json\n\nExit codes: 0 ok (row errors are data), 2 bad usage or config, 3 some shards unreadable,\n4 output folder in use, 6 the model cannot run, 130 interrupted (rerun to resume), 1 anything else.`,
  )
  command.action(async (inputs: string[], flags: CommonFlags & Record<string, unknown>) => {
    const flagConfig: Record<string, unknown> = {
      imageColumn: flags.imageColumn,
      idColumn: flags.idColumn,
      keep: flags.keep,
      rows: flags.rows,
      rowGroups: flags.rowGroups,
      limit: flags.limit,
      overwrite: flags.overwrite,
      maxRecordsInFlight: flags.maxInFlight,
      maxBytesInFlight: flags.maxBytesInFlight,
    }
    for (const flag of definition.flags) {
      const attribute = new Option(flag.flags).attributeName()
      // Only flags given on the command line override the config file (a `--no-x` flag has an implied default).
      if (command.getOptionValueSource(attribute) === 'cli') flagConfig[flag.key] = flags[attribute]
    }
    const { config, run } = resolveConfig(definition, readConfigFile(flags.config), flagConfig)
    const controller = new AbortController()
    let signals = 0
    const onSignal = (signal: NodeJS.Signals) => {
      signals += 1
      if (signals > 1) process.exit(EXIT.interrupted)
      process.stderr.write(`\n${definition.name}: ${signal}: stopping; shards in progress are not committed\n`)
      controller.abort(new RunInterruptedError(signal))
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    // --json: JSON lines on stdout and nothing else; a terminal: a bar on stderr; otherwise (logs, CI):
    // JSON lines on stderr, so stdout keeps only the summary.
    const progress = flags.json
      ? jsonProgress((line) => process.stdout.write(line))
      : process.stderr.isTTY
        ? terminalProgress(definition.name)
        : jsonProgress((line) => process.stderr.write(line))
    if (!flags.json && process.stderr.isTTY) {
      process.stderr.write(`evflow ${EVFLOW_VERSION} ${definition.name}: config ${JSON.stringify(config)}\n`)
    }
    const series = recordSeries(flags.out)
    const summary = await runPipeline(definition, config, {
      ...run,
      inputs,
      outDir: flags.out,
      progress: teeProgress(progress, series),
      progressIntervalMs: flags.json || !process.stderr.isTTY ? 2000 : 200,
      signal: controller.signal,
    } as RunOptions).finally(() => series.done())
    if (!flags.json) process.stdout.write(formatSummary(summary))
    if (flags.report) await reportAfterRun(flags.out, flags.json === true)
    process.exitCode = summary.shards.failed > 0 ? EXIT.shardsFailed : EXIT.ok
  })
}

export function buildProgram(): Command {
  const program = new Command()
  program
    .name('evflow')
    .description('Run efficient vision-language models over Parquet datasets; write results back as Parquet.')
    .version(EVFLOW_VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
  for (const definition of Object.values(pipelines)) addPipelineCommand(program, definition)
  program
    .command('inspect <shard>')
    .description('show a Parquet shard: schema, row groups, row counts, image column')
    .option('--json', 'print JSON')
    .action(async (shard: string, flags: { json?: boolean }) => {
      const description = await describeShardFile(shard)
      process.stdout.write(flags.json ? `${JSON.stringify(description, null, 2)}\n` : formatDescription(description))
    })
  registerQueueCommands(program, { resolveConfig })
  registerEvalCommand(program)
  registerReportCommand(program)
  return program
}

export async function main(argv: readonly string[] = process.argv): Promise<number> {
  // `evflow inspect x | head`: a closed stdout ends the command quietly, as Unix tools do.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(EXIT.ok)
  })
  // hyparquet may leave a rejection of a malformed file unobserved; it must not kill the run.
  process.on('unhandledRejection', (reason) => {
    process.stderr.write(`evflow: warning: ignored an unhandled rejection: ${describeError(reason)}\n`)
  })
  const program = buildProgram()
  try {
    await program.parseAsync(argv as string[])
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok
  } catch (error) {
    const e = error as { code?: string; exitCode?: number }
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) {
      // commander already printed help, the version or the usage error.
      return e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help' ? EXIT.ok : EXIT.usage
    }
    const verbose = argv.includes('--verbose')
    if (error instanceof EvflowError) {
      process.stderr.write(`evflow: ${error.name}: ${error.message}\n`)
      if (verbose && error.stack) process.stderr.write(`${error.stack}\n`)
      return error.exitCode
    }
    process.stderr.write(`evflow: unexpected error: ${describeError(error)}\n`)
    if (verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`)
    else process.stderr.write('(run with --verbose for the stack)\n')
    return EXIT.unexpected
  }
}

function isEntry(): boolean {
  try {
    return process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)
  } catch {
    return false
  }
}

if (isEntry()) {
  main().then(
    (code) => {
      process.exitCode = code
    },
    (error: unknown) => {
      process.stderr.write(`evflow: ${describeError(error)}\n`)
      process.exitCode = EXIT.unexpected
    },
  )
}
