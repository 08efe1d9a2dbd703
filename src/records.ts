/**
 * The records that flow through evflow pipelines. Every record keeps `key = {shard, rowGroup, row}` and a
 * reference to its shard's {@link ShardInfo}; operators add fields or map to a new record type that keeps
 * both. Records that fail become {@link ErrorRecord}s and flow around later stages to the sink, so that
 * every input row yields exactly one output row.
 */
import type { SchemaElement } from 'hyparquet'

import type { ImageDecodeReason } from './errors.js'

/** Where a row came from. `row` is the absolute, zero-based row index within the input file. */
export interface RowKey {
  /** The shard's output name (unique within a run). */
  readonly shard: string
  /** Row group index within the input file. */
  readonly rowGroup: number
  /** Absolute row index within the input file. */
  readonly row: number
}

/** A column of the input copied to the output unchanged. */
export interface KeptColumn {
  readonly name: string
  /** The input's schema element for a primitive column; absent for nested columns (written as JSON). */
  readonly element?: SchemaElement
}

/** One input shard (a file, or a row range of one), as seen by every record read from it. */
export interface ShardInfo {
  /** Absolute path of the input file. */
  readonly path: string
  /** Output name, sanitised and unique within the run: the output is `<outDir>/<name>.parquet`. */
  readonly name: string
  /** Position in the run's list of shards. */
  readonly index: number
  /** Selected rows: absolute `[rowStart, rowEnd)` within the file. */
  readonly rowStart: number
  readonly rowEnd: number
  /** `rowEnd - rowStart`: the number of output rows this shard must yield. */
  readonly rows: number
  /** Row groups overlapping the selection. */
  readonly rowGroups: number
  /** File size in bytes. */
  readonly fileBytes: number
  /** sha256 over the file size, the footer and the selected range: identifies the input content. */
  readonly fingerprint: string
  /** Image column used, if any. */
  readonly imageColumn?: string
  /** Id column used, if any. */
  readonly idColumn?: string
  /** Columns copied to the output. */
  readonly kept: readonly KeptColumn[]
}

interface RecordBase {
  readonly key: RowKey
  readonly source: ShardInfo
  /** Values of the kept columns, by name. */
  readonly kept: Readonly<Record<string, unknown>>
}

/**
 * A row read from a shard. `image` is null when the cell is null or the column is missing. For a
 * `list<binary>` image column (video clips), `frames` holds the encoded frames and `image` is null.
 */
export interface ImageRow extends RecordBase {
  readonly kind: 'image-row'
  readonly id: unknown
  readonly image: Uint8Array | null
  readonly frames?: readonly (Uint8Array | null)[] | null
  /** The `path` field of a Hugging Face `datasets` image struct, when present. */
  readonly imagePath: string | null
}

/** Facts about the encoded image, measured while decoding. */
export interface ImageInfo {
  readonly width: number
  readonly height: number
  /** sharp's format name: jpeg, png, webp, gif, tiff, avif, heif, svg, ... */
  readonly format: string
  /** Channels of the source (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA or CMYK). */
  readonly channels: number
  /** Bits per sample of the source (8 or 16). */
  readonly bitDepth: number
  /** Encoded size in bytes. */
  readonly bytes: number
  /** Hex sha256 of the encoded bytes. */
  readonly sha256: string
}

/** A decoded and resized image, or clip of `frames` images: uint8 RGB pixels, normalised later, per batch. */
export interface DecodedImage extends RecordBase {
  readonly kind: 'decoded-image'
  readonly id: unknown
  /** Facts about the image (for a clip: its first frame). */
  readonly info: ImageInfo
  /** Frames in `pixels`: 1 for an image. */
  readonly frames: number
  /**
   * The resized pixels, uint8 RGB, `[F, H, W, 3]` (HWC per frame). They are normalised once, straight into
   * a model's contiguous float32 `pixel_values [N, 3, H, W]` batch tensor, by `writePixelValues` (or
   * `pixelValues` for one record): a per-image float copy would cost more than the decode at 224 px.
   */
  readonly pixels: Uint8Array
  /** Per-channel mean and std that `pixelValues` applies: `(v / 255 - mean) / std`. */
  readonly mean: readonly [number, number, number]
  readonly std: readonly [number, number, number]
  readonly height: number
  readonly width: number
}

/** Stable, documented reasons for error rows (the output's `error_code`). */
export type ErrorCode = ImageDecodeReason | 'shard-read' | 'stage-failed' | 'missing-question' | 'question-out-of-vocabulary' | 'too-many-frames'

/** A row that failed. It passes around later stages and reaches the sink as an `error` row. */
export interface ErrorRecord extends RecordBase {
  readonly kind: 'error'
  readonly id: unknown
  readonly code: ErrorCode
  /** The operator that failed the row, e.g. `decodeImages`. */
  readonly stage: string
  readonly message: string
}

/**
 * A shard-level notice, emitted by `readShards` only for shards that yield no rows: an empty selection
 * (`error` absent: the sink commits an empty output shard) or an unreadable file (`error` set: nothing is
 * committed and the run reports the shard as failed).
 */
export interface ShardNotice {
  readonly kind: 'shard-notice'
  readonly source: ShardInfo
  readonly error?: { readonly name: string; readonly message: string }
}

/** Anything with a row key. */
export type KeyedRecord = RecordBase & { readonly kind: string; readonly id?: unknown }

