/**
 * Damaged and hostile Parquet files for the reliability tests, each made from a fixture or a freshly
 * written shard by a documented, deterministic edit: footer edits (decode the footer's Thrift into its raw
 * `field_N` form, change fields, encode it again), page-data edits and a seeded fuzz corpus.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parquetHeader } from 'hyparquet/src/column.js'
import { deserializeTCompactProtocol } from 'hyparquet/src/thrift.js'
import { parquetWriteBuffer } from 'hyparquet-writer'
import { ByteWriter } from 'hyparquet-writer/src/bytewriter.js'
import { serializeTCompactProtocol } from 'hyparquet-writer/src/thrift.js'

import { seededRandom } from '../../app/report/sample.js'
import { ROOT } from '../helpers/cli.js'

export const FIXTURE_SHARDS = join(ROOT, 'fixtures', 'shards')

export function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(join(FIXTURE_SHARDS, name)))
}

/** The issue-17 repro: part-00002 with byte 3057 (inside row group 1's `id` page header) set to 0xd4. */
export function byte3057(): Uint8Array {
  const bytes = fixture('part-00002.parquet').slice()
  bytes[3057] = 0xd4
  return bytes
}

// Raw Thrift: `{ field_1: ..., field_2: ... }` as hyparquet decodes it; the writer encodes the same shape.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type RawStruct = Record<string, any>

/** The footer's raw Thrift struct (FileMetaData: field_2 schema, field_3 num_rows, field_4 row groups). */
export function rawFooter(file: Uint8Array): RawStruct {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength)
  const length = view.getUint32(file.byteLength - 8, true)
  const reader = { view, offset: file.byteLength - 8 - length }
  return deserializeTCompactProtocol(reader)
}

/** The file with its footer replaced by `footer` (encoded again), data bytes unchanged. */
export function withFooter(file: Uint8Array, footer: RawStruct): Uint8Array {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength)
  const length = view.getUint32(file.byteLength - 8, true)
  const data = file.subarray(0, file.byteLength - 8 - length)
  const writer = new ByteWriter()
  serializeTCompactProtocol(writer, sortedFields(footer) as RawStruct)
  const encoded = new Uint8Array(writer.getBuffer())
  const out = new Uint8Array(data.byteLength + encoded.byteLength + 8)
  out.set(data, 0)
  out.set(encoded, data.byteLength)
  new DataView(out.buffer).setUint32(data.byteLength + encoded.byteLength, encoded.byteLength, true)
  out.set([0x50, 0x41, 0x52, 0x31], out.byteLength - 4)
  return out
}

/** The struct with its fields in ascending id order at every level (the encoder requires it). */
function sortedFields(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortedFields)
  if (value === null || typeof value !== 'object' || value instanceof Uint8Array) return value
  const entries = Object.entries(value as RawStruct).filter(([, v]) => v !== undefined)
  entries.sort(([a], [b]) => Number(a.slice(6)) - Number(b.slice(6)))
  return Object.fromEntries(entries.map(([k, v]) => [k, sortedFields(v)]))
}

/** `file` with the footer edited by `edit` (which mutates the raw struct in place). */
export function editFooter(file: Uint8Array, edit: (footer: RawStruct) => void): Uint8Array {
  const footer = rawFooter(file)
  edit(footer)
  return withFooter(file, footer)
}

/** Row group `group`'s `num_rows` set to `rows` (the issue's 2^31, 2^40 and 1,000,000 repros). */
export function withRowGroupRows(file: Uint8Array, group: number, rows: bigint): Uint8Array {
  return editFooter(file, (f) => {
    f.field_4[group].field_3 = rows
  })
}

/** The column chunks of a file: their raw metadata (ColumnMetaData) and byte range. */
export function chunksOf(file: Uint8Array): { group: number; column: number; path: string; start: number; end: number; meta: RawStruct }[] {
  const footer = rawFooter(file)
  const out: { group: number; column: number; path: string; start: number; end: number; meta: RawStruct }[] = []
  footer.field_4.forEach((g: RawStruct, group: number) => {
    g.field_1.forEach((c: RawStruct, column: number) => {
      const meta = c.field_3
      const start = Number(meta.field_11 || meta.field_9)
      out.push({ group, column, path: meta.field_3.map((p: Uint8Array) => new TextDecoder().decode(p)).join('.'), start, end: start + Number(meta.field_7), meta })
    })
  })
  return out
}

