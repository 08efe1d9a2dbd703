#!/usr/bin/env node
/**
 * `npm run data -- --split train|val|test --seed N --rows N --out DIR [--kind caption|vqa|video]`
 * Generates synthetic scene shards (and the training export); see docs/data.md.
 */
import { pathToFileURL } from 'node:url'

import { Command, InvalidArgumentError } from 'commander'

import { generate, type GenerateOptions } from './generate.js'
import { PipelineConfigError } from '../src/errors.js'
import { KINDS, SPLITS, SPLIT_SEEDS, type Kind, type Split } from './splits.js'

function int(value: string): number {
  if (!/^\d+$/.test(value.replace(/_/g, ''))) throw new InvalidArgumentError('not a non-negative integer')
  return Number(value.replace(/_/g, ''))
}

function oneOf<T extends string>(choices: readonly T[]) {
  return (value: string): T => {
    if (!(choices as readonly string[]).includes(value)) throw new InvalidArgumentError(`expected ${choices.join(' | ')}`)
    return value as T
  }
}

export function buildProgram(): Command {
  const seeds = SPLITS.map((s) => `${s} ${SPLIT_SEEDS[s].min}-${SPLIT_SEEDS[s].max}`).join(', ')
  return new Command('evflow-data')
    .description('Generate synthetic scenes (images, VQA, video clips) as Parquet shards plus a numpy training export.')
    .requiredOption('--split <split>', `${SPLITS.join(' | ')}`, oneOf(SPLITS))
    .requiredOption('--rows <n>', 'number of rows', int)
    .requiredOption('--out <dir>', 'output directory')
    .option('--seed <n>', `seed within the split's range (${seeds}); default: the range's first`, int)
    .option('--kind <kind>', `${KINDS.join(' | ')}`, oneOf(KINDS), 'caption' as Kind)
    .option('--name <stem>', 'file stem (default: split, or split-kind)')
    .option('--shard-rows <n>', 'rows per Parquet shard', int, 4096)
    .option('--row-group-size <n>', 'rows per row group', int, 256)
    .option('--size <n>', 'side of the pre-decoded pixels in the export', int, 64)
    .option('--no-export', 'write Parquet and vocab.txt only (no .npy, .jsonl, manifest)')
    .option('--concurrency <n>', 'units rendered at once (does not change the output)', int, 8)
    .option('--quiet', 'no progress on stderr')
    .showHelpAfterError()
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram().exitOverride()
  try {
    program.parse(argv)
  } catch (e) {
    const code = (e as { exitCode?: number }).exitCode
    return code === 0 ? 0 : 2
  }
  const opts = program.opts<{
    split: Split
    rows: number
    out: string
    seed?: number
    kind: Kind
    name?: string
    shardRows: number
    rowGroupSize: number
    size: number
    export: boolean
    concurrency: number
    quiet?: boolean
  }>()
  const showProgress = !opts.quiet && process.stderr.isTTY
  const options: GenerateOptions = {
    split: opts.split,
    kind: opts.kind,
    seed: opts.seed,
    rows: opts.rows,
    out: opts.out,
    name: opts.name,
    shardRows: opts.shardRows,
    rowGroupSize: opts.rowGroupSize,
    size: opts.size,
    export: opts.export,
    concurrency: opts.concurrency,
    onProgress: showProgress
      ? (done, total) => process.stderr.write(`\r${done}/${total} rows`.padEnd(24) + (done === total ? '\n' : ''))
      : undefined,
  }
  try {
    const result = await generate(options)
    const rate = result.rows / result.seconds
    console.log(
      `wrote ${result.rows} ${opts.kind} rows (${opts.split}, seed ${options.seed ?? SPLIT_SEEDS[opts.split].min}) ` +
        `in ${result.seconds.toFixed(1)} s (${rate.toFixed(0)} rows/s) to ${opts.out}: ${result.files.join(', ')}`,
    )
    return 0
  } catch (e) {
    if (e instanceof PipelineConfigError) {
      console.error(`error: ${e.message}`)
      return e.exitCode
    }
    throw e
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv).then(
    (code) => {
      process.exitCode = code
    },
    (e: unknown) => {
      console.error(e instanceof Error ? (e.stack ?? e.message) : String(e))
      process.exitCode = 1
    },
  )
}