/** Builds the error record for `record`, keeping its key, source, id and kept columns. */
export function toErrorRecord(
  record: KeyedRecord,
  stage: string,
  code: ErrorCode,
  message: string,
): ErrorRecord {
  return {
    kind: 'error',
    key: record.key,
    source: record.source,
    kept: record.kept,
    id: record.id,
    code,
    stage,
    message,
  }
}

export function isErrorRecord(value: unknown): value is ErrorRecord {
  return hasKind(value, 'error')
}

export function isShardNotice(value: unknown): value is ShardNotice {
  return hasKind(value, 'shard-notice')
}

/** Whether a value is a record of kind `kind` (batches from `batchRecords` are arrays: never a record). */
function hasKind(value: unknown, kind: string): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && (value as { kind?: unknown }).kind === kind
}

/** Approximate bytes a record holds (for the in-flight byte bound). */
export function recordBytes(record: { kind: string }): number {
  const r = record as { image?: Uint8Array | null; frames?: unknown; pixels?: Uint8Array }
  let bytes = 256
  if (r.image) bytes += r.image.byteLength
  if (Array.isArray(r.frames)) for (const frame of r.frames as (Uint8Array | null)[]) bytes += frame?.byteLength ?? 0
  if (r.pixels) bytes += r.pixels.byteLength
  return bytes
}

/** The element types of tensors (ONNX Runtime's names). */
export type TensorDtype = 'float32' | 'int64' | 'int32' | 'uint8' | 'bool'

export type TensorArray = Float32Array | BigInt64Array | Int32Array | Uint8Array

/**
 * A tensor as batch records carry it and as it crosses to and from inference threads: a dtype, dims and a
 * typed array holding exactly `dims` elements, row-major. Pure functions on tensors: `src/tensor/`.
 */
export interface TensorData {
  readonly dtype: TensorDtype
  readonly dims: readonly number[]
  readonly data: TensorArray
}

/**
 * A row inside a model batch: its key, source, id and kept columns, and its frame count (1 for an image).
 * The pixels are not kept: once the vision tower has run, only tensors flow on.
 */
export interface BatchRow extends RecordBase {
  readonly kind: 'batch-row'
  readonly id: unknown
  /** Frames of the row (1 for an image, F for a clip). */
  readonly frames: number
}

/** What every model batch record has: its rows, in batch order. */
export interface ModelBatch {
  readonly rows: readonly BatchRow[]
}

/**
 * `extractVitFeatures` → the hierarchical ViT features of a batch. Clips contribute one entry per frame
 * (frames flattened into N, in row order).
 */
export interface VitFeatures extends ModelBatch {
  readonly kind: 'vit-features'
  /** `taps [N, L, P, Dv]`: the outputs of the tapped ViT blocks, N = Σ rows' frames. */
  readonly taps: TensorData
}

/** `resampleTokens` (and `routeToExperts`, `refined` true) → the visual tokens of a batch. */
export interface VisualTokens extends ModelBatch {
  readonly kind: 'visual-tokens'
  /** `visual_tokens [N, L, Q, D]`, N = Σ rows' frames. */
  readonly visual_tokens: TensorData
  /** Whether the experts have refined them (`routeToExperts`). */
  readonly refined: boolean
}

/** `crossAttend` → the cross-attention memory of a batch, computed once per image or clip. */
export interface CrossMemory extends ModelBatch {
  readonly kind: 'cross-memory'
  /** `xattn_k [B, n_layer, H, M, dh]`, M = F·Q with F the batch's most frames. */
  readonly xattn_k: TensorData
  /** `xattn_v [B, n_layer, H, M, dh]` */
  readonly xattn_v: TensorData
  /** `xattn_mask [B, M]`: 0 attend, -1e9 for padding frames. */
  readonly xattn_mask: TensorData
}

/** One generated text of a row: the prompt (a question, or null for a caption) and the answer. */
export interface Generation {
  readonly prompt: string | null
  readonly text: string
  /** Generated token ids (end token excluded). */
  readonly tokens: readonly number[]
  /** `eos`: the model ended the text (the output's `finish_reason` `stop`); `length`: the token limit cut it. */
  readonly finish: 'eos' | 'length'
  /** Log-probability of each token chosen, the end token included when the model ended it (see `GeneratedSequence`). */
  readonly logprobs: readonly number[]
}

/** `decodeText` → a row's generated texts: one caption, or one answer per question. */
export interface GeneratedText extends RecordBase {
  readonly kind: 'generated-text'
  readonly id: unknown
  readonly generations: readonly Generation[]
}

/** A caption is a generated text with the caption prompt. */
export type Caption = GeneratedText

/** `poolEmbeddings` → a row's embedding: its refined visual tokens averaged, L2-normalised. */
export interface Embedding extends RecordBase {
  readonly kind: 'embedding'
  readonly id: unknown
  /** `[D]` */
  readonly embedding: Float32Array
}

export function isDecodedImage(value: unknown): value is DecodedImage {
  return hasKind(value, 'decoded-image')
}

export function isVitFeatures(value: unknown): value is VitFeatures {
  return hasKind(value, 'vit-features')
}

export function isVisualTokens(value: unknown): value is VisualTokens {
  return hasKind(value, 'visual-tokens')
}

export function isCrossMemory(value: unknown): value is CrossMemory {
  return hasKind(value, 'cross-memory')
}

/** The batch row of a decoded image (its pixels dropped). */
export function batchRow(record: DecodedImage): BatchRow {
  return { kind: 'batch-row', key: record.key, source: record.source, kept: record.kept, id: record.id, frames: record.frames }
}
