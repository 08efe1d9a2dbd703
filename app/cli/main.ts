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
import { z } from 'zod'

import { pipelines } from '../../pipelines/index.js'
import { EVFLOW_VERSION, runPipeline, type ProgressSink, type RunOptions, type RunSummary } from '../../pipelines/run.js'
import { flagHelp, type PipelineDefinition } from '../../pipelines/definition.js'
import { EvflowError, PipelineConfigError, RunInterruptedError, describeError, exitCodeHelp, exitCodeOf } from '../../src/errors.js'
import { STATUS_COLUMNS } from '../../src/parquet/output-schema.js'
import { registerEvalCommand } from './eval-command.js'
import { registerQueueCommands } from './queue-commands.js'
import { addReadOptions, flagParser, positiveInt, readConfigFile } from './args.js'
import { examplesHelp } from './examples.js'
import { addReadBudgetOptions, type ReadBudgetFlags } from './read-options.js'
import { ParquetReader } from '../../src/parquet/reader.js'
import { describeShardFile, formatDescription } from './inspect.js'
import { formatSummary, jsonProgress, lineProgress, recordSeries, teeProgress, terminalProgress } from './progress.js'
import { registerReportCommand, reportAfterRun } from './report-command.js'

/** The exit codes the CLI itself decides; the others come from the error classes (`src/errors.ts`). */
export const EXIT = {
  ok: 0,
  unexpected: 1,
  usage: exitCodeOf('PipelineConfigError'),
  shardsFailed: exitCodeOf('ShardReadError'),
  interrupted: exitCodeOf('RunInterruptedError'),
} as const

const RUN_KEYS = ['imageColumn', 'idColumn', 'keep', 'rows', 'rowGroups', 'limit', 'maxRecordsInFlight', 'maxBytesInFlight', 'overwrite', 'readTimeoutMs', 'readMemoryMb'] as const

/** After the first Ctrl-C / SIGTERM, the process ends by this deadline whatever is still running. */
const SIGNAL_DEADLINE_MS = 2500

/**
 * The checks of the run keys (`RUN_KEYS`) a config file or the flags give, as the pipeline's own config is
 * checked. Keys without a rule here pass unchanged (their owners validate them).
 */
const range = z.tuple([z.number().int().min(0), z.number().int().min(0)])
const runSchema = z.looseObject({
  imageColumn: z.string().min(1).optional(),
  idColumn: z.string().min(1).optional(),
  keep: z.array(z.string().min(1)).optional(),
  rows: range.optional(),
  rowGroups: range.optional(),
  /** 0 would commit empty shards: refused. */
  limit: z.number().int().min(1).optional(),
  maxRecordsInFlight: z.number().int().min(1).optional(),
  maxBytesInFlight: z.number().int().min(1).optional(),
  overwrite: z.boolean().optional(),
})

/** One `PipelineConfigError` for a zod failure, naming the field. */
function configError(error: z.ZodError): PipelineConfigError {
  const issue = error.issues[0]
  const field = issue.path.length > 0 ? issue.path.join('.') : ((issue as { keys?: string[] }).keys?.join(', ') ?? 'config')
  return new PipelineConfigError(field, issue.message)
}

/** What a run command's help says about exit codes. */
const RUN_EXIT_HELP = exitCodeHelp([0, 1, 2, 3, 4, 6, 130], { 0: 'row errors are data' })

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
  if (!parsed.success) throw configError(parsed.error)
  const runParsed = runSchema.safeParse(run)
  if (!runParsed.success) throw configError(runParsed.error)
  return { config: Object.freeze(parsed.data as object), run: runParsed.data as Partial<RunOptions> }
}

/**
 * Kept columns that the output writes under another name: a kept column named like a status or result
 * column becomes `input_<name>` (`--keep caption` on `caption`). One note per such column.
 */
export function renamedKeptColumns(definition: PipelineDefinition, config: object, keep: readonly string[]): string[] {
  const reserved = new Set<string>([...STATUS_COLUMNS, ...definition.columns(config).map((c) => c.name)])
  return keep.filter((name) => reserved.has(name)).map((name) => `the kept column ${name} is written as input_${name} (${name} is a column ${definition.name} writes)`)
}

