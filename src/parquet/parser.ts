/**
 * Parsing untrusted Parquet bytes: footers, page headers and pages. This module runs only in parser
 * processes (`parser-process.ts`, managed by {@link ParquetReader}), never in the evflow process: the reader
 * gives each task a time budget and kills a parser that overruns it, caps the parser's V8 heap and watches
 * its resident memory, and sizes the file claims are checked here against the bytes present before
 * anything is allocated from them (ArrayBuffers are outside the heap cap).
 *
 * A parser opens the files it is told about by path, read-only, and keeps a few open (keyed by the
 * reader's file id) until told to forget them; killing a parser closes them.
 *
 * How a row group's row count is established (the number of output rows it gives) is documented at
 * {@link establishRows} and in docs/reliability.md.
 */
import { createHash } from 'node:crypto'
import { closeSync, fstatSync, openSync, readSync } from 'node:fs'
import { parquetMetadata, parquetReadObjects, parquetSchema, type AsyncBuffer, type ColumnChunk, type Compressors, type FileMetaData, type RowGroup, type SchemaTree } from 'hyparquet'
import { parquetHeader } from 'hyparquet/src/column.js'

import { keptFields, summarizeColumns, type ColumnSummary, type ImageColumnLayout, type TopLevelField } from './schema.js'

/** A file a task reads: the reader's id for this open of it, and its path. */
export interface FileRef {
  /** Unique per open within one reader: the key of the parser's open-file cache. */
  readonly fileId: number
  readonly path: string
}

/** Parse the footer and establish every row group's row count. */
export interface InspectTask {
  readonly kind: 'inspect'
  readonly file: FileRef
  /** Also return the parsed footer (for `inspect`, `submit`, `eval`). */
  readonly withMetadata: boolean
  /** Testing only: spin this long (ms) first, as a parser stuck in a loop would. */
  readonly debugSpinMs?: number
}

/** Decode the rows `[start, end)` (relative to the row group) of some top-level columns of one row group. */
export interface ReadTask {
  readonly kind: 'read'
  readonly file: FileRef
  /** The footer hash the run was planned with: the file must not have changed since. */
  readonly footerHash: string
  readonly rowGroup: number
  /** The row group's established row count. */
  readonly rows: number
  readonly start: number
  readonly end: number
  readonly columns: readonly string[]
  /** The image column and its layout: its bytes come back as page buffers and offsets, not one array per value. */
  readonly image?: { readonly column: string; readonly layout: ImageColumnLayout; readonly alsoAsValues?: boolean }
  /** Most bytes the row group's selected column chunks may claim (compressed + uncompressed). */
  readonly maxBytes: number
  /** Testing only: spin this long (ms) before decoding, as a parser stuck in a loop would. */
  readonly debugSpinMs?: number
}

export type ReaderTask = InspectTask | ReadTask

/** What a row group holds, as established from its page headers (see {@link establishRows}). */
export interface RowGroupFacts {
  /** Rows the row group holds: the number of output rows it gives. */
  readonly rows: number
  /** The footer's `num_rows` for the group (may differ from `rows` when the footer lies). */
  readonly claimed: number
  /** Why the row group as a whole cannot be trusted (all its rows become `shard-read` error rows). */
  readonly problem?: string
  /** Top-level columns whose chunk in this row group is damaged, and why (rows read with them are error rows). */
  readonly columns?: Readonly<Record<string, string>>
}

export interface FileFacts {
  readonly byteLength: number
  /** sha256 of the file size and the footer bytes (the shard fingerprint's base). */
  readonly footerHash: string
  readonly columns: readonly ColumnSummary[]
  readonly fields: readonly TopLevelField[]
  readonly rowGroups: readonly RowGroupFacts[]
  readonly createdBy: string | null
  readonly metadata?: FileMetaData
}

/**
 * Binary values of one column: views into `buffers`, described by parallel typed arrays (`-1`: null). The
 * page buffers cross to the evflow process once each, never once per value.
 */
export interface BinaryBlock {
  readonly buffers: ArrayBuffer[]
  readonly buffer: Int32Array
  readonly offset: Float64Array
  readonly length: Float64Array
}

