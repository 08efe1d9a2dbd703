/**
 * Every error evflow throws or records. Each class has a literal `name`, structured fields and an
 * optional `cause`, in the spirit of Effect's `Data.TaggedError`. Record-level failures are not thrown
 * past their stage: they become {@link ErrorRecord}s (see `records.ts`) and flow on to the sink.
 */

export interface EvflowErrorOptions {
  cause?: unknown
}

/** Base class: `instanceof EvflowError` tells evflow's errors from everything else. */
export abstract class EvflowError extends Error {
  abstract override readonly name: string
  /** Process exit code the CLI uses when this error ends a run (see docs/cli.md). */
  readonly exitCode: number = 1

  constructor(message: string, options: EvflowErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
  }
}

/** An option or config value is invalid. Thrown before any I/O. */
export class PipelineConfigError extends EvflowError {
  readonly name = 'PipelineConfigError' as const
  override readonly exitCode = 2
  constructor(
    /** Dotted path of the offending field, e.g. `decode.size`. */
    readonly field: string,
    message: string,
    options?: EvflowErrorOptions,
  ) {
    super(`${field}: ${message}`, options)
  }
}

/** A model package's manifest is missing, malformed or inconsistent. */
export class ModelManifestError extends EvflowError {
  readonly name = 'ModelManifestError' as const
  override readonly exitCode = 2
  constructor(
    readonly field: string,
    message: string,
    options?: EvflowErrorOptions,
  ) {
    super(`manifest ${field}: ${message}`, options)
  }
}

/** No input matched, or an input path does not exist. */
export class InputNotFoundError extends EvflowError {
  readonly name = 'InputNotFoundError' as const
  override readonly exitCode = 2
  constructor(
    readonly input: string,
    message = 'no Parquet file matches',
    options?: EvflowErrorOptions,
  ) {
    super(`${input}: ${message}`, options)
  }
}

/**
 * Why a shard or row group cannot be read: its bytes are damaged or not Parquet (`corrupt`), or parsing
 * overran its time (`timeout`) or memory (`memory`) budget (see docs/reliability.md).
 */
export type ShardReadReason = 'corrupt' | 'timeout' | 'memory'

/** A Parquet shard (or one of its row groups) cannot be read. */
export class ShardReadError extends EvflowError {
  readonly name = 'ShardReadError' as const
  override readonly exitCode = 3
  readonly reason: ShardReadReason
  constructor(
    readonly file: string,
    message: string,
    readonly rowGroup?: number,
    options?: EvflowErrorOptions & { reason?: ShardReadReason },
  ) {
    super(`${file}${rowGroup === undefined ? '' : ` (row group ${rowGroup})`}: ${message}`, options)
    this.reason = options?.reason ?? 'corrupt'
  }
}

/** Writing or committing an output shard failed. */
export class ShardWriteError extends EvflowError {
  readonly name = 'ShardWriteError' as const
  override readonly exitCode = 1
  constructor(
    readonly file: string,
    message: string,
    options?: EvflowErrorOptions,
  ) {
    super(`${file}: ${message}`, options)
  }
}

/** Another run holds the output folder's lock. */
export class OutputLockedError extends EvflowError {
  readonly name = 'OutputLockedError' as const
  override readonly exitCode = 4
  constructor(
    readonly outDir: string,
    readonly holder: string,
    options?: EvflowErrorOptions,
  ) {
    super(`${outDir} is in use by another evflow run (${holder}); wait for it or remove the stale lock file`, options)
  }
}

/**
 * The output folder cannot be written safely: it overlaps an input (equals, contains or is inside an input
 * folder, or contains an input file), or something under its `_evflow/` is a symlink or of the wrong kind.
 * Nothing has been written when this is thrown.
 */
export class UnsafeOutputError extends EvflowError {
  readonly name = 'UnsafeOutputError' as const
  override readonly exitCode = 2
  constructor(
    /** The path at fault: the output folder, or the entry under it. */
    readonly path: string,
    message: string,
    options?: EvflowErrorOptions,
  ) {
    super(`${path}: ${message}`, options)
  }
}

