/**
 * The distributed-mode commands: `evflow submit`, `evflow worker`, `evflow status`, `evflow cancel`.
 * See docs/distributed.md.
 */
import { Command, Option } from 'commander'

import { pipelines } from '../../pipelines/index.js'
import type { RunOptions } from '../../pipelines/run.js'
import { flagHelp, type PipelineDefinition, type PipelineFlag } from '../../pipelines/definition.js'
import { PipelineConfigError, describeError, exitCodeHelp } from '../../src/errors.js'
import { addReadOptions, nonNegativeInt, positiveInt, readConfigFile } from './args.js'
import { examplesHelp } from './examples.js'
import { addReadBudgetOptions, readBudgetOf, type ReadBudgetFlags } from './read-options.js'
import { DEFAULT_QUEUE_NAME, queueAddress } from '../queue/connection.js'
// bullmq is imported by the actions only, so that other commands do not pay for loading it.
import type { SubmitReport } from '../queue/submit.js'
import type { WorkerEvent } from '../queue/worker.js'

/** The CLI's config resolution (`resolveConfig` in `app/cli/main.ts`), passed in to keep imports one-way. */
export type ResolveConfig = (
  definition: PipelineDefinition,
  fileConfig: Record<string, unknown>,
  flagConfig: Record<string, unknown>,
) => { config: object; run: Partial<RunOptions> }

export interface QueueCommandsOptions {
  readonly resolveConfig: ResolveConfig
  /** Pipeline registry. Default: `pipelines/index.ts`. */
  readonly pipelines?: Readonly<Record<string, PipelineDefinition>>
}

const QUEUE_EXIT_HELP = `\n${exitCodeHelp([0, 1, 2, 5])}`

/**
 * The help of a pipeline flag `submit` offers: its description, the pipelines that have it and each one's
 * default, e.g. `most generated tokens per text [caption, video-caption: default 32; vqa: default 8]`.
 */
export function submitFlagHelp(owners: readonly { flag: PipelineFlag; definition: PipelineDefinition }[]): string {
  const byDefault = new Map<string, string[]>()
  for (const { flag, definition } of owners) {
    const full = flagHelp(flag, definition.defaults)
    const shown = full.startsWith(flag.description) ? full.slice(flag.description.length).trim().replace(/^\((.*)\)$/, '$1') : ''
    byDefault.set(shown, [...(byDefault.get(shown) ?? []), definition.name])
  }
  const groups = [...byDefault].map(([shown, names]) => (shown === '' ? names.join(', ') : `${names.join(', ')}: ${shown}`))
  return `${owners[0].flag.description} [${groups.join('; ')}]`
}


function addQueueOptions(command: Command): Command {
  return command
    .addOption(new Option('--queue <url>', 'Redis holding the queue, e.g. redis://10.0.0.5:6379').env('EVFLOW_QUEUE'))
    .addOption(new Option('--queue-name <name>', `queue name (default ${DEFAULT_QUEUE_NAME})`).env('EVFLOW_QUEUE_NAME'))
}

interface QueueFlags {
  queue?: string
  queueName?: string
  json?: boolean
}

const address = (flags: QueueFlags) => queueAddress(flags.queue, flags.queueName ?? DEFAULT_QUEUE_NAME)

/** Registers `submit`, `worker`, `status` and `cancel` on `program`. */
export function registerQueueCommands(program: Command, options: QueueCommandsOptions): void {
  const registry = options.pipelines ?? (pipelines as Readonly<Record<string, PipelineDefinition>>)
  addSubmitCommand(program, registry, options.resolveConfig)
  addWorkerCommand(program)
  addStatusCommands(program)
}

