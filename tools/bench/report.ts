/**
 * Presenting results: a plain-text table per case on stdout, `bench-results.json`, and the case blocks of
 * `docs/benchmarks.md`. In the docs, the runner rewrites only the part between
 * `<!-- bench:SECTION:start -->` and `<!-- bench:SECTION:end -->`, and inside it only the blocks of the cases
 * that ran (`<!-- bench:case:SLUG -->` … `<!-- /bench:case:SLUG -->`); other blocks and everything outside
 * the markers are kept as they are.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os'
import sharp from 'sharp'

import type { CaseResult, Row } from './types.js'

export interface Machine {
  readonly cpu: string
  readonly cores: number
  readonly memoryGiB: number
  readonly node: string
  readonly os: string
  readonly sharp: string
  readonly libvips: string
  readonly uvThreadpoolSize: string
}

export function machine(): Machine {
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: availableParallelism(),
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    os: `${process.platform} ${release()}`,
    sharp: sharp.versions.sharp ?? 'unknown',
    libvips: sharp.versions.vips,
    uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE ?? '4 (default)',
  }
}

/** What the runner records per case. */
export interface CaseReport {
  readonly name: string
  readonly section: string
  readonly description: string
  readonly startedAt: string
  readonly durationS: number
  /** 1-minute load average before and after the case (other processes share the machine). */
  readonly load: readonly [number, number]
  readonly result?: CaseResult
  readonly error?: string
}

export const load1 = (): number => Math.round(loadavg()[0] * 10) / 10

export function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '')
}

function columns(rows: readonly Row[]): string[] {
  const seen = new Set<string>()
  for (const row of rows) for (const key of Object.keys(row)) seen.add(key)
  return [...seen]
}

/** A plain-text table of a case, with its checks. */
export function textReport(report: CaseReport): string {
  const lines = [`== ${report.name} (${report.durationS.toFixed(0)} s, load ${report.load[0]} → ${report.load[1]})`]
  if (report.error !== undefined) return [...lines, `   FAILED: ${report.error}`].join('\n')
  const rows = report.result?.rows ?? []
  const cols = columns(rows)
  const cells = [cols, ...rows.map((r) => cols.map((c) => String(r[c] ?? '')))]
  const widths = cols.map((_, i) => Math.max(...cells.map((line) => line[i].length)))
  for (const [n, line] of cells.entries()) {
    lines.push(`   ${line.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ')}`)
    if (n === 0) lines.push(`   ${widths.map((w) => '-'.repeat(w)).join('  ')}`)
  }
  for (const check of report.result?.checks ?? []) {
    lines.push(`   target ${check.name} ${check.target}: ${check.value} → ${check.met ? 'MET' : 'NOT MET'}`)
  }
  return lines.join('\n')
}

const escape = (cell: string) => cell.replace(/\|/g, '\\|')

/** The Markdown block of one case (between its own markers). */
export function markdownBlock(report: CaseReport, host: Machine): string {
  const id = slug(report.name)
  const out = [`<!-- bench:case:${id} -->`, `### ${report.name}`, '', `${report.description}.`, '']
  if (report.error !== undefined) {
    out.push(`**Failed:** ${escape(report.error)}`, '')
  } else if (report.result) {
    const rows = report.result.rows
    const cols = columns(rows)
    out.push(`| ${cols.map(escape).join(' | ')} |`, `|${cols.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`)
    for (const row of rows) out.push(`| ${cols.map((c) => escape(String(row[c] ?? ''))).join(' | ')} |`)
    out.push('')
    for (const check of report.result.checks ?? []) {
      out.push(`**Target** ${check.name} ${check.target}: **${check.value}** — ${check.met ? '✅ met' : '❌ not met'}`, '')
    }
    for (const note of report.result.notes ?? []) out.push(`- ${note}`)
    if ((report.result.notes ?? []).length > 0) out.push('')
  }
  const settings = report.result?.settings ? ` · settings \`${JSON.stringify(report.result.settings)}\`` : ''
  out.push(
    `<sub>Measured ${report.startedAt.slice(0, 16).replace('T', ' ')} UTC on ${host.cpu} × ${host.cores} cores, Node ${host.node}, ` +
      `sharp ${host.sharp} / libvips ${host.libvips}, UV_THREADPOOL_SIZE ${host.uvThreadpoolSize}; ` +
      `1-min load average ${report.load[0]} → ${report.load[1]} (shared machine)${settings}.</sub>`,
  )
  out.push(`<!-- /bench:case:${id} -->`)
  return out.join('\n')
}

const SECTION_TITLES: Record<string, string> = {
  foundation: 'Foundation: read, decode, scan, memory',
  model: 'Model: captions against the limit and the peers, scaling, the papers\' claim, memory',
  base: 'Base size: evlm-base on real photos (CPU)',
}

const DOC_INTRO = `# Benchmarks

Measured with \`npm run bench\` (the default cases, about 3 minutes), \`npm run bench -- FILTER\` (the cases
whose name contains FILTER, e.g. \`decode\`; investigations such as \`overhead\` or \`settings\` run only when
named, or with \`--all\`) and \`npm run bench -- --list\`. Options: \`--reps N\` (default 5),
\`--concurrency N\` (images in flight in the decode cases; default: cores), \`--no-docs\`, \`--keep-inputs\`.
Inputs are generated in a temp folder and removed afterwards. Each run prints a table, writes every figure
to \`bench-results.json\` (git-ignored), and rewrites in this file only the blocks of the cases it ran,
between the \`<!-- bench:SECTION:start -->\` / \`<!-- bench:SECTION:end -->\` markers. Everything else here is
kept. The machines are shared, so compare ratios measured within one run, not absolute rates across runs.
`

/**
 * Rewrites section `section` of the docs file: blocks of `ran` replace their old versions, other blocks are
 * kept, in `order`; `notes` (Markdown) closes the section. Creates the file or the section when absent.
 */
export function updateDocs(path: string, section: string, ran: ReadonlyMap<string, string>, order: readonly string[], notes: string): void {
  const start = `<!-- bench:${section}:start -->`
  const end = `<!-- bench:${section}:end -->`
  let text = existsSync(path) ? readFileSync(path, 'utf8') : DOC_INTRO
  let from = text.indexOf(start)
  let to = text.indexOf(end)
  if (from < 0 || to < from) {
    text = `${text.trimEnd()}\n\n${start}\n${end}\n`
    from = text.indexOf(start)
    to = text.indexOf(end)
  }
  const inside = text.slice(from + start.length, to)
  const blocks = new Map<string, string>()
  for (const m of inside.matchAll(/<!-- bench:case:([a-z0-9-]+) -->[\s\S]*?<!-- \/bench:case:\1 -->/g)) blocks.set(m[1], m[0])
  for (const [id, block] of ran) blocks.set(id, block)
  const ids = [...order.filter((id) => blocks.has(id)), ...[...blocks.keys()].filter((id) => !order.includes(id))]
  const body = [`## ${SECTION_TITLES[section] ?? section}`, ...ids.map((id) => blocks.get(id)!), notes.trim()].filter(Boolean).join('\n\n')
  writeFileSync(path, `${text.slice(0, from)}${start}\n${body}\n${text.slice(to)}`)
}