/** The decoded image column, by layout. */
export type ImageBlock =
  | { readonly layout: 'binary'; readonly bytes: BinaryBlock }
  | { readonly layout: 'hf-struct'; readonly bytes: BinaryBlock; readonly paths: readonly unknown[] }
  | { readonly layout: 'frames'; readonly frames: BinaryBlock; readonly counts: Int32Array }

export interface RowBlock {
  readonly rows: number
  /** Values of the non-image columns, one array per column. */
  readonly values: Readonly<Record<string, readonly unknown[]>>
  readonly image?: ImageBlock
}

/** A failure a parser reports as data (the task itself succeeds). */
export interface ReaderFailure {
  readonly failed: true
  readonly message: string
  /** Set when the failure concerns one row group. */
  readonly rowGroup?: number
}

/** Largest page header we parse (page statistics can be large, never this large). */
const MAX_HEADER_BYTES = 16 * 1024 * 1024
/** First read when scanning page headers; grown when a header does not fit. */
const HEADER_WINDOW = 64 * 1024

const KNOWN_CODECS = new Set(['UNCOMPRESSED', 'SNAPPY', 'GZIP', 'BROTLI', 'LZ4', 'ZSTD', 'LZ4_RAW'])
const DATA_ENCODINGS = new Set(['PLAIN', 'PLAIN_DICTIONARY', 'RLE', 'BIT_PACKED', 'DELTA_BINARY_PACKED', 'DELTA_LENGTH_BYTE_ARRAY', 'DELTA_BYTE_ARRAY', 'RLE_DICTIONARY', 'BYTE_STREAM_SPLIT'])

let loadedCompressors: Compressors | undefined

/**
 * The decompressors (loaded on first use: inspecting footers needs none), with ZSTD given an output buffer
 * of the size the page header claims (already checked against the memory budget): without one, fzstd
 * allocates whatever the frame header says, up to 2 GB.
 */
export async function compressors(): Promise<Compressors> {
  if (!loadedCompressors) {
    const { compressors: defaults, decompressZstd } = await import('hyparquet-compressors')
    loadedCompressors = { ...defaults, ZSTD: (input: Uint8Array, length: number) => decompressZstd(input, new Uint8Array(length)) }
  }
  return loadedCompressors
}

class ParseError extends Error {}


interface OpenFile {
  readonly fd: number
  readonly byteLength: number
  footer?: ParsedFooter
}

/** Files open in this parser, by file id, least recently used first. */
const files = new Map<number, OpenFile>()
/** Files kept open at most (a shard is read by one lane at a time; a few lanes share a parser). */
const OPEN_FILES = 8

/** The open file for `file`, opened (read-only) on first use. */
function openFile(file: FileRef): OpenFile {
  let open = files.get(file.fileId)
  if (open) {
    files.delete(file.fileId)
    files.set(file.fileId, open)
    return open
  }
  let fd: number
  try {
    fd = openSync(file.path, 'r')
  } catch (cause) {
    throw new ParseError(`cannot open: ${describe(cause)}`)
  }
  open = { fd, byteLength: fstatSync(fd).size }
  files.set(file.fileId, open)
  while (files.size > OPEN_FILES) forget(files.keys().next().value!)
  return open
}

/** Closes a file this parser holds open (the reader is done with it). */
export function forget(fileId: number): void {
  const open = files.get(fileId)
  if (!open) return
  files.delete(fileId)
  try {
    closeSync(open.fd)
  } catch {
    // already closed
  }
}

/** Reads exactly `length` bytes at `position`, or throws. */
function readBytes(file: OpenFile, position: number, length: number): Uint8Array {
  if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0 || position + length > file.byteLength) {
    throw new ParseError(`read out of bounds [${position}, ${position + length}) of a ${file.byteLength}-byte file`)
  }
  const out = new Uint8Array(length)
  let done = 0
  while (done < length) {
    const n = readSync(file.fd, out, done, length - done, position + done)
    if (n === 0) throw new ParseError(`unexpected end of file at byte ${position + done} (the file shrank?)`)
    done += n
  }
  return out
}

