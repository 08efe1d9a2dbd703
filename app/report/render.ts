/**
 * The report as one self-contained HTML page: inline CSS, inline SVG charts, thumbnails as `data:` URLs and
 * one small inline script (the gallery's filters). A Content-Security-Policy forbids every network request.
 * Pure: a {@link ReportModel} in, a string out.
 */
import type { EvalReport } from '../eval/index.js'
import { ATTRIBUTES, QUESTION_TYPES } from '../eval/index.js'
import type { RunSummary } from '../../pipelines/run.js'
import { bars, escapeHtml as h, histogram, lineChart } from './charts.js'
import { CLIENT_SCRIPT } from './client.js'
import type { ErrorExample, OutputScan, SampledRow } from './read-output.js'
import type { ReferenceText } from './reference.js'
import { rowKey, type ThumbnailResult } from './thumbnails.js'
import type { TimingView } from './timing.js'

export interface ModelInfo {
  readonly path: string
  readonly name: string | null
  readonly description: string | null
  /** The manifest's declared domain (`domain`), when it declares one. */
  readonly domain: string | null
}

export interface ReportModel {
  readonly outDir: string
  readonly generatedAt: string
  readonly evflow: string
  readonly pipeline: string | null
  readonly model: ModelInfo | null
  readonly config: unknown
  readonly configHash: string | null
  readonly scan: OutputScan
  readonly thumbnails: ReadonlyMap<string, ThumbnailResult>
  readonly references: ReadonlyMap<string, ReferenceText> | null
  readonly evaluation: EvalReport | null
  readonly timing: TimingView
  readonly summary: RunSummary | null
  /** Shards the last run failed that have no output now. */
  readonly failedShards: readonly { shard: string; input: string; error: string }[]
  readonly problems: readonly string[]
  readonly sample: number
  readonly seed: number
}

const pct = (n: number, of: number) => (of === 0 ? '–' : `${((100 * n) / of).toFixed(1)}%`)
const int = (n: number) => n.toLocaleString('en-US')