function addSubmitCommand(program: Command, registry: Readonly<Record<string, PipelineDefinition>>, resolveConfig: ResolveConfig): void {
  const command = program
    .command('submit <inputs...>')
    .description('queue one job per shard of a run, for `evflow worker` processes on any machine')
    .requiredOption('-o, --out <dir>', 'output folder, on a file system every worker mounts at the same path')
    .addOption(new Option('--pipeline <name>', 'pipeline to run').choices(Object.keys(registry)).makeOptionMandatory())
  addReadOptions(addQueueOptions(command))
    .option('--max-in-flight <n>', "most rows between a worker's reader and writer (default 1024)", positiveInt)
    .option('--max-rows-per-job <n>', 'split shards with more rows into row-group ranges of about this many rows', positiveInt)
    .option('--attempts <n>', 'attempts per shard before it is kept failed (default 3)', positiveInt)
    .option('--backoff-ms <ms>', 'first retry delay, doubling after each failure (default 10000)', nonNegativeInt)
    .option('--retry-failed', "put this run's failed shards back in the queue")
    .option('--json', 'print the report as JSON')
    .option('--verbose', 'print stacks on errors')

  // Every pipeline's options, parsed by the chosen pipeline's own parser once it is known; the help names
  // the pipelines that have each one, with their defaults.
  const owners = new Map<string, { flag: PipelineFlag; definition: PipelineDefinition; pipeline: string }[]>()
  const taken = new Set(command.options.map((o) => o.attributeName()))
  for (const definition of Object.values(registry)) {
    for (const flag of definition.flags) {
      const attribute = new Option(flag.flags).attributeName()
      if (!owners.has(attribute)) {
        if (taken.has(attribute)) continue
        owners.set(attribute, [])
      }
      owners.get(attribute)!.push({ flag, definition, pipeline: definition.name })
    }
  }
  for (const entries of owners.values()) {
    const option = new Option(entries[0].flag.flags, submitFlagHelp(entries))
    if (entries[0].flag.repeatable) option.argParser((text: string, previous: string[] | undefined) => [...(previous ?? []), text])
    command.addOption(option)
  }
  command.addHelpText('after', `${examplesHelp('submit')}${QUEUE_EXIT_HELP}`)

  command.action(async (inputs: string[], flags: Record<string, unknown> & QueueFlags) => {
    const queue = address(flags)
    const definition = registry[flags.pipeline as string]
    const flagConfig: Record<string, unknown> = {
      imageColumn: flags.imageColumn,
      idColumn: flags.idColumn,
      keep: flags.keep,
      rows: flags.rows,
      rowGroups: flags.rowGroups,
      limit: flags.limit,
      maxRecordsInFlight: flags.maxInFlight,
    }
    for (const [attribute, entries] of owners) {
      const raw = flags[attribute]
      // only flags given on the command line (a `--no-x` flag has an implied default)
      if (raw === undefined || command.getOptionValueSource(attribute) !== 'cli') continue
      const mine = entries.find((e) => e.pipeline === definition.name)
      if (!mine) throw new PipelineConfigError(`--${attribute.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`, `not an option of pipeline ${definition.name}`)
      const parse = (value: unknown) => {
        if (typeof value !== 'string' || !mine.flag.parse) return value
        try {
          return mine.flag.parse(value)
        } catch (error) {
          throw new PipelineConfigError(mine.flag.flags.split(' ')[0], describeError(error))
        }
      }
      flagConfig[mine.flag.key] = Array.isArray(raw) ? raw.map(parse) : parse(raw)
    }
    const { config, run } = resolveConfig(definition, readConfigFile(flags.config as string | undefined), flagConfig)
    if (run.overwrite) throw new PipelineConfigError('overwrite', 'submit does not overwrite committed shards: remove them, or write to another folder')
    const { submitShards } = await import('../queue/submit.js')
    const report = await submitShards({
      address: queue,
      definition,
      config,
      inputs,
      outDir: flags.out as string,
      read: run,
      ...(flags.maxRowsPerJob === undefined ? {} : { maxRowsPerJob: flags.maxRowsPerJob as number }),
      ...(flags.attempts === undefined ? {} : { attempts: flags.attempts as number }),
      ...(flags.backoffMs === undefined ? {} : { backoffMs: flags.backoffMs as number }),
      retryFailed: flags.retryFailed === true,
    })
    for (const u of report.unreadable) process.stderr.write(`evflow submit: warning: ${u.shard}: unreadable now (${u.error}); queued anyway\n`)
    process.stdout.write(flags.json ? `${JSON.stringify({ ...report, config }, null, 2)}\n` : formatSubmit(report, config, flags.queue ?? ''))
  })
}