interface Leaf {
  readonly path: readonly string[]
  /** Largest repetition level: 0 for a flat column (one value per row). */
  readonly maxRepetition: number
}

interface ParsedFooter {
  readonly metadata: FileMetaData
  readonly footerHash: string
  /** First byte of the footer: column chunks must end before it. */
  readonly footerStart: number
  readonly tree: SchemaTree
  readonly leaves: readonly Leaf[]
}

function leavesOf(tree: SchemaTree): Leaf[] {
  const leaves: Leaf[] = []
  const walk = (node: SchemaTree, path: string[], repetition: number) => {
    for (const child of node.children) {
      const rep = repetition + (child.element.repetition_type === 'REPEATED' ? 1 : 0)
      const childPath = [...path, child.element.name]
      if (child.children.length === 0) leaves.push({ path: childPath, maxRepetition: rep })
      else walk(child, childPath, rep)
    }
  }
  walk(tree, [], 0)
  return leaves
}

function parseFooter(file: OpenFile): ParsedFooter {
  const size = file.byteLength
  if (size < 12) throw new ParseError(`not a Parquet file (${size} bytes)`)
  const tail = readBytes(file, size - 8, 8)
  const magic = String.fromCharCode(...tail.subarray(4))
  if (magic !== 'PAR1') {
    throw new ParseError(magic === 'PARE' ? 'encrypted Parquet files are not supported' : 'not a Parquet file (no PAR1 footer magic)')
  }
  const head = readBytes(file, 0, 4)
  if (String.fromCharCode(...head) !== 'PAR1') throw new ParseError('not a Parquet file (no PAR1 magic at the start)')
  const footerLength = new DataView(tail.buffer).getUint32(0, true)
  if (footerLength + 8 > size - 4) throw new ParseError(`footer length ${footerLength} exceeds the file size ${size}`)
  const footer = readBytes(file, size - 8 - footerLength, footerLength + 8)
  const footerHash = createHash('sha256').update(String(size)).update(footer).digest('hex')
  let metadata: FileMetaData
  try {
    metadata = parquetMetadata(footer)
  } catch (cause) {
    throw new ParseError(`invalid footer: ${describe(cause)}`)
  }
  if (!Array.isArray(metadata.schema) || metadata.schema.length === 0) throw new ParseError('invalid footer: no schema')
  if (!Array.isArray(metadata.row_groups)) throw new ParseError('invalid footer: no row group list')
  let tree: SchemaTree
  try {
    tree = parquetSchema(metadata)
  } catch (cause) {
    throw new ParseError(`invalid schema: ${describe(cause)}`)
  }
  if (tree.count !== metadata.schema.length) {
    throw new ParseError(`invalid schema: its tree covers ${tree.count} of ${metadata.schema.length} elements`)
  }
  for (const element of metadata.schema) {
    if (typeof element?.name !== 'string') throw new ParseError('invalid schema: an element has no name')
  }
  return { metadata, footerHash, footerStart: size - 8 - footerLength, tree, leaves: leavesOf(tree) }
}

/** A column chunk's byte range `[start, end)`, as hyparquet reads it. */
function chunkRange(chunk: ColumnChunk): { start: number; end: number } | undefined {
  const meta = chunk.meta_data
  if (!meta) return undefined
  const offset = meta.dictionary_page_offset || meta.data_page_offset
  if (typeof offset !== 'bigint' || typeof meta.total_compressed_size !== 'bigint') return undefined
  const start = Number(offset)
  const end = Number(offset + meta.total_compressed_size)
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end)) return undefined
  return { start, end }
}

interface ChunkCheck {
  readonly leaf: Leaf
  readonly chunk: ColumnChunk
  readonly range?: { start: number; end: number }
  /** Why the chunk cannot be used (bad metadata or byte range). */
  readonly problem?: string
}