export function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '–'
  if (s < 60) return `${s.toFixed(1)} s`
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`
}

const axisTime = (s: number) => (s >= 600 ? `${(s / 60).toFixed(0)}m` : `${s.toFixed(s >= 10 ? 0 : 1)}s`)

/** Confidence shown for a mean token log-probability: the geometric-mean token probability. */
const confidence = (meanLogprob: number) => Math.exp(meanLogprob)

function thumbHtml(result: ThumbnailResult | undefined, alt: string): string {
  if (!result) return '<div class="nothumb">no thumbnail</div>'
  if (!result.ok) return `<div class="nothumb">no thumbnail: ${h(result.reason)}</div>`
  const t = result.thumbnail
  if (t.frames.length === 1 && t.framesLeftOut === 0) return `<img src="${t.frames[0]}" alt="${h(alt)}" loading="lazy" decoding="async">`
  const frames = t.frames.map((f, i) => `<img src="${f}" alt="${h(`${alt}, frame ${i + 1}`)}" loading="lazy" decoding="async">`).join('')
  return `<div class="strip" data-frames="${t.frames.length}">${frames}${t.framesLeftOut > 0 ? `<span class="more">+${t.framesLeftOut} frames</span>` : ''}</div>`
}

function place(ref: { shard: string; row: number; inputRow: number; id: string | null }): string {
  return `${ref.id !== null ? `id <b>${h(ref.id)}</b> · ` : ''}shard ${h(ref.shard)} row ${ref.row}${ref.inputRow !== ref.row ? ` (input row ${ref.inputRow})` : ''}`
}

function fieldsHtml(row: SampledRow, columns: readonly string[], hidden: ReadonlySet<string>): string {
  const parts: string[] = []
  for (const c of columns) {
    if (hidden.has(c)) continue
    const v = row.fields[c]
    if (v === undefined) continue
    const main = c === 'caption' || c === 'answer' || c === 'answers'
    parts.push(`<p class="field${main ? ' main' : ''}"><span class="k">${h(c)}</span> <span class="v" data-field="${h(c)}" data-search>${h(v)}</span></p>`)
    if (parts.length >= 8) break
  }
  return parts.join('')
}

function galleryHtml(m: ReportModel): string {
  const { scan } = m
  const hidden = new Set([scan.meanLogprobColumn, scan.minLogprobColumn, scan.finishReasonColumn].filter((c): c is string => c !== null))
  const hasConf = scan.meanLogprobColumn !== null
  const hasFinish = scan.finishReasonColumn !== null
  const hasRef = m.references !== null
  const cards = scan.gallery.map((row, order) => {
    const key = rowKey(row)
    const ref = m.references?.get(key)
    const attrs = [
      `data-order="${order}"`,
      `data-shard="${h(row.shard)}"`,
      `data-row="${row.row}"`,
      `data-input-row="${row.inputRow}"`,
      ...(row.id !== null ? [`data-id="${h(row.id)}"`] : []),
      ...(row.meanLogprob !== null ? [`data-conf="${row.meanLogprob}"`] : []),
      ...(row.finishReason !== null ? [`data-finish="${h(row.finishReason)}"`] : []),
      ...(ref ? [`data-match="${ref.match ? 1 : 0}"`] : []),
      `data-pools="${row.pools.join(' ')}"`,
    ]
    const badges: string[] = []
    if (row.pools.includes('lowest')) badges.push('<span class="badge low">least confident</span>')
    if (row.finishReason === 'length') badges.push('<span class="badge cut">cut at the token limit</span>')
    if (ref) badges.push(ref.match ? '<span class="badge ok">matches</span>' : '<span class="badge bad">mismatch</span>')
    const conf =
      row.meanLogprob === null
        ? ''
        : `<p class="conf">confidence <b>${(100 * confidence(row.meanLogprob)).toFixed(1)}%</b> <span class="muted">(mean log-prob ${row.meanLogprob.toFixed(3)}${row.minLogprob === null ? '' : `, min ${row.minLogprob.toFixed(3)}`})</span></p>`
    const finish = row.finishReason === null ? '' : `<p class="finish">finish <b>${h(row.finishReason)}</b></p>`
    const reference = ref ? `<p class="ref ${ref.match ? 'match' : 'mismatch'}"><span class="k">reference ${h(ref.kind)}</span> <span class="v" data-search>${h(ref.text)}</span></p>` : ''
    const idSearch = row.id !== null ? `<span hidden data-search>${h(row.id)}</span>` : ''
    return `<article class="card" ${attrs.join(' ')}><div class="thumb">${thumbHtml(m.thumbnails.get(key), `input of ${row.shard} row ${row.row}`)}</div><div class="body">${badges.length > 0 ? `<p class="badges">${badges.join('')}</p>` : ''}${fieldsHtml(row, scan.columns, hidden)}${reference}${conf}${finish}<p class="meta">${place(row)}</p>${idSearch}</div></article>`
  })
  const extra = Math.ceil(m.sample / 4)
  const explain = [
    `${int(scan.gallery.filter((r) => r.pools.includes('sample')).length)} ok rows sampled at random (seed ${m.seed}) of ${int(scan.rows.ok)}`,
    ...(hasConf ? [`the ${int(scan.gallery.filter((r) => r.pools.includes('lowest')).length)} least confident ok rows (up to ${extra})`] : []),
    ...(hasFinish ? [`${int(scan.gallery.filter((r) => r.pools.includes('length')).length)} rows cut at the token limit (up to ${extra}, sampled)`] : []),
  ]
  const controls = [
    '<label class="search">search <input type="search" id="search" placeholder="words in the texts or ids" autocomplete="off"></label>',
    hasConf ? '<label>order <select id="sort"><option value="output">output order</option><option value="confidence">lowest confidence first</option></select></label>' : '',
    hasRef ? '<label><input type="checkbox" id="only-mismatches"> mismatches only</label>' : '',
    hasFinish ? '<label><input type="checkbox" id="only-length"> finish_reason = length</label>' : '',
  ].join('')
  const finishLine = hasFinish
    ? `<p>Finish reasons of the ok rows: ${Object.entries(scan.finishReasons)
        .sort((a, b) => b[1] - a[1])
        .map(([r, n]) => `<b>${h(r)}</b> ${int(n)} (${pct(n, scan.rows.ok)})`)
        .join(', ')}.</p>`
    : ''
  const hist = scan.confidenceHistogram ? histogram(scan.confidenceHistogram, { title: 'Confidence of the ok rows (exp of the mean token log-probability)', xLabel: 'confidence' }) : ''
  return `<section id="gallery"><h2>Gallery</h2>