/**
 * A shard whose page headers are all sound but whose `id` data page makes hyparquet loop forever: the
 * dictionary indices' bit width is set to 0 and the first run header to a bit-packed run of -8 values
 * (varint ff ff ff ff 0f), so `readBitPacked` counts down from -8 without ever reading a byte. Found while
 * looking for loops in hyparquet 1.31.5 (`src/encoding.js`, `readBitPacked`); 1.33.0 loops the same way.
 */
export function loopingShard(images: readonly Uint8Array[]): Uint8Array {
  return patchIdData(images, (data) => {
    data[0] = 0
    data.set([0xff, 0xff, 0xff, 0xff, 0x0f], 1)
  })
}

/**
 * A shard whose page headers are all sound but whose `id` data page holds one RLE run of 2^31 - 1 values
 * (varint fe ff ff ff 0f) for a 100-value page: hyparquet writes them all into a growing array (a memory
 * bomb in 6 bytes).
 */
export function memoryBombShard(images: readonly Uint8Array[]): Uint8Array {
  return patchIdData(images, (data) => {
    data[0] = 2
    data.set([0xfe, 0xff, 0xff, 0xff, 0x0f, 0x01], 1)
  })
}

/**
 * A 100-row shard (`id` dictionary-encoded: 3 distinct values; `image`; uncompressed, one row group) with
 * the data (after the levels) of the `id` column's first data page edited by `patch`.
 */
function patchIdData(images: readonly Uint8Array[], patch: (data: Uint8Array) => void): Uint8Array {
  const rows = 100
  const buffer = parquetWriteBuffer({
    columnData: [
      { name: 'id', data: Array.from({ length: rows }, (_, i) => ['a', 'b', 'c'][(i * 7) % 3]), type: 'STRING' },
      { name: 'image', data: Array.from({ length: rows }, (_, i) => images[i % images.length]), type: 'BYTE_ARRAY' },
    ],
    codec: 'UNCOMPRESSED',
    rowGroupSize: rows,
    createdBy: 'evflow-test',
  })
  const file = new Uint8Array(buffer)
  const id = chunksOf(file).find((c) => c.path === 'id')!
  const view = new DataView(file.buffer)
  const reader = { view, offset: id.start }
  let header = parquetHeader(reader)
  if (header.type === 'DICTIONARY_PAGE') {
    reader.offset += header.compressed_page_size
    header = parquetHeader(reader)
  }
  if (header.type !== 'DATA_PAGE_V2' || header.data_page_header_v2?.encoding !== 'RLE_DICTIONARY') {
    throw new Error(`expected a dictionary-encoded v2 data page, got ${header.type} ${header.data_page_header_v2?.encoding}`)
  }
  const v2 = header.data_page_header_v2
  const dataStart = reader.offset + v2.definition_levels_byte_length + v2.repetition_levels_byte_length
  const dataEnd = reader.offset + header.compressed_page_size
  if (dataEnd - dataStart < 8) throw new Error('the id data page is too short to patch')
  patch(file.subarray(dataStart, dataEnd))
  return file
}

/** A deterministic PRNG (mulberry32): the report's sampler's. */
export const prng = seededRandom

export interface Mutant {
  readonly name: string
  readonly kind: string
  readonly bytes: Uint8Array
}

/**
 * The seeded fuzz corpus: `perKind` files of each kind of damage, made from `bases`. Kinds: byte flips
 * anywhere, byte flips in the footer, byte flips in page headers, truncations, cut chunks (bytes removed
 * before the footer), footer-length edits, duplicated row groups, inflated and zeroed `num_rows` (2^31 and
 * 2^40 included), column value counts, chunk offsets and sizes past the end, codec swaps.
 */
