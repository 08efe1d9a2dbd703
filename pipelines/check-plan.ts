/**
 * The planning checks of a run: the mistakes a user makes most are caught once the shards are planned
 * (footers read) and before anything is written, so that they end the run with one line and exit 2
 * instead of a folder of error rows or all-null columns:
 *
 * - the output path is a file (or lies under one);
 * - an input has no usable image column (`--image-column nope`, none at all, or several to choose from);
 * - a `--keep` column or the `--id-column` is missing from an input;
 * - the pipeline's own needs (`PipelineDefinition.check`): `vqa`'s question column in every input, the
 *   model package loaded (a broken package stops here, exit 2), fixed questions in the model's vocabulary.
 *
 * Each error names the shard and the columns it has. Unreadable shards are not checked: they fail on their
 * own (exit 3) and the others run.
 */
import { statSync } from 'node:fs'
import { dirname, resolve } from 'node:path'

import { PipelineConfigError } from '../src/errors.js'
import type { ColumnSummary } from '../src/parquet/schema.js'
import type { PlannedShard, ShardColumns } from '../src/parquet/shards.js'
import type { PipelineDefinition, ShardSchema } from './definition.js'

export interface CheckPlanOptions extends Pick<ShardColumns, 'imageColumn' | 'idColumn' | 'keep'> {
  /** The output folder (it may not exist yet). */
  readonly outDir: string
}

const names = (columns: readonly ColumnSummary[]) => columns.map((c) => c.name).join(', ') || 'none'

/** Throws `PipelineConfigError` unless `outDir` is a folder, or a path where one can be made. */
export function checkOutputPath(outDir: string): void {
  let path = resolve(outDir)
  for (;;) {
    let isDirectory: boolean | undefined
    try {
      isDirectory = statSync(path).isDirectory()
    } catch (cause) {
      const code = (cause as NodeJS.ErrnoException).code
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new PipelineConfigError('out', `${outDir}: cannot be used as the output folder: ${(cause as Error).message}`, { cause })
    }
    if (isDirectory === false) {
      const where = path === resolve(outDir) ? `${outDir} is a file` : `${path}, on the way to ${outDir}, is a file`
      throw new PipelineConfigError('out', `${where}, not a folder: give a folder for the output shards (-o DIR)`)
    }
    if (isDirectory) return
    const parent = dirname(path)
    if (parent === path) return
    path = parent
  }
}

/**
 * Checks a run's plan before any work (see the module's doc). `options.keep` and `options.idColumn` are
 * the user's (the pipeline's own columns are its `check`'s business).
 */
export async function checkPlan<C extends object>(
  definition: Pick<PipelineDefinition<C>, 'name' | 'check'>,
  config: C,
  planned: readonly PlannedShard[],
  options: CheckPlanOptions,
): Promise<void> {
  checkOutputPath(options.outDir)
  const schemas: ShardSchema[] = []
  for (const shard of planned) {
    if (!shard.plan.ok || shard.columns === undefined) continue
    const { path } = shard.plan.info
    const { columns } = shard
    if (shard.imageProblem !== undefined) {
      throw new PipelineConfigError('imageColumn', `${path}: ${shard.imageProblem}`)
    }
    const has = (name: string) => columns.some((c) => c.name === name)
    if (options.idColumn !== undefined && !has(options.idColumn)) {
      throw new PipelineConfigError('idColumn', `${path} has no column '${options.idColumn}' (its columns: ${names(columns)})`)
    }
    const missing = (options.keep ?? []).filter((name) => !has(name))
    if (missing.length > 0) {
      throw new PipelineConfigError('keep', `${path} has no column ${missing.map((m) => `'${m}'`).join(', ')} to keep (its columns: ${names(columns)})`)
    }
    schemas.push({ path, columns })
  }
  await definition.check?.(config, schemas)
}
