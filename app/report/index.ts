/**
 * `buildReport`: a run's output folder → one self-contained HTML page a person can judge the run by:
 * a summary, a gallery of input images beside their outputs, error rows by reason with examples, where the
 * time went, and (with `reference`) the figures of `evflow eval`.
 *
 * Reading: the output shards once, row group by row group (`read-output.ts`); then only the input row
 * groups holding sampled rows, for thumbnails (`thumbnails.ts`); the series files the runs recorded
 * (`series.ts`); the completion records and `summary.json`. Memory stays flat in the output's size: the
 * sample, the error examples and the thumbnails are bounded. Nothing is written but the report file.
 */
import { randomBytes } from 'node:crypto'
import { lstat, open, readFile, rename, rm, stat } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'

import { EVFLOW_VERSION, type RunSummary } from '../../pipelines/run.js'
import { InputNotFoundError, PipelineConfigError, ShardWriteError, describeError } from '../../src/errors.js'
import { domainText, readManifest } from '../../src/model/manifest.js'
import { EVFLOW_DIR, outputLayout } from '../../src/parquet/commit.js'
import { evaluateOutputs, type EvalReport } from '../eval/index.js'
import { scanOutput } from './read-output.js'
import { referenceTexts, type ReferenceText } from './reference.js'
import { renderReport, type ModelInfo } from './render.js'
import { readSeries } from './series.js'
import { makeThumbnails, type ThumbnailOptions } from './thumbnails.js'
import { timingView } from './timing.js'

export { SeriesRecorder, teeProgress, readSeries, type SeriesFile, type SeriesHeader, type SeriesPoint, type TrackedRun } from './series.js'
export { renderReport, type ReportModel } from './render.js'

export const REPORT_FILE = 'report.html'

export interface ReportOptions {
  /** A run's output folder. */
  readonly outDir: string
  /** Where the page is written (`.html` / `.htm`). Default `<outDir>/_evflow/report.html`. */
  readonly output?: string
  /** Reference Parquet files, folders or globs (the run's inputs with captions / answers / scenes): adds the
   *  Evaluation section and each gallery row's reference. Default: none. */
  readonly reference?: readonly string[]
  /** Column joining output and reference rows. Default `id`. */
  readonly idColumn?: string
  /** Ok rows sampled for the gallery, 0-10000. Default 200. */
  readonly sample?: number
  /** Seed of the sample, a non-negative integer. Default 1. */
  readonly seed?: number
  /** Thumbnail sizes and budget (see `ThumbnailOptions`). */
  readonly thumbnails?: Omit<ThumbnailOptions, 'imageColumn' | 'maxPixels' | 'maxBytes'>
  /** evflow version printed in the page. Default: this evflow's. */
  readonly evflow?: string
}

export interface ReportResult {
  readonly path: string
  readonly bytes: number
  readonly rows: { readonly total: number; readonly ok: number; readonly error: number }
  readonly gallery: number
  readonly errorReasons: number
  readonly thumbnails: { readonly made: number; readonly missing: number; readonly bytes: number }
  /** Output row groups read, per output file (each once), and input row groups read for thumbnails. */
  readonly outputRowGroupsRead: Readonly<Record<string, number>>
  readonly inputRowGroupsRead: number
  readonly durationMs: number
}

/** Validates options before any I/O; throws `PipelineConfigError` naming the field. */
export function validateReportOptions(options: ReportOptions): void {
  if (typeof options.outDir !== 'string' || options.outDir === '') throw new PipelineConfigError('outDir', 'give the output folder of a run')
  if (options.output !== undefined && !/\.html?$/i.test(options.output)) throw new PipelineConfigError('output', `must end in .html or .htm, got ${options.output}`)
  const sample = options.sample ?? 200
  if (!Number.isInteger(sample) || sample < 0 || sample > 10_000) throw new PipelineConfigError('sample', `must be an integer in [0, 10000], got ${sample}`)
  const seed = options.seed ?? 1
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new PipelineConfigError('seed', `must be an integer in [0, 4294967295], got ${seed}`)
  if (options.reference !== undefined && options.reference.length === 0) throw new PipelineConfigError('reference', 'give at least one reference shard, folder or glob')
}

async function readJson<T>(path: string, maxBytes: number): Promise<T | null> {
  try {
    const info = await lstat(path)
    if (!info.isFile() || info.size > maxBytes) return null
    return JSON.parse(await readFile(path, 'utf8')) as T
  } catch {
    return null
  }
}

/**
 * The model of the run's config (`<pipeline>.model`) and what its manifest says about itself, read as a run
 * reads it (`readManifest`). A package that no longer passes its checks (changed or damaged since the run) is
 * still described from its raw `manifest.json`, as far as that says anything: the report describes a run
 * that happened, and must not fail on what became of the model afterwards.
 */
async function modelInfo(config: unknown, pipeline: string | null): Promise<ModelInfo | null> {
  const section = pipeline === null ? undefined : ((config as Record<string, unknown> | null)?.[pipeline] as { model?: unknown } | undefined)
  if (typeof section?.model !== 'string') return null
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : null)
  try {
    const { manifest, domain } = readManifest(section.model)
    return { path: section.model, name: manifest.name, description: str(manifest.description), domain: domain ? domainText(domain) : null }
  } catch {
    const raw = await readJson<Record<string, unknown>>(join(section.model, 'manifest.json'), 4 * 1024 * 1024)
    const domain = raw?.domain
    return {
      path: section.model,
      name: str(raw?.name),
      description: str(raw?.description),
      domain: typeof domain === 'string' ? domain : domain && typeof domain === 'object' ? JSON.stringify(domain) : null,
    }
  }
}

