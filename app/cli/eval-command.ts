/** `evflow eval <out> --reference <inputs...>`: scores a run's output against its reference shards. */
import type { Command } from 'commander'

import { exitCodeHelp } from '../../src/errors.js'
import { ATTRIBUTES, QUESTION_TYPES, evaluateOutputs, type Attribute, type EvalReport, type FinishReasonAccuracy } from '../eval/index.js'
import { examplesHelp } from './examples.js'

const pct = (x: number) => `${(100 * x).toFixed(2)}%`
const share = (n: number, of: number) => (of === 0 ? '-' : `${((100 * n) / of).toFixed(1)}%`)

const ATTRIBUTE_LABELS: Record<Attribute, string> = {
  color: 'colour',
  shape: 'shape',
  size: 'size',
  count: 'count',
  position: 'position',
  motion: 'motion',
}

/** Aligned columns: the first and any listed in `left` padded on the right, the others on the left. */
function table(rows: readonly (readonly string[])[], indent = '    ', left: readonly number[] = []): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)))
  const pad = (cell: string, c: number) => (c === 0 || left.includes(c) ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))
  return rows.map((r) => (indent + r.map(pad).join('  ')).trimEnd())
}

/** The "by finish reason" lines: ok rows that the model ended (`stop`) or the token limit cut (`length`). */
function finishLines(by: FinishReasonAccuracy | null, what: string): string[] {
  if (by === null) return []
  const reasons = (['stop', 'length'] as const).filter((r) => by[r] !== undefined)
  if (reasons.length === 0) return []
  return [
    `  ${what} by finish reason (ok rows; stop: the model ended the text, length: the token limit cut it):`,
    ...table([['finish_reason', 'rows', 'correct', 'accuracy'], ...reasons.map((r) => [r, String(by[r]!.rows), String(by[r]!.correct), pct(by[r]!.accuracy)])]),
  ]
}

/** The report as the table `evflow eval` prints. */
export function formatReport(report: EvalReport): string {
  const { rows } = report
  const lines: string[] = []
  const join = report.join === 'id' ? `joined by '${report.idColumn}'` : 'joined by row order within same-named shards (no id column)'
  lines.push(`eval: ${report.outDir}: ${report.outputFiles.length} output shard(s) vs ${report.referenceFiles.length} reference shard(s), ${join}`)
  const codes = Object.entries(rows.errorCodes)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([code, n]) => `${code} ${n}`)
  lines.push(`rows: ${rows.evaluated} evaluated: ${rows.ok} ok, ${rows.error} error${codes.length > 0 ? ` (${codes.join(', ')})` : ''}; error rows count as wrong`)
  lines.push(
    `      ${rows.output} in the output, ${rows.reference} in the reference; ${rows.missingFromOutput} reference row(s) missing from the output, ${rows.notInReference} output row(s) not in the reference` +
      (rows.duplicateReferenceIds > 0 ? `, ${rows.duplicateReferenceIds} duplicate reference id(s) ignored` : ''),
  )
  const c = report.caption
  if (c) {
    lines.push('', `caption: ${c.rows} rows (${c.ok} ok, ${c.error} error)`)
    lines.push(
      ...table(
        [
          ['exact match', pct(c.exactMatch), `${c.exactMatches}/${c.rows}`],
          ['BLEU-4', c.bleu4.toFixed(4), `p1-4 ${c.bleu.precisions.map((p) => p.toFixed(3)).join(' ')}, BP ${c.bleu.brevityPenalty.toFixed(3)}`],
          ['CIDEr-D', c.ciderD.toFixed(4), '(0-10)'],
        ],
        '  ',
        [2],
      ),
    )
    lines.push(...finishLines(c.byFinishReason, 'exact match'))
    const b = c.breakdown
    if (b && b.captions > 0) {
      const shown = ATTRIBUTES.filter((a) => (a === 'motion' ? b.videoCaptions > 0 : a === 'size' || a === 'position' ? b.imageCaptions > 0 : true))
      lines.push(
        `  errors by attribute (ok captions checked against the scene: ${b.parsed} parsed, ${b.unparsed} not in the grammar; ` +
          `${b.correct} of ${b.parsed} with no error, ${b.objects} objects):`,
      )
      lines.push(
        ...table([
          ['attribute', 'objects wrong', 'captions', 'of parsed'],
          ...shown.map((a) => [ATTRIBUTE_LABELS[a], String(b.attributes[a].errors), String(b.attributes[a].captions), share(b.attributes[a].captions, b.parsed)]),
        ]),
      )
    }
  }
  const v = report.vqa
  if (v) {
    lines.push('', `vqa: ${v.rows} questions (${v.ok} ok, ${v.error} error)${v.unscorable > 0 ? `, ${v.unscorable} without a ground-truth answer (not scored)` : ''}`)
    lines.push(...table([['accuracy', pct(v.accuracy), `${v.correct}/${v.rows}`]], '  ', [2]))
    lines.push(...finishLines(v.byFinishReason, 'accuracy'))
    const types = QUESTION_TYPES.filter((t) => v.byType[t] !== undefined)
    if (types.length > 0) {
      lines.push(
        ...table([
          ['type', 'questions', 'correct', 'accuracy'],
          ...types.map((t) => {
            const s = v.byType[t]!
            return [t, String(s.rows), String(s.correct), pct(s.accuracy)]
          }),
        ]),
      )
    }
  }
  return `${lines.join('\n')}\n`
}

/** Registers `evflow eval` on `program`. */
export function registerEvalCommand(program: Command): void {
  program
    .command('eval <out>')
    .description('score a run\'s output against its reference shards: caption exact match, BLEU-4, CIDEr-D, VQA accuracy, errors by attribute')
    .requiredOption('--reference <inputs...>', 'the reference Parquet files, folders or globs (the run\'s inputs, with caption / question / answer / scene)')
    .option('--id-column <name>', "column joining output and reference rows (default 'id'; without one, rows are joined by order)")
    .option('--json', 'print the report as JSON on stdout instead of the table')
    .option('--verbose', 'print stacks on errors')
    .addHelpText(
      'after',
      `
Output rows are joined to reference rows by id; error rows count as wrong. Captions are scored against the
reference 'caption' (exact match, corpus BLEU-4, CIDEr-D as in coco-caption) and parsed with the scenes
grammar to count errors by attribute (colour, shape, size, count, position; motion for clips) against
'scene'. Answers are scored against the reference 'answer', or, for another question, the answer the
grammar derives from 'scene'; accuracy per question type (color, count, exists, where, shape, direction).
When the output has 'finish_reason', exact match and accuracy are also given per finish reason.
${examplesHelp('eval')}
${exitCodeHelp([0, 1, 2, 3], { 0: 'scored', 2: 'a folder or file missing, no result column, no row in common', 3: 'a shard unreadable' })}`,
    )
    .action(async (out: string, flags: { reference: string[]; idColumn?: string; json?: boolean }) => {
      const report = await evaluateOutputs({ outDir: out, reference: flags.reference, ...(flags.idColumn ? { idColumn: flags.idColumn } : {}) })
      process.stdout.write(flags.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report))
    })
}
