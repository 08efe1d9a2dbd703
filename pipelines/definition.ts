/**
 * What a pipeline is to the runner and the CLI: a name, defaults, a config schema, the stages between
 * `readShards` and `writeShards`, and the result columns it writes.
 */
import { createHash } from 'node:crypto'
import type { OperatorFunction } from 'rxjs'
import type { z } from 'zod'

import type { OutputColumn } from '../src/parquet/output-schema.js'
import type { ShardColumns } from '../src/parquet/shards.js'
import type { ErrorRecord, ImageRow, KeyedRecord, ShardNotice } from '../src/records.js'
import type { RunMetrics } from '../src/engine/metrics.js'

export type SourceRecord = ImageRow | ErrorRecord | ShardNotice

export interface StageContext {
  readonly metrics: RunMetrics
}

/** A CLI flag of a pipeline option. */
export interface PipelineFlag {
  /** commander flags, e.g. `--size <px>`. */
  readonly flags: string
  readonly description: string
  /** The config key the flag sets. */
  readonly key: string
  /** How the flag's text becomes a value. Default: the text. */
  readonly parse?: (text: string) => unknown
  /** The flag may be given several times; the values form a list. */
  readonly repeatable?: boolean
}

export interface PipelineDefinition<C extends object = object, R extends KeyedRecord = KeyedRecord> {
  readonly name: string
  /** One line for `--help`. */
  readonly summary: string
  readonly defaults: Readonly<C>
  /** Validates a partial config merged over the defaults. */
  readonly schema: z.ZodType<C>
  /** Pipeline-specific CLI flags. */
  readonly flags: readonly PipelineFlag[]
  /** Config keys that change speed, not output (left out of the config hash). */
  readonly performanceKeys: readonly string[]
  /** What `readShards` must read; `keep` adds input columns the stages need (merged with the user's `--keep`). */
  readonly read: (config: C) => Pick<ShardColumns, 'requireImage' | 'keep'>
  /** What else decides the output besides the config (e.g. the model's fingerprint), for the config hash. */
  readonly identity?: (config: C) => Readonly<Record<string, unknown>>
  readonly stages: (config: C, context: StageContext) => OperatorFunction<SourceRecord, R | ErrorRecord | ShardNotice>
  readonly columns: (config: C) => readonly OutputColumn<R>[]
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

/** Hash of everything that decides the output's content. */
export function configHash(parts: Record<string, unknown>, performanceKeys: readonly string[] = []): string {
  const strip = (v: unknown): unknown => {
    if (!v || typeof v !== 'object' || Array.isArray(v)) return v
    return Object.fromEntries(Object.entries(v as Record<string, unknown>).filter(([k]) => !performanceKeys.includes(k)))
  }
  const reduced = Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, strip(v)]))
  return createHash('sha256').update(stableJson(reduced)).digest('hex').slice(0, 16)
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