interface CommonFlags extends ReadBudgetFlags {
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
    .option('--json', 'JSON lines on stdout (start, progress, shard, summary) instead of the progress display')
    .option('--max-in-flight <n>', 'most rows between reader and writer (default 1024)', positiveInt)
    .option('--max-bytes-in-flight <n>', "most bytes held by the rows in flight and the model's batches (default 256 MiB)", positiveInt)
    .option('--verbose', 'print stacks on errors')
    .option('--report', 'at the end, write an HTML report to <out>/_evflow/report.html (see evflow report)')
  addReadBudgetOptions(command)
  for (const flag of definition.flags) {
    // The default shown is the pipeline's own (`vqa`: 8 new tokens, `caption`: 32).
    const option = new Option(flag.flags, flagHelp(flag, definition.defaults))
    const parse = flagParser(flag.parse ?? ((text: string) => text))
    if (flag.repeatable) option.argParser((text: string, previous: unknown[] | undefined) => [...(previous ?? []), parse(text)])
    else if (flag.parse) option.argParser((text: string) => parse(text))
    command.addOption(option)
  }
  const results = definition.columns(definition.defaults).map((c) => c.name)
  command.addHelpText(
    'after',
    `\nOutput columns: the kept columns (--keep, the id column), ${STATUS_COLUMNS.join(', ')}, ${results.join(', ')}.\n` +
      `A kept column named like one of these is written as input_<name> (--keep ${results[0]} gives input_${results[0]}).\n` +
      `${examplesHelp(definition.name)}\n${RUN_EXIT_HELP}`,
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
      readTimeoutMs: flags.readTimeout,
      readMemoryMb: flags.readMemory,
    }
    for (const flag of definition.flags) {
      const attribute = new Option(flag.flags).attributeName()
      // Only flags given on the command line override the config file (a `--no-x` flag has an implied default).
      if (command.getOptionValueSource(attribute) === 'cli') flagConfig[flag.key] = flags[attribute]
    }
    const { config, run } = resolveConfig(definition, readConfigFile(flags.config), flagConfig)
    // One set of parser processes for planning and reading (each would otherwise start its own).
    const reader = new ParquetReader({
      parsers: 2,
      ...(run.readTimeoutMs === undefined ? {} : { readTimeoutMs: run.readTimeoutMs }),
      ...(run.readMemoryMb === undefined ? {} : { readMemoryMb: run.readMemoryMb }),
      ...(flags.debugSpin === undefined ? {} : { debugSpin: flags.debugSpin }),
    })
    const controller = new AbortController()
    let signals = 0
    const onSignal = (signal: NodeJS.Signals) => {
      signals += 1
      if (signals > 1) process.exit(EXIT.interrupted)
      process.stderr.write(`\n${definition.name}: ${signal}: stopping; shards in progress are not committed\n`)
      controller.abort(new RunInterruptedError(signal))
      void reader.close()
      // The run stops its parser processes and writers at once; should anything still hold the process, it
      // ends anyway (outputs are committed by rename, so nothing half-written can look complete).
      setTimeout(() => {
        process.stderr.write(`${definition.name}: still stopping after ${SIGNAL_DEADLINE_MS} ms: exiting\n`)
        process.exit(EXIT.interrupted)
      }, SIGNAL_DEADLINE_MS).unref()
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    // --json: JSON lines on stdout and nothing else; a terminal: a bar on stderr; otherwise (logs, CI): a
    // short line on stderr every 10 s, so stdout keeps only the summary.
    const display = flags.json ? undefined : process.stderr.isTTY ? terminalProgress(definition.name) : lineProgress(definition.name, (line) => process.stderr.write(line))
    const progress = display ?? jsonProgress((line) => process.stdout.write(line))
    // Said once, when the checks have passed and the work starts: the config (on a terminal), what the
    // model is not for, and kept columns written under another name.
    const notes: ProgressSink = {
      start: () => {
        if (!flags.json && process.stderr.isTTY) process.stderr.write(`evflow ${EVFLOW_VERSION} ${definition.name}: config ${JSON.stringify(config)}\n`)
        for (const note of [...(definition.notices?.(config) ?? []), ...renamedKeptColumns(definition, config, run.keep ?? [])]) process.stderr.write(`evflow: note: ${note}\n`)
      },
    }
    const series = recordSeries(flags.out)
    let summary: RunSummary
    try {
      summary = await runPipeline(definition, config, {
        ...run,
        inputs,
        outDir: flags.out,
        progress: teeProgress(notes, progress, series),
        progressIntervalMs: flags.json ? 2000 : 200,
        signal: controller.signal,
        reader,
      } as RunOptions)
    } finally {
      // however the run ends: a bar left running would hold the process open
      display?.close()
      series.done()
      await reader.close()
    }
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
    // A usage mistake is one line: commander's message and where to look.
    .configureOutput({ outputError: (text, write) => write(`${text.trimEnd()} (see --help)\n`) })
    .exitOverride()
  program.addHelpText('after', `${examplesHelp('evflow')}\nEach command has its own --help, with examples and exit codes; docs/cli.md has them all.`)
  for (const definition of Object.values(pipelines)) addPipelineCommand(program, definition)
  program
    .command('inspect <shard>')
    .description('show a Parquet shard: schema, row groups, row counts, image column')
    .option('--json', 'print JSON')
    .option('--verbose', 'print stacks on errors')
    .addHelpText('after', `${examplesHelp('inspect')}\n${exitCodeHelp([0, 1, 2, 3], { 2: 'no such file, or a folder', 3: 'not a readable Parquet file' })}`)
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
  // A rejection left unobserved (by a library, on a malformed input) must not kill the run.
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