<p>${explain.join('; ')}. Each input image is shown beside its output row.</p>
${finishLine}${hist}
<div class="controls">${controls}<span class="count"><span id="shown">${scan.gallery.length}</span> of ${scan.gallery.length} shown</span></div>
<p id="gallery-empty" class="muted" hidden>No row matches.</p>
<div id="gallery-grid" class="grid">${cards.join('\n')}</div>
${scan.gallery.length === 0 ? '<p class="muted">No ok row to show.</p>' : ''}</section>`
}

function exampleHtml(m: ReportModel, e: ErrorExample): string {
  return `<article class="example" data-shard="${h(e.shard)}" data-row="${e.row}"${e.id !== null ? ` data-id="${h(e.id)}"` : ''}><div class="thumb">${thumbHtml(m.thumbnails.get(rowKey(e)), `input of ${e.shard} row ${e.row}`)}</div><div class="body"><p class="message">${h(e.message || '(no message)')}</p><p class="meta">${place(e)}</p></div></article>`
}

function errorsHtml(m: ReportModel): string {
  const { scan } = m
  const rows = scan.errors
    .map((g) => `<tr data-code="${h(g.code)}"><td><a href="#error-${h(g.code)}">${h(g.code)}</a></td><td class="num count">${int(g.count)}</td><td class="num">${pct(g.count, scan.rows.total)}</td><td>${h(g.examples[0]?.message ?? '')}</td></tr>`)
    .join('')
  const groups = scan.errors
    .map((g) => `<div class="error-group" id="error-${h(g.code)}" data-code="${h(g.code)}" data-count="${g.count}"><h3>${h(g.code)} <span class="muted">· ${int(g.count)} row${g.count === 1 ? '' : 's'}${g.examples.length < g.count ? `, ${g.examples.length} examples` : ''}</span></h3><div class="examples">${g.examples.map((e) => exampleHtml(m, e)).join('')}</div></div>`)
    .join('\n')
  const failed =
    m.failedShards.length === 0
      ? ''
      : `<h3>Shards with no output</h3><p>The last run could not read these; their rows are not in the output (rerun to retry).</p><ul class="failed">${m.failedShards.map((f) => `<li data-shard="${h(f.shard)}"><b>${h(f.shard)}</b> (${h(f.input)}): ${h(f.error)}</li>`).join('')}</ul>`
  const body =
    scan.errors.length === 0
      ? `<p>No error rows: all ${int(scan.rows.total)} rows are ok.</p>`
      : `<p>${int(scan.rows.error)} of ${int(scan.rows.total)} rows (${pct(scan.rows.error, scan.rows.total)}) are error rows, by reason (<code>error_code</code>):</p><table class="errors"><thead><tr><th>reason</th><th class="num">rows</th><th class="num">share</th><th>first example</th></tr></thead><tbody>${rows}</tbody></table>${groups}`
  return `<section id="errors"><h2>Errors</h2>${body}${failed}</section>`
}

function timingHtml(m: ReportModel): string {
  const t = m.timing
  const time = { xLabel: 'time since the first start', formatX: axisTime, domain: [0, Math.max(t.span, 0.1)] as const }
  const parts: string[] = []
  parts.push(
    bars(t.stageBusy, {
      title: 'Busy time per stage (summed over concurrent tasks and processes, so it can exceed the wall time)',
      format: (v) => `${v.toFixed(1)} s`,
    }),
  )
  parts.push(lineChart(t.throughput, { title: t.throughput.length > 1 ? 'Rows finished per second (reaching the writer), per process' : 'Rows finished per second (reaching the writer)', yLabel: 'rows/s', ...time }))
  if (t.tokens.length > 0) parts.push(lineChart(t.tokens, { title: 'Generated tokens per second', yLabel: 'tokens/s', ...time }))
  parts.push(lineChart(t.queueDepth, { title: 'Queue depth per stage (records inside the stage; the largest in each interval)', yLabel: 'records', ...time }))
  if (t.experts.length > 0) {
    const even = 100 / t.experts.length
    parts.push(bars(t.experts, { title: `Expert load: visual tokens routed to each expert (an even load is ${even.toFixed(1)}% each)` }))
  }
  parts.push(lineChart([t.commits], { title: 'Shards committed over time', yLabel: 'shards', step: true, ...time }))
  parts.push(lineChart(t.rss, { title: 'Resident memory per process', yLabel: 'MiB', ...time }))
  const note =
    t.sources.length === 0
      ? '<p class="muted">No time series was recorded in this folder (runs of evflow before the report existed, or runs through the library without the CLI): the charts use the completion records and the last run\'s summary only.</p>'
      : ''
  return `<section id="time"><h2>Where time went</h2>${note}<div class="charts">${parts.join('\n')}</div></section>`
}

function summaryHtml(m: ReportModel): string {
  const { scan, timing: t, summary } = m
  const activeS = t.activeS ?? summary?.durationS ?? null
  const rows = t.activeS !== null ? t.recordedRows : (summary?.rows.in ?? null)
  const rate = activeS !== null && rows !== null && activeS > 0 ? rows / activeS : null
  const machines = [...new Set(t.sources.map((s) => s.machine))]
  const model = m.model
  const items: [string, string][] = [
    ['pipeline', h(m.pipeline ?? 'unknown')],
    [
      'model',
      model === null
        ? '–'
        : `${h(model.name ?? model.path)} · declared domain: ${model.domain === null ? '<span class="muted">not declared in the manifest</span>' : `<b>${h(model.domain)}</b>`}${model.description ? `<small class="muted">${h(model.description)}</small>` : ''}`,
    ],
    ['rows', `${int(scan.rows.total)} in · <b>${int(scan.rows.ok)}</b> ok · <b>${int(scan.rows.error)}</b> error (${pct(scan.rows.error, scan.rows.total)})`],
    ['shards', `${int(scan.shards.length)} committed${m.failedShards.length > 0 ? ` · <b>${m.failedShards.length} failed</b>` : ''}${scan.uncommitted.length > 0 ? ` · ${scan.uncommitted.length} file(s) without a completion record` : ''}`],
    ['rows/s', rate === null ? '–' : `${rate.toFixed(1)}${t.sources.length > 1 ? ` <span class="muted">(all ${t.sources.length} processes together)</span>` : ''}`],
    ['wall time', activeS === null ? '–' : formatDuration(activeS)],
    ['peak RSS', t.peakRssMiB === null ? '–' : `${int(t.peakRssMiB)} MiB`],
    ['machine', machines.length === 0 ? '<span class="muted">not recorded</span>' : machines.map(h).join('<br>')],
  ]
  const sources =
    t.sources.length === 0
      ? ''
      : `<h3>Processes that wrote this folder</h3><table class="sources"><thead><tr><th>process</th><th>started</th><th class="num">duration</th><th class="num">rows</th><th class="num">rows/s</th><th class="num">peak RSS</th></tr></thead><tbody>${t.sources
          .map((s) => `<tr data-source="${h(s.source)}"><td>${h(s.source)} ${h(s.name)}</td><td>${h(s.startedAt.replace('T', ' ').slice(0, 19))}</td><td class="num">${formatDuration(s.durationS)}</td><td class="num">${int(s.rows)}</td><td class="num">${s.rowsPerS.toFixed(1)}</td><td class="num">${int(s.peakRssMiB)} MiB</td></tr>`)
          .join('')}</tbody></table>`
  const problems = m.problems.length === 0 ? '' : `<div class="warn"><p>Read with problems:</p><ul>${m.problems.map((p) => `<li>${h(p)}</li>`).join('')}</ul></div>`
  const config = `<details><summary>config${m.configHash ? ` (hash ${h(m.configHash)})` : ''}</summary><pre>${h(JSON.stringify(m.config, null, 2))}</pre></details>`
  const wide = new Set(['model', 'rows', 'machine'])
  return `<section id="summary"><h2>Summary</h2><dl class="facts">${items.map(([k, v]) => `<div${wide.has(k) ? ' class="wide"' : ''}><dt>${h(k)}</dt><dd data-fact="${h(k)}">${v}</dd></div>`).join('')}</dl>${problems}${sources}${config}</section>`
}

function evaluationHtml(e: EvalReport): string {
  const p = (x: number) => `${(100 * x).toFixed(2)}%`
  const codes = Object.entries(e.rows.errorCodes).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${h(c)} ${n}`).join(', ')
  const parts: string[] = [
    `<p>${e.outputFiles.length} output shard(s) against ${e.referenceFiles.length} reference shard(s), joined ${e.join === 'id' ? `by <code>${h(e.idColumn)}</code>` : 'by row order within same-named shards'}. ${int(e.rows.evaluated)} rows evaluated: ${int(e.rows.ok)} ok, ${int(e.rows.error)} error${codes ? ` (${codes})` : ''}; error rows count as wrong. ${int(e.rows.missingFromOutput)} reference row(s) missing from the output, ${int(e.rows.notInReference)} output row(s) not in the reference.</p>`,
  ]
  const c = e.caption
  if (c) {
    parts.push(`<h3>Captions: ${int(c.rows)} rows</h3><table class="eval" data-eval="caption"><tbody>
<tr><th>exact match</th><td class="num" data-metric="exact-match">${p(c.exactMatch)}</td><td>${c.exactMatches}/${c.rows}</td></tr>
<tr><th>BLEU-4</th><td class="num" data-metric="bleu4">${c.bleu4.toFixed(4)}</td><td>p1–4 ${c.bleu.precisions.map((x) => x.toFixed(3)).join(' ')}, BP ${c.bleu.brevityPenalty.toFixed(3)}</td></tr>
<tr><th>CIDEr-D</th><td class="num" data-metric="cider-d">${c.ciderD.toFixed(4)}</td><td>(0–10)</td></tr></tbody></table>`)
    const b = c.breakdown
    if (b && b.captions > 0) {
      const shown = ATTRIBUTES.filter((a) => (a === 'motion' ? b.videoCaptions > 0 : a === 'size' || a === 'position' ? b.imageCaptions > 0 : true))
      parts.push(`<p>Errors by attribute (ok captions checked against the scene: ${b.parsed} parsed, ${b.unparsed} not in the grammar; ${b.correct} of ${b.parsed} with no error, ${b.objects} objects):</p>
<table class="eval" data-eval="attributes"><thead><tr><th>attribute</th><th class="num">objects wrong</th><th class="num">captions</th><th class="num">of parsed</th></tr></thead><tbody>${shown
        .map((a) => `<tr><td>${h(a)}</td><td class="num">${b.attributes[a].errors}</td><td class="num">${b.attributes[a].captions}</td><td class="num">${pct(b.attributes[a].captions, b.parsed)}</td></tr>`)
        .join('')}</tbody></table>`)
    }
  }
  const v = e.vqa
  if (v) {
    parts.push(`<h3>VQA: ${int(v.rows)} questions</h3><table class="eval" data-eval="vqa"><tbody><tr><th>accuracy</th><td class="num" data-metric="vqa-accuracy">${p(v.accuracy)}</td><td>${v.correct}/${v.rows}${v.unscorable > 0 ? `; ${v.unscorable} without a ground-truth answer (not scored)` : ''}</td></tr></tbody></table>`)
    const types = QUESTION_TYPES.filter((t) => v.byType[t] !== undefined)
    if (types.length > 0) {
      parts.push(`<table class="eval" data-eval="vqa-types"><thead><tr><th>type</th><th class="num">questions</th><th class="num">correct</th><th class="num">accuracy</th></tr></thead><tbody>${types
        .map((t) => {
          const s = v.byType[t]!
          return `<tr><td>${h(t)}</td><td class="num">${s.rows}</td><td class="num">${s.correct}</td><td class="num">${p(s.accuracy)}</td></tr>`
        })
        .join('')}</tbody></table>`)
    }
  }
  return `<section id="evaluation"><h2>Evaluation</h2><p class="muted">The figures of <code>evflow eval</code>.</p>${parts.join('\n')}</section>`
}