/** Two inputs of one plan would get the same output name (only on a hash collision; refused before any work). */
export class OutputNameCollisionError extends EvflowError {
  readonly name = 'OutputNameCollisionError' as const
  override readonly exitCode = 2
  constructor(
    readonly outputName: string,
    /** The inputs (path and row range) that would share it. */
    readonly inputs: readonly string[],
    options?: EvflowErrorOptions,
  ) {
    super(`${inputs.join(' and ')} would share the output name '${outputName}': rename one of them`, options)
  }
}

/** Why an image could not be decoded. Stable codes: they are written to the output's `error_code`. */
export type ImageDecodeReason =
  | 'missing'
  | 'empty'
  | 'too-many-bytes'
  | 'too-many-pixels'
  | 'unsupported-format'
  | 'truncated'
  | 'corrupt'
  | 'timeout'

/** One image could not be decoded. Recorded on the row, never thrown past `decodeImages`. */
export class ImageDecodeError extends EvflowError {
  readonly name = 'ImageDecodeError' as const
  constructor(
    readonly reason: ImageDecodeReason,
    message: string,
    options?: EvflowErrorOptions,
  ) {
    super(`${reason}: ${message}`, options)
  }
}

/** A tensor does not have the shape an operator or graph expects. */
export class ShapeMismatchError extends EvflowError {
  readonly name = 'ShapeMismatchError' as const
  constructor(
    readonly tensor: string,
    readonly expected: readonly (number | string)[],
    readonly actual: readonly number[],
    options?: EvflowErrorOptions,
  ) {
    super(`${tensor}: expected shape [${expected.join(', ')}], got [${actual.join(', ')}]`, options)
  }
}

/** An ONNX Runtime session failed to run. */
export class InferenceError extends EvflowError {
  readonly name = 'InferenceError' as const
  constructor(
    readonly graph: string,
    message: string,
    options?: EvflowErrorOptions & {
      /**
       * The model cannot run at all (a session cannot be created: a missing or corrupt graph, an execution
       * provider that cannot start under `--strict-provider`): the run stops instead of failing every row.
       */
      fatal?: boolean
    },
  ) {
    super(`${graph}: ${message}`, options)
    this.fatal = options?.fatal ?? false
    this.exitCode = this.fatal ? 6 : 1
  }

  readonly fatal: boolean
  override readonly exitCode: number
}

/**
 * A model API was used out of order or given what it cannot take (the package read before `load()`, the
 * pool used without `acquire()`, a generation sample without room to generate): a programming error of the
 * caller, not a problem of a data row or of the model package.
 */
export class ModelUsageError extends EvflowError {
  readonly name = 'ModelUsageError' as const
}

/** The run was interrupted (Ctrl-C / SIGTERM); shards in progress were not committed. */
export class RunInterruptedError extends EvflowError {
  readonly name = 'RunInterruptedError' as const
  override readonly exitCode = 130
  constructor(readonly signal: string) {
    super(`interrupted by ${signal}; shards in progress were not committed (rerun to resume)`)
  }
}

/** The job queue (Redis) is unreachable, refused a command, or holds something evflow cannot use. */
export class QueueError extends EvflowError {
  readonly name = 'QueueError' as const
  override readonly exitCode = 5
  constructor(
    /** The queue's address with any password removed, e.g. `redis://host:6379 (queue evflow)`. */
    readonly queue: string,
    message: string,
    options?: EvflowErrorOptions,
  ) {
    super(`${queue}: ${message}`, options)
  }
}

/**
 * What each exit code of the CLI means: `short` in the commands' help, `detail` in docs/cli.md. 0 (done)
 * and 1 (a bug) belong to no error of evflow's; every other code is the `exitCode` of the errors below.
 */