function formatSubmit(report: SubmitReport, config: object, url: string): string {
  const retried = report.retried > 0 ? `, ${report.retried} failed put back` : ''
  return (
    `submitted run ${report.run} (${report.pipeline}, config ${report.configHash}) to ${report.queue}\n` +
    `  ${report.jobs} shard jobs, ${report.rows} rows -> ${report.outDir}\n` +
    `  ${report.added} added, ${report.existing} already in the queue${retried}\n` +
    (report.setAside.shards.length > 0 ? `  set aside: ${report.setAside.shards.length} output(s) not in this plan in ${report.setAside.folder}\n` : '') +
    `  config ${JSON.stringify(config)}\n` +
    `  watch: evflow status --queue ${url} ${report.run}\n`
  )
}

interface WorkerFlags extends QueueFlags, ReadBudgetFlags {
  concurrency?: number
  lockMs?: number
  stalledMs?: number
  maxStalled?: number
  stopTimeout?: number
  exitWhenIdle?: boolean
  progressMs?: number
  debugRowDelayMs?: number
}

function addWorkerCommand(program: Command): void {
  const command = program
    .command('worker')
    .description('take shard jobs from the queue and run them, until SIGTERM (or an idle queue with --exit-when-idle)')
  addQueueOptions(command)
    .option('--concurrency <n>', 'shards run at once by this process (default 1)', positiveInt)
    .option('--lock-ms <ms>', "a job's lock lasts this long unless renewed (renewed every half); a dead worker's shard is retaken after it (default 30000)", positiveInt)
    .option('--stalled-ms <ms>', 'how often to look for shards whose worker died (default 30000)', positiveInt)
    .option('--max-stalled <n>', 'times a shard may be retaken from a dead worker before it is failed (default 2)', nonNegativeInt)
    .option('--stop-timeout <s>', 'on SIGTERM, finish current shards within this many seconds, else put them back in the queue (default 2)', nonNegativeInt)
    .option('--exit-when-idle', 'exit once the queue holds no queued, retrying or running shard (for batch jobs, e.g. Kubernetes)')
    .option('--progress-ms <ms>', 'how often to report rows done (default 1000)', positiveInt)
    .option('--json', 'log JSON lines (the default when stderr is not a terminal)')
    .option('--verbose', 'print stacks on errors')
    .addOption(new Option('--debug-row-delay-ms <ms>', 'testing only: pause after each row').argParser(nonNegativeInt).hideHelp())
  addReadBudgetOptions(command)
  command.addHelpText('after', `${examplesHelp('worker')}\nStop with SIGTERM or Ctrl-C (twice: put current shards back at once).${QUEUE_EXIT_HELP}`)
  command.action(async (flags: WorkerFlags) => {
    const queue = address(flags)
    const json = flags.json === true || !process.stderr.isTTY
    const log = (event: WorkerEvent) => process.stderr.write(json ? `${JSON.stringify({ t: new Date().toISOString(), ...event })}\n` : formatEvent(event))
    const { startWorker } = await import('../queue/worker.js')
    const worker = await startWorker({
      address: queue,
      log,
      ...(flags.concurrency === undefined ? {} : { concurrency: flags.concurrency }),
      ...(flags.lockMs === undefined ? {} : { lockMs: flags.lockMs }),
      ...(flags.stalledMs === undefined ? {} : { stalledIntervalMs: flags.stalledMs }),
      ...(flags.maxStalled === undefined ? {} : { maxStalled: flags.maxStalled }),
      ...(flags.stopTimeout === undefined ? {} : { stopTimeoutMs: flags.stopTimeout * 1000 }),
      ...(flags.progressMs === undefined ? {} : { progressIntervalMs: flags.progressMs }),
      ...(flags.debugRowDelayMs === undefined ? {} : { debugRowDelayMs: flags.debugRowDelayMs }),
      ...readBudgetOf(flags),
      exitWhenIdle: flags.exitWhenIdle === true,
    })
    let signals = 0
    const onSignal = (signal: NodeJS.Signals) => {
      signals += 1
      if (signals > 2) process.exit(130)
      void worker.stop(signal, signals > 1)
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
    await worker.done
    process.off('SIGTERM', onSignal)
    process.off('SIGINT', onSignal)
  })
}

function formatEvent(e: WorkerEvent): string {
  const text = (() => {
    switch (e.event) {
      case 'ready':
        return `worker ${e.worker} ready on ${e.queue}, ${e.concurrency} at a time`
      case 'job-start':
        return `${e.shard}: started (attempt ${e.attempt})`
      case 'job-done':
        return `${e.shard}: ${e.status}, ${e.rowsIn} rows (${e.rowsError} errors) in ${(e.durationMs / 1000).toFixed(1)}s`
      case 'job-failed':
        return `${e.shard}: attempt ${e.attempt} failed${e.retry ? ' (will retry)' : ''}: ${e.error}`
      case 'job-released':
        return `${e.shard}: put back in the queue`
      case 'lock-lost':
        return `${e.shard}: lock lost; another worker has it, this attempt is abandoned`
      case 'queue-error':
        return `queue error: ${e.error}`
      case 'stopping':
        return `stopping (${e.reason}); ${e.running} shard(s) running`
      case 'stopped':
        return `stopped: ${e.completed} done, ${e.failedAttempts} failed attempt(s)`
    }
  })()
  return `evflow worker: ${text}\n`
}

function addStatusCommands(program: Command): void {
  const status = program
    .command('status [id]')
    .description('shards queued / retrying / running / done / failed per run, rows/s, ETA, last errors; or one job (by job id)')
  addQueueOptions(status).option('--json', 'print JSON').option('--verbose', 'print stacks on errors')
  status.addHelpText('after', `${examplesHelp('status')}${QUEUE_EXIT_HELP}`)
  status.action(async (id: string | undefined, flags: QueueFlags) => {
    const queue = address(flags)
    const { formatJob, formatStatus, jobDetail, queueStatus } = await import('../queue/status.js')
    if (id !== undefined && id.includes('.')) {
      const detail = await jobDetail(queue, id)
      if (!detail) throw new PipelineConfigError('id', `no evflow job ${id} in the queue`)
      process.stdout.write(flags.json ? `${JSON.stringify(detail, null, 2)}\n` : formatJob(detail))
      return
    }
    const result = await queueStatus(queue, id)
    process.stdout.write(flags.json ? `${JSON.stringify(result, null, 2)}\n` : formatStatus(result))
  })

  const cancel = program
    .command('cancel [run]')
    .description("remove a run's queued shards (running ones finish); --all for every run")
  addQueueOptions(cancel)
    .option('--all', 'every run in the queue')
    .option('--purge', "also remove finished jobs' records (a later submit queues the run afresh; committed shards are still skipped)")
    .option('--json', 'print JSON')
    .option('--verbose', 'print stacks on errors')
  cancel.addHelpText('after', `${examplesHelp('cancel')}${QUEUE_EXIT_HELP}`)
  cancel.action(async (run: string | undefined, flags: QueueFlags & { all?: boolean; purge?: boolean }) => {
    const queue = address(flags)
    if (run === undefined && !flags.all) throw new PipelineConfigError('run', 'name the run to cancel (see evflow status), or give --all')
    const { cancelRun } = await import('../queue/status.js')
    const report = await cancelRun(queue, run, flags.purge === true)
    process.stdout.write(
      flags.json
        ? `${JSON.stringify(report, null, 2)}\n`
        : `${report.queue}: removed ${report.removed} queued shard(s)${report.purged > 0 ? `, purged ${report.purged} finished` : ''}; ${report.running} running shard(s) will finish\n`,
    )
  })
}