const STYLE = `
:root{--fg:#1b1f24;--muted:#5b6570;--bg:#fff;--card:#f6f8fa;--line:#d8dee4;--accent:#0072b2;--bad:#c0392b;--ok:#1e7b4a;--warn:#fff4d6}
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--muted:#9aa4ae;--bg:#111418;--card:#1b2027;--line:#2d343c;--accent:#56b4e9;--bad:#ff7b6b;--ok:#5fd39a;--warn:#3a3220}}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:16px 20px 8px;border-bottom:1px solid var(--line)}header h1{margin:0 0 4px;font-size:1.35em}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;margin-top:6px}nav a{color:var(--accent);text-decoration:none}
main{padding:0 20px 40px;max-width:1400px;margin:0 auto}section{padding-top:14px}h2{border-bottom:1px solid var(--line);padding-bottom:4px}
.muted{color:var(--muted)}code{font-size:.92em}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));grid-auto-flow:dense;gap:8px 12px;margin:0}.facts div{background:var(--card);border-radius:6px;padding:6px 10px}.facts .wide{grid-column:span 2}.facts small{font-size:.8em;line-height:1.3;display:block}
@media (max-width:560px){.facts .wide{grid-column:auto}}
dt{font-size:.8em;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}dd{margin:2px 0 0}
table{border-collapse:collapse;margin:8px 0;max-width:100%;display:block;overflow-x:auto}th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:var(--card);padding:10px;overflow:auto;max-height:360px;font-size:12px}
.warn{background:var(--warn);padding:6px 12px;border-radius:6px;margin:10px 0}
.controls{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:10px 0;position:sticky;top:0;background:var(--bg);padding:8px 0;z-index:1;border-bottom:1px solid var(--line)}
.controls input[type=search]{padding:5px 8px;min-width:220px;font:inherit}.controls select{font:inherit}.count{margin-left:auto;color:var(--muted)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card,.example{display:flex;gap:10px;background:var(--card);border-radius:8px;padding:10px;align-items:flex-start;min-width:0}
.card[hidden]{display:none}
.thumb{flex:0 0 auto;max-width:50%}.thumb img{display:block;width:128px;height:auto;max-width:100%;image-rendering:auto;border-radius:4px;background:#0001}
.strip{display:flex;flex-wrap:wrap;gap:2px;max-width:160px}.strip img{width:38px;border-radius:2px}.more{font-size:.8em;color:var(--muted)}
.nothumb{width:128px;max-width:100%;min-height:64px;font-size:.8em;color:var(--muted);border:1px dashed var(--line);border-radius:4px;padding:6px;word-break:break-word}
.body{min-width:0;flex:1}.body p{margin:0 0 4px;word-break:break-word}.k{font-size:.75em;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.field.main .v{font-size:1.02em;font-weight:500}.meta{font-size:.8em;color:var(--muted)}
.ref.mismatch .v{color:var(--bad)}.ref.match .v{color:var(--ok)}
.badge{display:inline-block;font-size:.72em;padding:1px 6px;border-radius:9px;margin-right:4px;border:1px solid var(--line)}.badge.bad,.badge.cut,.badge.low{border-color:var(--bad);color:var(--bad)}.badge.ok{border-color:var(--ok);color:var(--ok)}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:10px}.message{font-family:ui-monospace,monospace;font-size:.85em}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr));gap:16px}
figure{margin:0}#gallery>.chart{max-width:760px}figcaption{font-weight:600;margin-bottom:4px}.chart svg{width:100%;height:auto;font-size:11px;fill:var(--fg)}
.chart .grid{stroke:var(--line);stroke-width:1}.chart .axis{stroke:var(--muted)}.chart .label{fill:var(--muted)}
.legend{list-style:none;padding:0;margin:4px 0;display:flex;flex-wrap:wrap;gap:2px 14px;font-size:.85em}.swatch{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}
.bar-row{display:grid;grid-template-columns:minmax(90px,170px) 1fr minmax(60px,auto);gap:8px;align-items:center;font-size:.9em;margin:3px 0}
.bar-label{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}.bar-track{background:var(--card);height:14px;border-radius:3px}.bar{display:block;height:100%;background:var(--accent);border-radius:3px}.bar-note{font-variant-numeric:tabular-nums;color:var(--muted)}
@media (max-width:560px){main,header{padding-left:10px;padding-right:10px}.grid,.examples{grid-template-columns:1fr}.thumb img{width:96px}.controls input[type=search]{min-width:0;width:100%}}
`

/** The whole page. */
export function renderReport(m: ReportModel): string {
  const title = `evflow report: ${m.pipeline ?? 'run'} · ${m.outDir}`
  const sections = [summaryHtml(m), galleryHtml(m), errorsHtml(m), timingHtml(m), ...(m.evaluation ? [evaluationHtml(m.evaluation)] : [])]
  const nav = [['summary', 'Summary'], ['gallery', 'Gallery'], ['errors', `Errors (${int(m.scan.rows.error)})`], ['time', 'Where time went'], ...(m.evaluation ? [['evaluation', 'Evaluation']] : [])]
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="generator" content="evflow ${h(m.evflow)}">
<title>${h(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<header><h1>${h(title)}</h1><div class="muted">generated ${h(m.generatedAt)} by evflow ${h(m.evflow)}</div>
<nav>${nav.map(([id, label]) => `<a href="#${id}">${h(label)}</a>`).join('')}</nav></header>
<main>
${sections.join('\n')}
</main>
<script>${CLIENT_SCRIPT}</script>
</body>
</html>
`
}
