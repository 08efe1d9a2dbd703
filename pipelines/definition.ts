/**
 * What a pipeline is to the runner and the CLI: a name, a config in two parts (the settings that decide the
 * output, and the engine settings that only change speed), the stages between `readShards` and
 * `writeShards`, and the result columns it writes.
 */
import { createHash } from 'node:crypto'
import type { OperatorFunction } from 'rxjs'
import { z } from 'zod'

import type { ShardRecord } from '../operators/read-shards.js'
import { PipelineConfigError } from '../src/errors.js'
import type { OutputColumn } from '../src/parquet/output-schema.js'
import type { ColumnSummary } from '../src/parquet/schema.js'
import type { ShardColumns } from '../src/parquet/shards.js'
import type { ErrorRecord, KeyedRecord, ShardNotice } from '../src/records.js'
import type { InFlight } from '../src/engine/in-flight.js'
import type { RunMetrics } from '../src/engine/metrics.js'

export interface StageContext {
  readonly metrics: RunMetrics
  /** The run's in-flight bound, shared by the reader, the model stages (batches reserve their tensors' bytes) and the sink. */
  readonly inFlight?: InFlight
}

/** A planned input shard's schema, as the planning checks see it. */
export interface ShardSchema {
  /** The input file. */
  readonly path: string
  /** Its top-level columns. */
  readonly columns: readonly ColumnSummary[]
}

/** A CLI flag of a pipeline option. */
export interface PipelineFlag {
  /** commander flags, e.g. `--size <px>`. */
  readonly flags: string
  /** What the flag does; the CLI adds the default from the pipeline's `defaults` (see `flagHelp`). */
  readonly description: string
  /** The config key the flag sets. */
  readonly key: string
  /** How the flag's text becomes a value. Default: the text. */
  readonly parse?: (text: string) => unknown
  /** The flag may be given several times; the values form a list. */
  readonly repeatable?: boolean
  /** How the default is shown. Default: numbers and strings as they are. */
  readonly formatDefault?: (value: unknown) => string
  /** The default in words, for a default that depends on the machine (e.g. `the number of cores`). */
  readonly defaultText?: string
}

export interface PipelineDefinition<C extends object = object, R extends KeyedRecord = KeyedRecord> {
  readonly name: string
  /** One line for `--help`. */
  readonly summary: string
  readonly defaults: Readonly<C>
  /** Validates a partial config merged over the defaults. */
  readonly schema: z.ZodType<C>
  /**
   * The config keys that decide the output, in the order they are stored: written into every output file
   * and hashed into the config hash (which decides what a rerun skips). Every other key is an engine
   * setting (batch size, threads, provider, ...) and changes only speed. Made by `pipelineConfig`.
   */
  readonly outputKeys: readonly string[]
  /** Pipeline-specific CLI flags. */
  readonly flags: readonly PipelineFlag[]
  /** What `readShards` must read; `keep` adds input columns the stages need (merged with the user's `--keep`). */
  readonly read: (config: C) => Pick<ShardColumns, 'requireImage' | 'keep'>
  /** What else decides the output besides the config (e.g. the model's fingerprint), for the config hash. */
  readonly identity?: (config: C) => Readonly<Record<string, unknown>>
  readonly stages: (config: C, context: StageContext) => OperatorFunction<ShardRecord, R | ErrorRecord | ShardNotice>
  readonly columns: (config: C) => readonly OutputColumn<R>[]
  /**
   * Checks made while planning, before any output is written: what the config needs of every input's
   * schema (e.g. `vqa`'s question column) and of the model (the package loaded, fixed questions in its
   * vocabulary). Throws `PipelineConfigError` / `ModelManifestError` (exit 2). See `checkPlan`.
   */
  readonly check?: (config: C, shards: readonly ShardSchema[]) => Promise<void>
  /**
   * What a user must know about this run's results, in plain sentences (e.g. the model was trained only on
   * synthetic data): the CLI prints each once at start, and the run summary keeps them.
   */
  readonly notices?: (config: C) => readonly string[]
}

