/**
 * Inline SVG charts and HTML bars for the report (no script, no external file): a line chart with axes and
 * a legend, horizontal bars, and a histogram. Every text goes through {@link escapeHtml}.
 */

/** Escapes text for HTML element content and attribute values. */
export function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string)
}

/** Colour-blind-friendly palette (Okabe–Ito), cycled. */
export const PALETTE = ['#0072b2', '#e69f00', '#009e73', '#d55e00', '#cc79a7', '#56b4e9', '#f0e442', '#000000']

export interface LineSeries {
  readonly name: string
  /** Line colour. Default: the palette's, by position. */
  readonly colour?: string
  /** `[x, y]` in data units, x ascending. */
  readonly points: readonly (readonly [number, number])[]
}

export interface LineChartOptions {
  readonly title: string
  readonly xLabel: string
  readonly yLabel: string
  readonly format?: (y: number) => string
  readonly formatX?: (x: number) => string
  /** Draw steps (a value holds until the next point) instead of straight segments. */
  readonly step?: boolean
  /** The x range shown. Default: the data's. */
  readonly domain?: readonly [number, number]
}

/** Round tick values covering [min, max]. */
export function ticks(min: number, max: number, count = 4): number[] {
  if (!(max > min)) return [min]
  const raw = (max - min) / count
  const magnitude = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw
  const out: number[] = []
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Math.round(v / step) * step)
  return out
}

export const compact = (y: number): string => {
  const a = Math.abs(y)
  if (a >= 1e6) return `${(y / 1e6).toFixed(a >= 1e7 ? 0 : 1)}M`
  if (a >= 1e3) return `${(y / 1e3).toFixed(a >= 1e4 ? 0 : 1)}k`
  if (a >= 10 || a === 0) return y.toFixed(0)
  return y.toFixed(a >= 1 ? 1 : 2)
}

/** A line chart as inline SVG (scales with its container: `viewBox`, width 100%). */
export function lineChart(series: readonly LineSeries[], options: LineChartOptions): string {
  const W = 640
  const H = 220
  const left = 52
  const right = 12
  const top = 12
  const bottom = 34
  const all = series.flatMap((s) => s.points)
  if (all.length === 0) return `<p class="muted">${escapeHtml(options.title)}: no data recorded.</p>`
  const xs = all.map((p) => p[0])
  const ys = all.map((p) => p[1])
  const x0 = options.domain?.[0] ?? Math.min(...xs)
  const xMax = options.domain?.[1] ?? Math.max(...xs)
  const x1 = xMax > x0 ? xMax : x0 + 1
  const y1 = Math.max(...ys, 0) > 0 ? Math.max(...ys) * 1.05 : 1
  const fx = options.formatX ?? compact
  const fy = options.format ?? compact
  const px = (x: number) => left + ((x - x0) / (x1 - x0)) * (W - left - right)
  const py = (y: number) => top + (1 - y / y1) * (H - top - bottom)
  const parts: string[] = []
  for (const t of ticks(0, y1)) {
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${py(t).toFixed(1)}" y2="${py(t).toFixed(1)}" class="grid"/>`)
    parts.push(`<text x="${left - 6}" y="${(py(t) + 4).toFixed(1)}" text-anchor="end">${escapeHtml(fy(t))}</text>`)
  }
  for (const t of ticks(x0, x1, 5)) {
    parts.push(`<text x="${px(t).toFixed(1)}" y="${H - bottom + 16}" text-anchor="middle">${escapeHtml(fx(t))}</text>`)
  }
  parts.push(`<line x1="${left}" x2="${W - right}" y1="${py(0)}" y2="${py(0)}" class="axis"/>`)
  parts.push(`<text x="${(left + W - right) / 2}" y="${H - 4}" text-anchor="middle" class="label">${escapeHtml(options.xLabel)}</text>`)
  parts.push(`<text x="12" y="${(top + H - bottom) / 2}" text-anchor="middle" class="label" transform="rotate(-90 12 ${(top + H - bottom) / 2})">${escapeHtml(options.yLabel)}</text>`)
  for (const [i, s] of series.entries()) {
    if (s.points.length === 0) continue
    const coords: string[] = []
    for (const [j, [x, y]] of s.points.entries()) {
      if (options.step && j > 0) coords.push(`${px(x).toFixed(1)},${py(s.points[j - 1][1]).toFixed(1)}`)
      coords.push(`${px(x).toFixed(1)},${py(y).toFixed(1)}`)
    }
    const colour = s.colour ?? PALETTE[i % PALETTE.length]
    parts.push(
      s.points.length === 1
        ? `<circle cx="${px(s.points[0][0]).toFixed(1)}" cy="${py(s.points[0][1]).toFixed(1)}" r="3" fill="${colour}"><title>${escapeHtml(s.name)}</title></circle>`
        : `<polyline points="${coords.join(' ')}" fill="none" stroke="${colour}" stroke-width="1.8"><title>${escapeHtml(s.name)}</title></polyline>`,
    )
  }
  const legend =
    series.length > 1 || (series.length === 1 && series[0].name !== '')
      ? `<ul class="legend">${series.map((s, i) => `<li><span class="swatch" style="background:${s.colour ?? PALETTE[i % PALETTE.length]}"></span>${escapeHtml(s.name)}</li>`).join('')}</ul>`
      : ''
  return `<figure class="chart"><figcaption>${escapeHtml(options.title)}</figcaption><svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(options.title)}">${parts.join('')}</svg>${legend}</figure>`
}