/** Checks a row group's column chunks against the schema and the file's size (no bytes read). */
function checkChunks(footer: ParsedFooter, group: RowGroup): { chunks: ChunkCheck[]; problem?: string } {
  const { leaves } = footer
  const columns = Array.isArray(group.columns) ? group.columns : []
  const problem = columns.length === leaves.length ? undefined : `it has ${columns.length} column chunks, the schema ${leaves.length} columns`
  const chunks = leaves.map((leaf, i): ChunkCheck => {
    const chunk = columns[i]
    const meta = chunk?.meta_data
    const name = leaf.path.join('.')
    if (!meta) return { leaf, chunk, problem: `column ${name} has no chunk metadata` }
    if (chunk.file_path) return { leaf, chunk, problem: `column ${name} is in another file (${String(chunk.file_path)}), which is not supported` }
    if (!Array.isArray(meta.path_in_schema) || meta.path_in_schema.join('.') !== name) {
      return { leaf, chunk, problem: `chunk ${i} is for column ${Array.isArray(meta.path_in_schema) ? meta.path_in_schema.join('.') : '?'}, the schema says ${name}` }
    }
    if (!KNOWN_CODECS.has(meta.codec)) return { leaf, chunk, problem: `column ${name} has an unsupported codec ${String(meta.codec)}` }
    if (typeof meta.num_values !== 'bigint' || meta.num_values < 0n) return { leaf, chunk, problem: `column ${name} has an invalid value count` }
    const range = chunkRange(chunk)
    if (!range) return { leaf, chunk, problem: `column ${name} has no valid byte range` }
    if (range.start < 4 || range.end > footer.footerStart || range.end < range.start) {
      return { leaf, chunk, problem: `column ${name}'s bytes [${range.start}, ${range.end}) lie outside the file's data [4, ${footer.footerStart})` }
    }
    return { leaf, chunk, range }
  })
  return problem === undefined ? { chunks } : { chunks, problem }
}

/** What the page headers of one column chunk say. */
interface ChunkPages {
  /** Sum of the data pages' value counts (levels, nulls included). */
  readonly values: number
  /** Sum of the data pages' row counts when every data page is a v2 page (which records it). */
  readonly v2Rows?: number
  /** Values of the dictionary page, if any. */
  readonly dictionaryValues: number
  /** Sum of the pages' uncompressed sizes (what decompressing allocates). */
  readonly uncompressed: number
  readonly pages: number
}

/**
 * Walks the page headers of a column chunk. The pages must tile the chunk's byte range exactly, and every
 * header must hold the fields the format requires, with sane values; otherwise throws `ParseError`.
 * Reads only the headers (windowed), never the page data.
 */
