/** Argument parsers and the config-file reader shared by every CLI command. */
import { readFileSync } from 'node:fs'
import { InvalidArgumentError, type Command } from 'commander'

import { PipelineConfigError, describeError } from '../../src/errors.js'

export function nonNegativeInt(text: string): number {
  const n = Number(text)
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer')
  return n
}

export function positiveInt(text: string): number {
  const n = nonNegativeInt(text)
  if (n < 1) throw new InvalidArgumentError('expected a positive integer')
  return n
}

/**
 * A pipeline flag's `parse` (which throws plain errors, e.g. `int` a `RangeError` for `2.5`) as a commander
 * argument parser: its error becomes commander's "argument ... is invalid" usage error (exit 2, one line).
 */
export function flagParser<T>(parse: (text: string) => T): (text: string) => T {
  return (text) => {
    try {
      return parse(text)
    } catch (error) {
      throw new InvalidArgumentError(describeError(error))
    }
  }
}

/** `START:END` (END exclusive). */
export function range(text: string): [number, number] {
  const m = /^(\d+):(\d+)$/.exec(text)
  if (!m) throw new InvalidArgumentError('expected START:END (END exclusive), e.g. 0:1000')
  return [Number(m[1]), Number(m[2])]
}

/** Comma-separated values; repeatable. */
export function list(text: string, previous: string[] = []): string[] {
  return [...previous, ...text.split(',').map((s) => s.trim()).filter(Boolean)]
}

/** A `--config` JSON object file, or `{}` without one. */
export function readConfigFile(path: string | undefined): Record<string, unknown> {
  if (path === undefined) return {}
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (cause) {
    throw new PipelineConfigError('--config', `cannot read ${path}: ${describeError(cause)}`)
  }
  try {
    const value = JSON.parse(text) as unknown
    if (!value || typeof value !== 'object' || Array.isArray(value)) throw new Error('not a JSON object')
    return value as Record<string, unknown>
  } catch (cause) {
    throw new PipelineConfigError('--config', `${path} is not a JSON object: ${describeError(cause)}`)
  }
}

/** The options that decide what a run reads, shared by pipeline commands and `evflow submit`. */
export function addReadOptions(command: Command): Command {
  return command
    .option('--config <file>', 'JSON file of options (flags override it)')
    .option('--image-column <name>', 'column holding image bytes (default: auto-detected)')
    .option('--id-column <name>', "column holding row ids, kept in the output (default: 'id' when present)")
    .option('--keep <columns>', 'comma-separated input columns to copy to the output', list)
    .option('--rows <start:end>', 'only these rows of each file (to split a big shard)', range)
    .option('--row-groups <start:end>', 'only these row groups of each file', range)
    .option('--limit <n>', 'stop after this many rows in total (at least 1)', positiveInt)
}
