/**
 * Thumbnails of the input images behind sampled output rows. Output shards keep only kept columns, so the
 * images are read from the inputs the completion records name: output row `i` of a shard is input row
 * `rowStart + i` (outputs are in input order, one row per input row). Each input is read once, one row
 * group at a time, only the image column and only the row groups holding wanted rows; an input whose
 * fingerprint changed since the run is not used. Images are decoded by sharp (libuv threads) under a pixel
 * limit and a timeout, and encoded as small WebP data; undecodable bytes simply give no thumbnail.
 */
import sharp from 'sharp'

import { describeError } from '../../src/errors.js'
import { imageCells, ParquetReader, type ParquetSource } from '../../src/parquet/reader.js'
import { planShards, rowGroupRanges, type PlannedShard } from '../../src/parquet/shards.js'
import type { CommittedShard, RowRef } from './read-output.js'

export interface Thumbnail {
  /** `data:image/webp;base64,...` for each frame (one for an image). */
  readonly frames: readonly string[]
  /** Frames of the clip beyond those shown. */
  readonly framesLeftOut: number
  /** Width × height of the source image (first frame), when it decoded. */
  readonly width: number
  readonly height: number
}

/** What became of one wanted row: a thumbnail, or why there is none. */
export type ThumbnailResult = { readonly ok: true; readonly thumbnail: Thumbnail } | { readonly ok: false; readonly reason: string }

export interface ThumbnailOptions {
  /** Longest side of an image thumbnail, px. Default 160. */
  readonly size?: number
  /** Longest side of a clip frame, px. Default 72. */
  readonly frameSize?: number
  /** Most frames of a clip shown. Default 16. */
  readonly maxFrames?: number
  /** Most encoded bytes of all thumbnails together (base64 in the page adds a third): past two thirds of it,
   *  smaller and coarser ones are made; once it is reached, none. Default 3 MiB. */
  readonly budgetBytes?: number
  /** Largest source image accepted, in pixels. Default 64 000 000 (the pipelines' default). */
  readonly maxPixels?: number
  /** Largest encoded image accepted, in bytes. Default 64 MiB. */
  readonly maxBytes?: number
  /** Image column of the inputs (the run's `--image-column`). Default: detected as the run did. */
  readonly imageColumn?: string
}

/** Why a row has no thumbnail once the thumbnails reached their byte budget. */
export const BUDGET_REACHED = 'left out: the report reached its size budget'

/** Key of a row in the result map. */
export const rowKey = (ref: Pick<RowRef, 'shard' | 'row'>): string => `${ref.shard}\u0000${ref.row}`

/**
 * Thumbnails for `rows` (keyed by {@link rowKey}). Never throws for a bad input or image: the row gets a
 * reason instead.
 */