export interface Bar {
  readonly label: string
  readonly value: number
  /** Text shown after the bar (default: the formatted value). */
  readonly note?: string
}

/** Horizontal bars as HTML (label, bar scaled to the largest value, note). */
export function bars(rows: readonly Bar[], options: { title: string; format?: (v: number) => string; className?: string }): string {
  if (rows.length === 0) return `<p class="muted">${escapeHtml(options.title)}: no data recorded.</p>`
  const max = Math.max(...rows.map((r) => r.value), 0)
  const format = options.format ?? compact
  const items = rows
    .map((r) => {
      const width = max > 0 ? Math.max(0.5, (100 * r.value) / max) : 0
      return `<div class="bar-row"><span class="bar-label">${escapeHtml(r.label)}</span><span class="bar-track"><span class="bar" style="width:${width.toFixed(1)}%"></span></span><span class="bar-note">${escapeHtml(r.note ?? format(r.value))}</span></div>`
    })
    .join('')
  return `<figure class="bars${options.className ? ` ${escapeHtml(options.className)}` : ''}"><figcaption>${escapeHtml(options.title)}</figcaption>${items}</figure>`
}

/** A histogram of `counts` over equal bins of [0, 1] as inline SVG. */
export function histogram(counts: readonly number[], options: { title: string; xLabel: string }): string {
  const W = 640
  const H = 160
  const left = 40
  const bottom = 30
  const top = 10
  const max = Math.max(...counts, 1)
  const bw = (W - left - 10) / counts.length
  const parts: string[] = []
  for (const [i, c] of counts.entries()) {
    const h = ((H - top - bottom) * c) / max
    parts.push(`<rect x="${(left + i * bw + 1).toFixed(1)}" y="${(H - bottom - h).toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${PALETTE[0]}"><title>${(i / counts.length).toFixed(2)}–${((i + 1) / counts.length).toFixed(2)}: ${c}</title></rect>`)
  }
  for (const t of [0, 0.25, 0.5, 0.75, 1]) parts.push(`<text x="${(left + t * (W - left - 10)).toFixed(1)}" y="${H - bottom + 14}" text-anchor="middle">${t}</text>`)
  parts.push(`<text x="${left - 6}" y="${top + 8}" text-anchor="end">${compact(max)}</text>`)
  parts.push(`<line x1="${left}" x2="${W - 10}" y1="${H - bottom}" y2="${H - bottom}" class="axis"/>`)
  parts.push(`<text x="${(left + W) / 2}" y="${H - 2}" text-anchor="middle" class="label">${escapeHtml(options.xLabel)}</text>`)
  return `<figure class="chart"><figcaption>${escapeHtml(options.title)}</figcaption><svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(options.title)}">${parts.join('')}</svg></figure>`
}