function walkPages(file: OpenFile, start: number, end: number): ChunkPages {
  let window: Uint8Array = new Uint8Array(0)
  let windowStart = start
  let offset = start
  let values = 0
  let dictionaryValues = 0
  let v2Rows: number | undefined = 0
  let uncompressed = 0
  let pages = 0
  let dataPages = 0
  while (offset < end) {
    let header: ReturnType<typeof parquetHeader>
    let headerLength: number
    if (offset < windowStart || offset >= windowStart + window.length) {
      window = readBytes(file, offset, Math.min(HEADER_WINDOW, end - offset))
      windowStart = offset
    }
    for (;;) {
      const available = window.length - (offset - windowStart)
      const reader = { view: new DataView(window.buffer, window.byteOffset + (offset - windowStart), available), offset: 0 }
      try {
        header = parquetHeader(reader)
        headerLength = reader.offset
        break
      } catch (cause) {
        // The header may only be cut by the window's end: read more, up to the chunk's end.
        if (windowStart + window.length >= end || available >= MAX_HEADER_BYTES) {
          throw new ParseError(`page ${pages} at byte ${offset}: unreadable header (${describe(cause)})`)
        }
        window = readBytes(file, offset, Math.min(Math.max(HEADER_WINDOW, available * 4), MAX_HEADER_BYTES, end - offset))
        windowStart = offset
      }
    }
    const at = `page ${pages} at byte ${offset}`
    const compressed = header.compressed_page_size
    const size = header.uncompressed_page_size
    if (!isCount(compressed) || !isCount(size)) throw new ParseError(`${at}: invalid page sizes`)
    const next = offset + headerLength + compressed
    if (next > end) throw new ParseError(`${at}: the page runs ${next - end} bytes past the end of its column chunk`)
    switch (header.type) {
      case 'DICTIONARY_PAGE': {
        const dict = header.dictionary_page_header
        if (pages !== 0) throw new ParseError(`${at}: a dictionary page after the first page`)
        if (!dict || !isCount(dict.num_values)) throw new ParseError(`${at}: invalid dictionary page header`)
        dictionaryValues = dict.num_values
        break
      }
      case 'DATA_PAGE': {
        const data = header.data_page_header
        if (!data || !isCount(data.num_values) || !DATA_ENCODINGS.has(data.encoding)) throw new ParseError(`${at}: invalid data page header`)
        values += data.num_values
        v2Rows = undefined
        dataPages += 1
        break
      }
      case 'DATA_PAGE_V2': {
        const v2 = header.data_page_header_v2
        if (
          !v2 ||
          !isCount(v2.num_values) ||
          !isCount(v2.num_nulls) ||
          !isCount(v2.num_rows) ||
          !isCount(v2.definition_levels_byte_length) ||
          !isCount(v2.repetition_levels_byte_length) ||
          !DATA_ENCODINGS.has(v2.encoding) ||
          v2.num_nulls > v2.num_values ||
          v2.num_rows > v2.num_values ||
          v2.definition_levels_byte_length + v2.repetition_levels_byte_length > compressed ||
          v2.definition_levels_byte_length + v2.repetition_levels_byte_length > size
        ) {
          throw new ParseError(`${at}: invalid data page v2 header`)
        }
        values += v2.num_values
        if (v2Rows !== undefined) v2Rows += v2.num_rows
        dataPages += 1
        break
      }
      case 'INDEX_PAGE':
        break
      default:
        throw new ParseError(`${at}: unknown page type`)
    }
    uncompressed += size
    pages += 1
    offset = next
  }
  return { values, dictionaryValues, uncompressed, pages, ...(v2Rows === undefined || dataPages === 0 ? {} : { v2Rows }) }
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0
}

/**
 * Establishes how many rows a row group holds, from its page headers rather than from the footer's
 * `num_rows` (which a damaged or hostile footer can set to anything):
 *
 * 1. A flat column chunk (one value per row: no repeated ancestor) whose page headers are sound (they tile
 *    the chunk exactly, required fields present, sane values) holds as many rows as its data pages hold
 *    values. The smallest flat chunk is walked first; when it agrees with `num_rows` and its own metadata,
 *    that settles it (the common case: one small read per row group).
 * 2. Otherwise every flat chunk is walked and votes; the count most of them agree on wins (ties: the
 *    footer's `num_rows` if it is among them, else the smallest). Chunks that disagree are damaged columns.
 * 3. With no sound flat chunk, repeated chunks vote with their v2 pages' row counts. With v1 pages only,
 *    rows cannot be counted from headers; `num_rows` is taken when it is at most the values every such
 *    chunk holds (each row holds at least one value in every column), else the shard fails.
 * 4. With no sound chunk at all, `num_rows` is taken when the footer's value counts allow it and it is at
 *    most 8 rows per byte of the row group's chunks (the row group is then damaged: its rows are counted,
 *    not read); else the shard fails.
 *
 * The row group is damaged (every row an error row) when the count differs from `num_rows` or nothing
 * confirms it; a column is damaged in it (rows read with it are error rows) when its chunk's metadata, byte
 * range, page headers or counts are bad.
 */
