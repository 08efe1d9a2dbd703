/** Hand-made records for operator tests. */
import type { ImageRow, ShardInfo } from '../../src/records.js'

export function shardInfo(name = 'shard', rows = 10): ShardInfo {
  return { path: `/data/${name}.parquet`, name, index: 0, rowStart: 0, rowEnd: rows, rows, rowGroups: 1, fileBytes: 0, fingerprint: 'f', kept: [] }
}

export function imageRow(row: number, image: Uint8Array | null, source: ShardInfo = shardInfo()): ImageRow {
  return { kind: 'image-row', key: { shard: source.name, rowGroup: 0, row }, source, kept: {}, id: `id-${row}`, image, imagePath: null }
}