/** Writes `text` to `path` through a temporary file in the same folder and a rename. */
async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
  try {
    const handle = await open(tmp, 'wx')
    try {
      await handle.writeFile(text)
      await handle.sync()
    } finally {
      await handle.close()
    }
    await rename(tmp, path)
  } catch (cause) {
    await rm(tmp, { force: true }).catch(() => {})
    throw new ShardWriteError(path, `cannot write the report: ${describeError(cause)}`, { cause })
  }
}

/**
 * Builds the report of `options.outDir` and writes it. Throws `PipelineConfigError` (bad options, no
 * result column to evaluate), `InputNotFoundError` (no such folder, nothing committed in it, a reference
 * missing), `ShardWriteError` (the page cannot be written). Unreadable shards and images are reported in
 * the page, not thrown.
 */
export async function buildReport(options: ReportOptions): Promise<ReportResult> {
  validateReportOptions(options)
  const started = performance.now()
  const outDir = options.outDir
  const sample = options.sample ?? 200
  const seed = options.seed ?? 1
  const idColumn = options.idColumn ?? 'id'
  try {
    if (!(await stat(outDir)).isDirectory()) throw new InputNotFoundError(outDir, 'not a folder (give the output folder of a run)')
  } catch (error) {
    if (error instanceof InputNotFoundError) throw error
    throw new InputNotFoundError(outDir, 'no such output folder')
  }
  const layout = outputLayout(outDir)
  const meta = join(outDir, EVFLOW_DIR)
  const target = options.output ?? join(meta, REPORT_FILE)

  const scan = await scanOutput(outDir, { sample, seed })
  if (scan.shards.length === 0 && scan.rows.total === 0) {
    throw new InputNotFoundError(outDir, `no committed output shard (no readable _evflow/commits/*.json)${scan.problems.length > 0 ? `: ${scan.problems[0]}` : ''}: is it the output folder of an evflow run?`)
  }
  const summary = await readJson<RunSummary>(layout.summary, 64 * 1024 * 1024)
  const series = await readSeries(outDir)
  const hashes = new Set(scan.shards.map((s) => s.record.configHash))
  const summaryMatches = summary !== null && hashes.has(summary.configHash)
  const config = summaryMatches ? summary.config : scan.config
  const pipeline = typeof (config as { pipeline?: unknown } | null)?.pipeline === 'string' ? ((config as { pipeline: string }).pipeline) : (series.files[0]?.header.pipeline ?? null)
  const read = ((config as { read?: { imageColumn?: unknown } } | null)?.read ?? {}) as { imageColumn?: unknown }
  const section = pipeline === null ? undefined : ((config as Record<string, unknown> | null)?.[pipeline] as { maxPixels?: unknown; maxBytes?: unknown } | undefined)

  const wanted = [...scan.gallery, ...scan.errors.flatMap((g) => g.examples)]
  const thumbs = await makeThumbnails(scan.shards, wanted, {
    ...options.thumbnails,
    ...(typeof read.imageColumn === 'string' ? { imageColumn: read.imageColumn } : {}),
    ...(typeof section?.maxPixels === 'number' ? { maxPixels: section.maxPixels } : {}),
    ...(typeof section?.maxBytes === 'number' ? { maxBytes: section.maxBytes } : {}),
  })

  let references: Map<string, ReferenceText> | null = null
  let evaluation: EvalReport | null = null
  const problems = [...scan.problems, ...series.skipped.map((s) => `series file ${s} not read`)]
  if (options.reference) {
    evaluation = await evaluateOutputs({ outDir, reference: options.reference, idColumn })
    const found = await referenceTexts(scan.gallery, options.reference, idColumn)
    references = found.texts
    problems.push(...found.problems)
  }

  const committed = new Set(scan.shards.map((s) => s.record.shard))
  const failedShards = summary?.failedShards.filter((f) => !committed.has(f.shard)) ?? []
  const html = renderReport({
    outDir,
    generatedAt: new Date().toISOString(),
    evflow: options.evflow ?? EVFLOW_VERSION,
    pipeline,
    model: await modelInfo(config, pipeline),
    config,
    configHash: summaryMatches ? summary.configHash : hashes.size === 1 ? [...hashes][0] : null,
    scan,
    thumbnails: thumbs.results,
    references,
    evaluation,
    timing: timingView(series.files, scan.shards, summaryMatches ? summary : null),
    summary: summaryMatches ? summary : null,
    failedShards,
    problems,
    sample,
    seed,
  })
  if (options.output === undefined && (await lstat(meta).catch(() => null))?.isSymbolicLink()) {
    throw new ShardWriteError(target, `${meta} is a symbolic link: not writing through it`)
  }
  await writeAtomic(target, html)
  const made = [...thumbs.results.values()].filter((r) => r.ok).length
  return {
    path: target,
    bytes: Buffer.byteLength(html),
    rows: scan.rows,
    gallery: scan.gallery.length,
    errorReasons: scan.errors.length,
    thumbnails: { made, missing: thumbs.results.size - made, bytes: thumbs.bytes },
    outputRowGroupsRead: scan.rowGroupsRead,
    inputRowGroupsRead: thumbs.inputRowGroupsRead,
    durationMs: Math.round(performance.now() - started),
  }
}