function establishRows(file: OpenFile, footer: ParsedFooter, index: number): RowGroupFacts {
  const group = footer.metadata.row_groups[index]
  if (!group || typeof group !== 'object') throw new ParseError(`row group ${index}: missing`)
  const claimedBig = group.num_rows
  if (typeof claimedBig !== 'bigint' || claimedBig < 0n || claimedBig > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ParseError(`row group ${index}: invalid row count ${String(claimedBig)}`)
  }
  const claimed = Number(claimedBig)
  const { chunks, problem: layoutProblem } = checkChunks(footer, group)
  const groupProblems: string[] = layoutProblem ? [layoutProblem] : []
  const columnProblems: Record<string, string> = {}
  const damage = (c: ChunkCheck, problem: string) => {
    columnProblems[c.leaf.path[0]] ??= problem
  }
  for (const c of chunks) if (c.problem) damage(c, c.problem)

  const sound = chunks.filter((c) => c.range && !c.problem)
  const flat = sound.filter((c) => c.leaf.maxRepetition === 0).sort((a, b) => a.range!.end - a.range!.start - (b.range!.end - b.range!.start))
  const walked = new Map<ChunkCheck, ChunkPages | string>()
  const walk = (c: ChunkCheck): ChunkPages | string => {
    let result = walked.get(c)
    if (result === undefined) {
      try {
        result = walkPages(file, c.range!.start, c.range!.end)
      } catch (error) {
        if (!(error instanceof ParseError)) throw error
        result = `column ${c.leaf.path.join('.')}: ${error.message}`
      }
      walked.set(c, result)
    }
    return result
  }

  // 1. The cheap path.
  if (flat.length > 0 && chunks.every((c) => !c.problem) && !layoutProblem) {
    const first = walk(flat[0])
    if (typeof first !== 'string' && first.values === claimed && Number(flat[0].chunk.meta_data!.num_values) === claimed) {
      return { rows: claimed, claimed }
    }
  }

  // 2. Every flat chunk votes.
  const votes: { c: ChunkCheck; n: number }[] = []
  for (const c of flat) {
    const pages = walk(c)
    if (typeof pages === 'string') damage(c, pages)
    else votes.push({ c, n: pages.values })
  }
  let rows = winner(votes.map((v) => v.n), claimed)
  let confirmed = rows !== undefined
  if (rows === undefined) {
    // 3. Repeated chunks.
    const v2Votes: { c: ChunkCheck; n: number }[] = []
    let most = Number.POSITIVE_INFINITY
    let any = false
    for (const c of sound.filter((c) => c.leaf.maxRepetition > 0)) {
      const pages = walk(c)
      if (typeof pages === 'string') {
        damage(c, pages)
        continue
      }
      any = true
      most = Math.min(most, pages.values)
      if (pages.v2Rows !== undefined) v2Votes.push({ c, n: pages.v2Rows })
    }
    rows = winner(v2Votes.map((v) => v.n), claimed)
    if (rows !== undefined) {
      confirmed = true
      votes.push(...v2Votes)
    } else if (any) {
      if (claimed > most) {
        throw new ParseError(`row group ${index}: the footer claims ${claimed} rows, its pages hold at most ${most} values: its row count cannot be established`)
      }
      rows = claimed
      confirmed = true
    }
  }
  if (rows === undefined) {
    // 4. No page evidence: the footer, if nothing contradicts it.
    const bytes = chunks.reduce((n, c) => n + (c.range && !c.problem ? c.range.end - c.range.start : 0), 0)
    const counts = chunks.filter((c) => typeof c.chunk?.meta_data?.num_values === 'bigint').map((c) => Number(c.chunk.meta_data!.num_values))
    if (claimed > Math.min(...counts, Number.MAX_SAFE_INTEGER) || claimed > bytes * 8) {
      throw new ParseError(`row group ${index}: the footer claims ${claimed} rows and no readable page header confirms it (${Object.values(columnProblems)[0] ?? groupProblems[0] ?? 'no column chunk'})`)
    }
    rows = claimed
  }
  for (const v of votes) if (v.n !== rows) damage(v.c, `column ${v.c.leaf.path.join('.')}: its pages hold ${v.n} rows, the other columns ${rows}`)
  for (const c of sound) {
    if (c.leaf.maxRepetition > 0 || columnProblems[c.leaf.path[0]] !== undefined) continue
    const values = Number(c.chunk.meta_data!.num_values)
    if (values !== rows) damage(c, `column ${c.leaf.path.join('.')}: its metadata claims ${values} values for ${rows} rows`)
  }
  if (!confirmed) groupProblems.unshift(`no readable page header confirms its ${claimed} rows`)
  else if (rows !== claimed) groupProblems.unshift(`the footer claims ${claimed} rows, its pages hold ${rows}`)
  const facts: RowGroupFacts = { rows, claimed }
  return {
    ...facts,
    ...(groupProblems.length === 0 ? {} : { problem: `damaged: ${groupProblems.join('; ')}` }),
    ...(Object.keys(columnProblems).length === 0 ? {} : { columns: columnProblems }),
  }
}

