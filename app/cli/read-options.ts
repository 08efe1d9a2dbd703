/** The read budget flags (`--read-timeout`, `--read-memory`), shared by pipeline commands and `evflow worker`. */
import { InvalidArgumentError, Option, type Command } from 'commander'

import type { DebugSpin, ReadBudget } from '../../src/parquet/reader.js'

export interface ReadBudgetFlags {
  readTimeout?: number
  readMemory?: number
  debugSpin?: DebugSpin
}

/** Seconds (a positive number, fractions allowed) to milliseconds. */
export function seconds(text: string): number {
  const n = Number(text)
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a positive number of seconds')
  return Math.round(n * 1000)
}

/** Testing only: `inspect|read:SUBSTRING:MS`. */
function debugSpin(text: string): DebugSpin {
  const m = /^(inspect|read):(.*):(\d+)$/.exec(text)
  if (!m) throw new InvalidArgumentError('expected inspect|read:SUBSTRING:MS')
  return { stage: m[1] as DebugSpin['stage'], match: m[2], ms: Number(m[3]) }
}

export function addReadBudgetOptions(command: Command): Command {
  return command
    .option('--read-timeout <s>', "most seconds to parse one footer or row group; past it the parser is stopped and the row group's rows become errors (default 30)", seconds)
    .option('--read-memory <MiB>', "memory budget of one parse: a parser process's heap (its resident memory: this + 128) and the most a row group's pages may claim (default 512)", (text: string) => {
      const n = Number(text)
      if (!Number.isInteger(n) || n < 16) throw new InvalidArgumentError('expected an integer number of MiB, at least 16')
      return n
    })
    .addOption(new Option('--debug-spin <stage:match:ms>', 'testing only: parses of matching files spin first').argParser(debugSpin).hideHelp())
}

/** The budgets the flags give (absent flags: the defaults). */
export function readBudgetOf(flags: ReadBudgetFlags): ReadBudget & { debugSpin?: DebugSpin } {
  return {
    ...(flags.readTimeout === undefined ? {} : { readTimeoutMs: flags.readTimeout }),
    ...(flags.readMemory === undefined ? {} : { readMemoryMb: flags.readMemory }),
    ...(flags.debugSpin === undefined ? {} : { debugSpin: flags.debugSpin }),
  }
}