export const EXIT_MEANINGS: Readonly<Record<number, { readonly short: string; readonly detail: string }>> = {
  0: { short: 'ok', detail: 'every shard committed or skipped (error rows are data, not failures)' },
  1: { short: 'anything else', detail: 'anything else: an output that cannot be written, or an unexpected error (a bug: please report it with `--verbose`)' },
  2: { short: 'bad usage, config, input, output folder or model package', detail: 'a mistake caught before any work: bad usage or config, a missing input or column, an output folder that overlaps the inputs or holds a symlink under `_evflow/`, two inputs that would share an output name (only on a hash collision), a bad model package' },
  3: { short: 'some shards unreadable', detail: 'one or more shards could not be read; the others were committed' },
  4: { short: 'output folder in use', detail: 'the output folder is in use by another run' },
  5: { short: 'queue (Redis) unreachable', detail: 'the job queue (Redis) cannot be reached (distributed commands)' },
  6: { short: 'the model cannot run', detail: 'the model cannot run: a session cannot be created (a graph ONNX Runtime cannot load, a provider that cannot start under `--strict-provider`, ONNX Runtime itself missing)' },
  130: { short: 'interrupted (rerun to resume)', detail: 'interrupted by Ctrl-C / SIGTERM; rerun to resume' },
}

/**
 * One instance of each error class that can end a command (an `InferenceError` of each kind): the exit
 * codes come from the classes themselves. A test checks that every class of this module is here.
 */
export function errorSamples(): readonly EvflowError[] {
  return [
    new PipelineConfigError('field', ''),
    new ModelManifestError('field', ''),
    new InputNotFoundError('input'),
    new ShardReadError('file', ''),
    new ShardWriteError('file', ''),
    new OutputLockedError('out', 'holder'),
    new UnsafeOutputError('out', ''),
    new OutputNameCollisionError('name', []),
    new ImageDecodeError('corrupt', ''),
    new ShapeMismatchError('tensor', [], []),
    new InferenceError('graph', '', { fatal: true }),
    new InferenceError('graph', ''),
    new ModelUsageError(''),
    new RunInterruptedError('SIGINT'),
    new QueueError('queue', ''),
  ]
}

export interface ExitCodeEntry {
  readonly code: number
  readonly short: string
  readonly detail: string
  /** The error classes that end a command with this code (`InferenceError (fatal)` for the fatal kind). */
  readonly errors: readonly string[]
}

/** Every exit code, in order, with its meaning and the error classes that give it. */
export function exitCodes(): readonly ExitCodeEntry[] {
  const byCode = new Map<number, string[]>()
  for (const error of errorSamples()) {
    const label = error instanceof InferenceError && error.fatal ? `${error.name} (fatal)` : error.name
    const list = byCode.get(error.exitCode) ?? []
    if (!list.includes(label)) list.push(label)
    byCode.set(error.exitCode, list)
  }
  const codes = [...new Set([0, 1, ...byCode.keys()])].sort((a, b) => a - b)
  return codes.map((code) => {
    const meaning = EXIT_MEANINGS[code]
    if (!meaning) throw new Error(`exit code ${code} has no meaning in EXIT_MEANINGS`)
    return { code, ...meaning, errors: byCode.get(code) ?? [] }
  })
}

/** The exit code an error class gives (from its instances; `InferenceError`: its fatal kind). */
export function exitCodeOf(name: string): number {
  const entry = exitCodes().find((e) => e.errors.includes(name) || e.errors.includes(`${name} (fatal)`))
  if (!entry) throw new Error(`no error class ${name}`)
  return entry.code
}

/**
 * The "Exit codes:" paragraph of a command's help: `codes` in order (0 first, 1 last), each with its
 * meaning and, from `context`, what it means for this command.
 */
export function exitCodeHelp(codes: readonly number[], context: Readonly<Record<number, string>> = {}): string {
  const table = new Map(exitCodes().map((e) => [e.code, e]))
  const order = [...codes].sort((a, b) => (a === 1 ? 1 : b === 1 ? -1 : a - b))
  const parts = order.map((code) => {
    const entry = table.get(code)
    if (!entry) throw new Error(`exit code ${code} has no meaning in EXIT_MEANINGS`)
    return `${code} ${entry.short}${context[code] ? ` (${context[code]})` : ''}`
  })
  return `Exit codes: ${parts.join(', ')}.`
}

/** A short one-line description of any thrown value (for error columns and CLI messages). */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message
  return String(error)
}