/** The value most votes agree on; ties go to `preferred` if it is among them, else to the smallest. */
function winner(votes: readonly number[], preferred: number): number | undefined {
  if (votes.length === 0) return undefined
  const counts = new Map<number, number>()
  for (const v of votes) counts.set(v, (counts.get(v) ?? 0) + 1)
  const best = Math.max(...counts.values())
  const tied = [...counts.entries()].filter(([, n]) => n === best).map(([v]) => v)
  if (tied.includes(preferred)) return preferred
  return Math.min(...tied)
}

// ---------------------------------------------------------------------------------------------------------
// Tasks

/** The file's footer, parsed once per open; with `expectedHash`, the file must not have changed since. */
function footerOf(file: OpenFile, expectedHash?: string): ParsedFooter {
  file.footer ??= parseFooter(file)
  if (expectedHash !== undefined && file.footer.footerHash !== expectedHash) {
    throw new ParseError('the file changed since it was planned (its footer differs)')
  }
  return file.footer
}

/** Testing only: a parser stuck in a loop. */
function spin(ms: number | undefined): void {
  if (!ms) return
  const until = Date.now() + ms
  while (Date.now() < until) {
    // spinning
  }
}

function inspect(task: InspectTask): FileFacts | ReaderFailure {
  let footer: ParsedFooter
  let file: OpenFile
  try {
    spin(task.debugSpinMs)
    file = openFile(task.file)
    footer = footerOf(file)
  } catch (error) {
    return failure(error)
  }
  try {
    const rowGroups = footer.metadata.row_groups.map((_, i) => establishRows(file, footer, i))
    let total = 0
    for (const g of rowGroups) total += g.rows
    if (!Number.isSafeInteger(total)) throw new ParseError('row count too large')
    const facts: FileFacts = {
      byteLength: file.byteLength,
      footerHash: footer.footerHash,
      columns: summarizeColumns(footer.metadata),
      fields: keptFields(footer.tree),
      rowGroups,
      createdBy: typeof footer.metadata.created_by === 'string' ? footer.metadata.created_by : null,
      ...(task.withMetadata ? { metadata: footer.metadata } : {}),
    }
    return facts
  } catch (error) {
    return failure(error)
  }
}

async function read(task: ReadTask): Promise<RowBlock | ReaderFailure> {
  try {
    spin(task.debugSpinMs)
    const file = openFile(task.file)
    const footer = footerOf(file, task.footerHash)
    const group = footer.metadata.row_groups[task.rowGroup]
    if (!group) throw new ParseError('no such row group')
    if (Number(group.num_rows) !== task.rows) throw new ParseError(`the footer claims ${String(group.num_rows)} rows, the plan ${task.rows}`)
    const wanted = new Set(task.columns)
    const { chunks } = checkChunks(footer, group)
    let bytes = 0
    for (const c of chunks) {
      if (!wanted.has(c.leaf.path[0])) continue
      if (c.problem || !c.range) throw new ParseError(c.problem ?? 'invalid column chunk')
      const pages = walkPages(file, c.range.start, c.range.end)
      const name = c.leaf.path.join('.')
      if (c.leaf.maxRepetition === 0 && pages.values !== task.rows) throw new ParseError(`column ${name}'s pages hold ${pages.values} values for ${task.rows} rows`)
      if (c.leaf.maxRepetition > 0 && (pages.values < task.rows || (pages.v2Rows !== undefined && pages.v2Rows !== task.rows))) {
        throw new ParseError(`column ${name}'s pages hold ${pages.v2Rows ?? pages.values} rows for ${task.rows}`)
      }
      // The chunk, its decompressed pages, and up to 8 bytes per value decoded (typed arrays are off the heap).
      bytes += c.range.end - c.range.start + pages.uncompressed + 8 * (pages.values + pages.dictionaryValues)
    }
    if (bytes > task.maxBytes) {
      throw new ParseError(`memory: decoding needs about ${mib(bytes)} MiB, more than the read memory budget of ${mib(task.maxBytes)} MiB (raise --read-memory)`)
    }
    const rows = (await parquetReadObjects({
      file: fileBuffer(file),
      metadata: { ...footer.metadata, row_groups: [group] },
      columns: [...task.columns],
      rowStart: task.start,
      rowEnd: task.end,
      utf8: false,
      compressors: await compressors(),
    })) as Record<string, unknown>[]
    if (rows.length !== task.end - task.start) throw new ParseError(`expected ${task.end - task.start} rows, decoded ${rows.length}`)
    return pack(rows, task)
  } catch (error) {
    return failure(error, task.rowGroup)
  }
}