/**
 * A pipeline's config schema from its two parts: `output`, the settings that decide the output (the
 * pipeline's `SamplingParams`: decode limits, generation length and search, questions, ...), and `engine`,
 * those that only change speed. Returns the strict schema of both and the output keys, in `output`'s order.
 */
export function pipelineConfig<O extends z.ZodRawShape, E extends z.ZodRawShape>(output: O, engine: E) {
  for (const key of Object.keys(engine)) if (key in output) throw new PipelineConfigError(key, 'is both an output and an engine setting')
  return { schema: z.strictObject({ ...output, ...engine }), outputKeys: Object.freeze(Object.keys(output)) }
}

/** The output-deciding part of `config` (`definition.outputKeys`), keys in that order. */
export function outputSettings(definition: Pick<PipelineDefinition, 'outputKeys'>, config: object): Record<string, unknown> {
  const values = config as Readonly<Record<string, unknown>>
  return Object.fromEntries(definition.outputKeys.filter((key) => key in values).map((key) => [key, values[key]]))
}

/** A flag's integer (`parse` of integer flags): `2.5`, `2x` or an empty text throw a `RangeError` saying so. */
export const int = (text: string): number => {
  const value = /^\s*[+-]?\d+\s*$/.test(text) ? Number(text) : Number.NaN
  if (!Number.isSafeInteger(value)) throw new RangeError(`expected an integer, got ${JSON.stringify(text)}`)
  return value
}

const BYTE_UNITS: Readonly<Record<string, number>> = { '': 1, b: 1, k: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gib: 2 ** 30 }

/**
 * A flag's byte count: an integer, optionally with a binary unit (`64MiB`, `64M`, `512KiB`, `1GiB`; case
 * ignored). Throws a `RangeError` for anything else (a fraction of a byte, an unknown unit).
 */
export const bytes = (text: string): number => {
  const match = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(text)
  const unit = match ? BYTE_UNITS[match[2].toLowerCase()] : undefined
  const value = match && unit !== undefined ? Number(match[1]) * unit : Number.NaN
  if (!Number.isSafeInteger(value)) throw new RangeError(`expected a byte count such as 67108864 or 64MiB, got ${JSON.stringify(text)}`)
  return value
}

/** A byte count as MiB when it is a whole number of them, with the bytes (a `formatDefault`): `64 MiB = 67108864 bytes`. */
export const mebibytes = (value: unknown): string =>
  typeof value === 'number' && value > 0 && value % 2 ** 20 === 0 ? `${value / 2 ** 20} MiB = ${value} bytes` : `${String(value)} bytes`

/** A flag's help line: its description and the pipeline's default for it (none for switches and empty lists). */
export function flagHelp(flag: PipelineFlag, defaults: object): string {
  if (flag.defaultText !== undefined) return `${flag.description} (default: ${flag.defaultText})`
  const value = (defaults as Readonly<Record<string, unknown>>)[flag.key]
  if (value === undefined || typeof value === 'boolean' || (Array.isArray(value) && value.length === 0)) return flag.description
  return `${flag.description} (default ${flag.formatDefault ? flag.formatDefault(value) : String(value)})`
}

/** Stable JSON: object keys sorted. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
    }
    return v
  })
}

/** Hash of everything that decides the output's content: stable JSON of `parts`, sha256, 16 hex digits. */
export function configHash(parts: Record<string, unknown>): string {
  return createHash('sha256').update(stableJson(parts)).digest('hex').slice(0, 16)
}

/** The pipeline's read requirements merged with the user's column options (`keep` lists united). */
export function mergeReadColumns(
  required: Pick<ShardColumns, 'requireImage' | 'keep'>,
  user: Pick<ShardColumns, 'imageColumn' | 'idColumn' | 'keep'>,
): ShardColumns {
  const keep = [...new Set([...(user.keep ?? []), ...(required.keep ?? [])])]
  return {
    ...(required.requireImage === undefined ? {} : { requireImage: required.requireImage }),
    ...(user.imageColumn === undefined ? {} : { imageColumn: user.imageColumn }),
    ...(user.idColumn === undefined ? {} : { idColumn: user.idColumn }),
    ...(keep.length > 0 ? { keep } : {}),
  }
}
