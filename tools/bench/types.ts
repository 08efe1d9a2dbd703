/**
 * The contract between the benchmark runner (`run.ts`) and its cases (`cases/*.ts`). A case is named by
 * shape (`decode 64px`), measures something, and returns rows for the table plus the raw samples.
 */
import type { BenchInputs } from './inputs.js'

/** One line of a case's table: column name → value, in display order. */
export type Row = Record<string, string | number>

/** A target the case checks, e.g. `full / sharp-alone >= 0.8`. */
export interface Check {
  readonly name: string
  /** Human-readable target, e.g. `>= 0.80`. */
  readonly target: string
  /** The measured value, formatted. */
  readonly value: string
  readonly met: boolean
}

export interface CaseResult {
  readonly rows: readonly Row[]
  readonly checks?: readonly Check[]
  /** Short lines shown under the table (what was measured, caveats). */
  readonly notes?: readonly string[]
  /** Settings this case ran with (stored in bench-results.json and shown in the docs). */
  readonly settings?: Readonly<Record<string, unknown>>
  /** Every sample, for bench-results.json. */
  readonly raw?: unknown
}

export interface BenchSettings {
  /** Repetitions per variant (medians are reported). */
  readonly reps: number
  /** Images in flight for decode variants (decodeImages `concurrency`, and N promises for sharp alone). */
  readonly concurrency: number
}

export interface BenchContext {
  readonly settings: BenchSettings
  /** Generated inputs (lazily, in a temp folder). */
  readonly inputs: BenchInputs
  /** Progress line on stderr (the table goes to stdout). */
  log(message: string): void
}

export interface BenchCase {
  /** Named by shape: `decode 64px`, `scan rss 2k vs 20k`. The CLI filter matches substrings of it. */
  readonly name: string
  /** Section of docs/benchmarks.md the case is written to (`<!-- bench:SECTION:start -->`). */
  readonly section: string
  /** Run by a plain `npm run bench`; investigations set false and run when a filter names them. */
  readonly byDefault: boolean
  /** One line: what is measured. */
  readonly description: string
  run(context: BenchContext): Promise<CaseResult>
}

export function isBenchCase(value: unknown): value is BenchCase {
  const v = value as Partial<BenchCase> | null
  return typeof v === 'object' && v !== null && typeof v.name === 'string' && typeof v.section === 'string' && typeof v.run === 'function'
}