/** An AsyncBuffer over the open file (reads are synchronous: a parser does nothing else meanwhile). */
function fileBuffer(file: OpenFile): AsyncBuffer {
  return {
    byteLength: file.byteLength,
    slice(start: number, end?: number): ArrayBuffer {
      const stop = end ?? file.byteLength
      const bytes = readBytes(file, start, stop - start)
      return bytes.buffer as ArrayBuffer
    },
  }
}

function pack(rows: readonly Record<string, unknown>[], task: ReadTask): RowBlock {
  const values: Record<string, unknown[]> = {}
  for (const column of task.columns) {
    if (task.image && column === task.image.column && !task.image.alsoAsValues) continue
    values[column] = rows.map((r) => r[column] ?? null)
  }
  if (!task.image) return { rows: rows.length, values }
  const column = task.image.column
  switch (task.image.layout) {
    case 'binary':
      return { rows: rows.length, values, image: { layout: 'binary', bytes: binaryBlock(rows.map((r) => r[column])) } }
    case 'hf-struct': {
      const cells = rows.map((r) => r[column] as { bytes?: unknown; path?: unknown } | null | undefined)
      return {
        rows: rows.length,
        values,
        image: { layout: 'hf-struct', bytes: binaryBlock(cells.map((c) => c?.bytes)), paths: cells.map((c) => c?.path ?? null) },
      }
    }
    case 'frames': {
      const counts = new Int32Array(rows.length)
      const frames: unknown[] = []
      rows.forEach((r, i) => {
        const cell = r[column]
        if (!Array.isArray(cell)) {
          counts[i] = -1
          return
        }
        counts[i] = cell.length
        for (const f of cell) frames.push(f)
      })
      return { rows: rows.length, values, image: { layout: 'frames', frames: binaryBlock(frames), counts } }
    }
  }
}

/** Describes Uint8Array values as views into their page buffers: no copy here, no per-value clone. */
function binaryBlock(cells: readonly unknown[]): BinaryBlock {
  const buffers: ArrayBuffer[] = []
  const index = new Map<ArrayBufferLike, number>()
  const buffer = new Int32Array(cells.length)
  const offset = new Float64Array(cells.length)
  const length = new Float64Array(cells.length)
  cells.forEach((cell, i) => {
    if (!(cell instanceof Uint8Array)) {
      buffer[i] = -1
      return
    }
    let at = index.get(cell.buffer)
    if (at === undefined) {
      at = buffers.length
      buffers.push(cell.buffer as ArrayBuffer)
      index.set(cell.buffer, at)
    }
    buffer[i] = at
    offset[i] = cell.byteOffset
    length[i] = cell.byteLength
  })
  return { buffers, buffer, offset, length }
}

function failure(error: unknown, rowGroup?: number): ReaderFailure {
  const message = error instanceof ParseError ? error.message : describe(error)
  return rowGroup === undefined ? { failed: true, message } : { failed: true, message, rowGroup }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

function mib(bytes: number): number {
  return Math.round((bytes / 1024 / 1024) * 10) / 10
}

/** Runs one task. Failures a file causes are returned as `ReaderFailure`, never thrown. */
export async function runTask(task: ReaderTask): Promise<FileFacts | RowBlock | ReaderFailure> {
  if (task.kind === 'inspect') return inspect(task)
  return read(task)
}
