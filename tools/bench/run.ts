/**
 * `npm run bench [-- FILTER... --reps N --concurrency N --all --list --no-docs --keep-inputs]`
 *
 * Finds the cases exported by `cases/*.ts`, runs the selected ones one after the other, prints a table per
 * case, writes `bench-results.json` and updates their blocks in `docs/benchmarks.md`.
 * Selection: without a filter, the default cases; a FILTER runs the default cases whose name contains it
 * (case-insensitive), or, when no default case matches, any case that does (investigations); `--all` starts
 * from every case. Add a benchmark by adding a module to `cases/` that exports a `BenchCase` (or an array of
 * them, to fix their order).
 */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

import { BenchInputs } from './inputs.js'
import { load1, machine, markdownBlock, slug, textReport, updateDocs, type CaseReport } from './report.js'
import { isBenchCase, type BenchCase, type BenchContext } from './types.js'

const ROOT = fileURLToPath(new URL('../../..', import.meta.url))
const CASES_DIR = new URL('./cases/', import.meta.url)

async function discover(): Promise<BenchCase[]> {
  const found = new Map<string, BenchCase>()
  // Only modules with a source file: a case deleted from cases/ may still have a stale build in dist/.
  const modules = readdirSync(CASES_DIR).filter((f) => f.endsWith('.js') && existsSync(`${ROOT}tools/bench/cases/${f.replace(/\.js$/, '.ts')}`))
  for (const file of modules.sort()) {
    const module = (await import(new URL(file, CASES_DIR).href)) as Record<string, unknown>
    for (const value of Object.values(module).flatMap((v) => (Array.isArray(v) ? v : [v]))) {
      if (isBenchCase(value) && !found.has(value.name)) found.set(value.name, value)
    }
  }
  // Default cases first, then investigations; module order within each.
  return [...found.values()].sort((a, b) => Number(b.byDefault) - Number(a.byDefault))
}

function select(all: readonly BenchCase[], filters: readonly string[], everything: boolean): BenchCase[] {
  const pool = everything ? all : all.filter((c) => c.byDefault)
  if (filters.length === 0) return [...pool]
  const matches = (c: BenchCase) => filters.some((f) => c.name.toLowerCase().includes(f.toLowerCase()))
  const chosen = pool.filter(matches)
  return chosen.length > 0 ? chosen : all.filter(matches)
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      reps: { type: 'string', default: '5' },
      concurrency: { type: 'string', default: String(availableParallelism()) },
      all: { type: 'boolean', default: false },
      list: { type: 'boolean', default: false },
      'no-docs': { type: 'boolean', default: false },
      'keep-inputs': { type: 'boolean', default: false },
    },
  })
  const all = await discover()
  if (values.list) {
    for (const c of all) console.log(`${c.byDefault ? '*' : ' '} ${c.name.padEnd(28)} ${c.description}`)
    console.log('(* = run by default)')
    return 0
  }
  const settings = { reps: Number(values.reps), concurrency: Number(values.concurrency) }
  if (!Number.isInteger(settings.reps) || settings.reps < 1) throw new Error(`--reps must be a positive integer`)
  if (!Number.isInteger(settings.concurrency) || settings.concurrency < 1) throw new Error(`--concurrency must be a positive integer`)
  const chosen = select(all, positionals, values.all)
  if (chosen.length === 0) {
    console.error(`no case matches ${positionals.join(', ')}; see --list`)
    return 2
  }

  const log = (message: string) => process.stderr.write(`[bench] ${message}\n`)
  const inputs = new BenchInputs(log)
  const context: BenchContext = { settings, inputs, log }
  const host = machine()
  const started = Date.now()
  log(`${chosen.map((c) => c.name).join(', ')} on ${host.cpu} × ${host.cores}, Node ${host.node}, load ${load1()}`)
  const reports: CaseReport[] = []
  try {
    for (const c of chosen) {
      const startedAt = new Date()
      const loadBefore = load1()
      let report: CaseReport
      try {
        const result = await c.run(context)
        report = { ...meta(c, startedAt, loadBefore), result }
      } catch (error) {
        report = { ...meta(c, startedAt, loadBefore), error: error instanceof Error ? error.message : String(error) }
      }
      reports.push(report)
      console.log(`${textReport(report)}\n`)
    }
  } finally {
    if (values['keep-inputs']) log(`inputs kept in ${inputs.dir}`)
    else inputs.cleanup()
  }
  const totalS = (Date.now() - started) / 1000
  console.log(`total ${totalS.toFixed(0)} s`)

  const resultsPath = `${ROOT}bench-results.json`
  writeFileSync(resultsPath, `${JSON.stringify({ startedAt: new Date(started).toISOString(), totalS, machine: host, settings, cases: reports }, null, 2)}\n`)
  log(`wrote ${resultsPath}`)
  if (!values['no-docs']) {
    const docs = `${ROOT}docs/benchmarks.md`
    for (const section of new Set(reports.map((r) => r.section))) {
      const ran = new Map(reports.filter((r) => r.section === section).map((r) => [slug(r.name), markdownBlock(r, host)]))
      const order = all.filter((c) => c.section === section).map((c) => slug(c.name))
      const notesFile = `${ROOT}tools/bench/notes/${section}.md`
      updateDocs(docs, section, ran, order, existsSync(notesFile) ? readFileSync(notesFile, 'utf8') : '')
    }
    log(`updated ${docs}`)
  }
  return reports.some((r) => r.error !== undefined) ? 1 : 0
}

function meta(c: BenchCase, startedAt: Date, loadBefore: number): Omit<CaseReport, 'result' | 'error'> {
  return {
    name: c.name,
    section: c.section,
    description: c.description,
    startedAt: startedAt.toISOString(),
    durationS: (Date.now() - startedAt.getTime()) / 1000,
    load: [loadBefore, load1()],
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  },
)