export function fuzzCorpus(bases: readonly { name: string; bytes: Uint8Array }[], perKind: number, seed: number): Mutant[] {
  const random = prng(seed)
  const int = (n: number) => Math.floor(random() * n)
  const pick = <T>(list: readonly T[]): T => list[int(list.length)]
  const out: Mutant[] = []
  const footerStart = (b: Uint8Array) => b.byteLength - 8 - new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(b.byteLength - 8, true)
  const flip = (b: Uint8Array, lo: number, hi: number, count: number) => {
    const copy = b.slice()
    for (let i = 0; i < count; i++) {
      const at = lo + int(Math.max(1, hi - lo))
      copy[at] = random() < 0.5 ? copy[at] ^ (1 << int(8)) : int(256)
    }
    return copy
  }
  const kinds: Record<string, (base: Uint8Array) => Uint8Array> = {
    'flip-anywhere': (b) => flip(b, 0, b.byteLength, 1 + int(4)),
    'flip-footer': (b) => flip(b, footerStart(b), b.byteLength - 8, 1 + int(3)),
    'flip-page-header': (b) => {
      const chunk = pick(chunksOf(b))
      return flip(b, chunk.start, Math.min(chunk.end, chunk.start + 24), 1 + int(2))
    },
    truncate: (b) => b.slice(0, int(b.byteLength)),
    'cut-chunk': (b) => {
      const end = footerStart(b)
      const at = 4 + int(end - 4)
      const length = 1 + int(Math.min(512, end - at))
      return new Uint8Array([...b.subarray(0, at), ...b.subarray(at + length)])
    },
    'footer-length': (b) => {
      const copy = b.slice()
      const view = new DataView(copy.buffer)
      const length = view.getUint32(copy.byteLength - 8, true)
      const edits = [0, 1, length - 1, length + 1, length * 2, copy.byteLength, 0xffffffff, int(0x100000000)]
      view.setUint32(copy.byteLength - 8, pick(edits) >>> 0, true)
      return copy
    },
    'duplicate-row-group': (b) =>
      editFooter(b, (f) => {
        const groups = f.field_4 as RawStruct[]
        const g = int(groups.length)
        groups.splice(g, 0, structuredClone(groups[g]))
        if (random() < 0.5) f.field_3 = BigInt(f.field_3) + BigInt(groups[g].field_3)
      }),
    'num-rows': (b) =>
      editFooter(b, (f) => {
        const groups = f.field_4 as RawStruct[]
        const value = pick([0n, 1n, 7n, 9n, 1000n, 1_000_000n, 2n ** 31n, 2n ** 40n, 2n ** 53n, -1n])
        if (random() < 0.2) f.field_3 = value
        else groups[int(groups.length)].field_3 = value
      }),
    'num-values': (b) =>
      editFooter(b, (f) => {
        const group = pick(f.field_4 as RawStruct[])
        const chunk = pick(group.field_1 as RawStruct[])
        chunk.field_3.field_5 = pick([0n, 1n, 2n ** 31n, 2n ** 40n, BigInt(chunk.field_3.field_5) + 1n])
      }),
    'chunk-range': (b) =>
      editFooter(b, (f) => {
        const group = pick(f.field_4 as RawStruct[])
        const meta = pick(group.field_1 as RawStruct[]).field_3
        const size = BigInt(b.byteLength)
        const field = pick(['field_9', 'field_7', 'field_6', 'field_11'])
        meta[field] = pick([size, size + 1n, size * 2n, 2n ** 40n, 0n, 3n, BigInt(int(b.byteLength))])
      }),
    codec: (b) =>
      editFooter(b, (f) => {
        const group = pick(f.field_4 as RawStruct[])
        const meta = pick(group.field_1 as RawStruct[]).field_3
        meta.field_4 = pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 42])
      }),
  }
  for (const [kind, make] of Object.entries(kinds)) {
    for (let i = 0; i < perKind; i++) {
      const base = pick(bases)
      out.push({ name: `${kind}-${String(i).padStart(3, '0')}-${base.name}`, kind, bytes: make(base.bytes) })
    }
  }
  return out
}