export async function makeThumbnails(
  shards: readonly CommittedShard[],
  rows: readonly RowRef[],
  options: ThumbnailOptions = {},
): Promise<{ results: Map<string, ThumbnailResult>; bytes: number; inputRowGroupsRead: number }> {
  const size = options.size ?? 160
  const frameSize = options.frameSize ?? 72
  const maxFrames = options.maxFrames ?? 16
  const budget = options.budgetBytes ?? 3 * 1024 * 1024
  const maxPixels = options.maxPixels ?? 64_000_000
  const maxBytes = options.maxBytes ?? 64 * 1024 * 1024
  const results = new Map<string, ThumbnailResult>()
  let bytes = 0
  let inputRowGroupsRead = 0

  /** The thumbnail as a data URL, or null when it would take the thumbnails past the budget. */
  const encode = async (cell: Uint8Array, side: number, quality: number): Promise<{ data: string; width: number; height: number } | null> => {
    if (cell.byteLength === 0) throw new Error('0 bytes')
    if (cell.byteLength > maxBytes) throw new Error(`${cell.byteLength} bytes exceeds ${maxBytes}`)
    // SVG rendering cannot be stopped by sharp's timeout (docs/reliability.md, Images): not rendered here.
    if (looksLikeXml(cell)) throw new Error('SVG / XML images are not rendered in the report')
    const input = Buffer.from(cell.buffer, cell.byteOffset, cell.byteLength)
    const { data, info } = await sharp(input, { limitInputPixels: maxPixels, pages: 1, failOn: 'none' })
      .timeout({ seconds: 10 })
      .autoOrient()
      .resize(side, side, { fit: 'inside', withoutEnlargement: true })
      .webp({ quality, effort: 2 })
      .toBuffer({ resolveWithObject: true })
    if (bytes + data.byteLength > budget) return null
    bytes += data.byteLength
    return { data: `data:image/webp;base64,${data.toString('base64')}`, width: info.width, height: info.height }
  }
  // Past two thirds of the budget: smaller and coarser. A thumbnail that would cross the budget is dropped.
  const settings = (side: number): { side: number; quality: number } =>
    bytes < (2 * budget) / 3 ? { side, quality: 60 } : { side: Math.max(32, Math.round(side / 2)), quality: 35 }

  const thumbnail = async (cell: unknown): Promise<ThumbnailResult> => {
    const clip = Array.isArray(cell)
    const frames: unknown[] = clip ? (cell as unknown[]) : [imageBytes(cell)]
    if (frames.length === 0) return { ok: false, reason: 'the clip has no frames' }
    const shown = frames.slice(0, maxFrames)
    const out: string[] = []
    let width = 0
    let height = 0
    for (const [i, frame] of shown.entries()) {
      if (!(frame instanceof Uint8Array)) {
        if (!clip) return { ok: false, reason: 'no image bytes in the input cell' }
        continue
      }
      const s = settings(clip ? frameSize : size)
      try {
        const t = await encode(frame, s.side, s.quality)
        if (t === null) return { ok: false, reason: BUDGET_REACHED }
        out.push(t.data)
        if (i === 0) ({ width, height } = t)
      } catch (error) {
        if (!clip) return { ok: false, reason: `the image does not decode: ${describeError(error)}` }
      }
    }
    if (out.length === 0) return { ok: false, reason: 'no frame of the clip decodes' }
    return { ok: true, thumbnail: { frames: out, framesLeftOut: frames.length - shown.length, width, height } }
  }

  const byShard = new Map<string, RowRef[]>()
  for (const ref of rows) {
    const list = byShard.get(ref.shard) ?? []
    list.push(ref)
    byShard.set(ref.shard, list)
  }
  // Input files are untrusted: they are parsed in budgeted parser processes, as a run parses them.
  const reader = new ParquetReader({ parsers: 1 })
  try {
    for (const shard of shards) {
      const wanted = byShard.get(shard.record.shard)
      if (!wanted || wanted.length === 0) continue
      const fail = (reason: string) => wanted.forEach((r) => results.set(rowKey(r), { ok: false, reason }))
      const { record } = shard
      let planned: PlannedShard
      try {
        ;[planned] = await planShards([record.input], {
          rows: [record.rowStart, record.rowEnd],
          reader,
          ...(options.imageColumn === undefined ? {} : { imageColumn: options.imageColumn }),
        })
      } catch (error) {
        fail(`input ${describeError(error)}`)
        continue
      }
      if (!planned.plan.ok) {
        fail(`input cannot be read now: ${planned.plan.error.message}`)
        continue
      }
      if (planned.plan.info.fingerprint !== record.inputFingerprint) {
        fail(`input ${record.input} changed since the run (its fingerprint differs)`)
        continue
      }
      const column = planned.plan.info.imageColumn
      if (column === undefined) {
        fail(`input ${record.input} has no image column${planned.imageProblem ? ` (${planned.imageProblem})` : ''}`)
        continue
      }
      let source: ParquetSource
      try {
        source = await reader.open(record.input)
      } catch (error) {
        fail(describeError(error))
        continue
      }
      try {
        const layout = source.columns.find((c) => c.name === column)?.image
        if (layout === undefined) {
          fail(`input ${record.input}: column ${column} holds no image bytes`)
          continue
        }
        const groups = rowGroupRanges(source)
        const sorted = [...wanted].sort((a, b) => a.inputRow - b.inputRow)
        let i = 0
        for (const [rowGroup, g] of groups.entries()) {
          const inGroup: RowRef[] = []
          while (i < sorted.length && sorted[i].inputRow < g.end) {
            if (sorted[i].inputRow >= g.start) inGroup.push(sorted[i])
            i++
          }
          if (inGroup.length === 0) continue
          const start = inGroup[0].inputRow
          const end = inGroup[inGroup.length - 1].inputRow + 1
          let cells: ReturnType<typeof imageCells>
          try {
            const block = await reader.read(source, { rowGroup, start: start - g.start, end: end - g.start, columns: [column], image: { column, layout } })
            cells = block.image ? imageCells(block.image, block.rows) : []
            inputRowGroupsRead += 1
          } catch (error) {
            inGroup.forEach((r) => results.set(rowKey(r), { ok: false, reason: describeError(error) }))
            continue
          }
          for (const ref of inGroup) {
            const cell = cells[ref.inputRow - start]
            results.set(rowKey(ref), await thumbnail(cell?.frames ?? cell?.image ?? null))
          }
        }
        for (const ref of sorted) if (!results.has(rowKey(ref))) results.set(rowKey(ref), { ok: false, reason: `row ${ref.inputRow} is not in ${record.input}` })
      } finally {
        await source.close().catch(() => {})
      }
    }
  } finally {
    await reader.close()
  }
  return { results, bytes, inputRowGroupsRead }
}

/** Whether the bytes start like an XML document (SVG), after any byte-order mark and white space. */
function looksLikeXml(bytes: Uint8Array): boolean {
  for (let i = 0; i < Math.min(bytes.byteLength, 64); i++) {
    const b = bytes[i]
    if (b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d || b === 0xef || b === 0xbb || b === 0xbf) continue
    return b === 0x3c // '<'
  }
  return false
}

/** The bytes of an image cell: binary, or a Hugging Face `{bytes, path}` struct. */
function imageBytes(cell: unknown): Uint8Array | null {
  if (cell instanceof Uint8Array) return cell
  if (cell !== null && typeof cell === 'object') {
    const bytes = (cell as { bytes?: unknown }).bytes
    if (bytes instanceof Uint8Array) return bytes
  }
  return null
}
