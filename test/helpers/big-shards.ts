/** Larger generated shards (temp folders only, never committed): many rows sharing a few encoded images. */
import { join } from 'node:path'

import * as img from './images.js'
import { imageShardBuffer, writeBuffer } from './shards.js'

/** Writes `shards` files of `rows` rows each, cycling through `distinct` JPEGs of `size`×`size`. */
export async function writeJpegShards(dir: string, shards: number, rows: number, options: { size?: number; distinct?: number; rowGroupSize?: number } = {}): Promise<string[]> {
  const size = options.size ?? 256
  const pool = await Promise.all(Array.from({ length: options.distinct ?? 16 }, (_, i) => img.jpeg(size, size, 500 + i, 80)))
  const files: string[] = []
  for (let s = 0; s < shards; s++) {
    const file = join(dir, `part-${String(s).padStart(5, '0')}.parquet`)
    const data = Array.from({ length: rows }, (_, i) => ({ id: `s${s}-${i}`, image: pool[(s * 7 + i) % pool.length], url: `https://example.org/${s}/${i}` }))
    writeBuffer(file, imageShardBuffer(data, options.rowGroupSize ?? 500))
    files.push(file)
  }
  return files
}
