/**
 * Benchmark inputs, generated on first use in a temp folder (never committed) and removed at the end:
 * Parquet shards of seeded 256×256 JPEGs (`test/helpers/images.ts` `jpeg()`), cycling through a pool of
 * distinct images so the decoder never sees the same bytes twice in a row.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { lastValueFrom, reduce } from 'rxjs'

import { readShards } from '../../operators/read-shards.js'
import { writeJpegShards } from '../../test/helpers/big-shards.js'

/** Side of the generated JPEGs. */
export const IMAGE_SIDE = 256
/** Distinct JPEGs in the pool the shards cycle through. */
export const DISTINCT_IMAGES = 250
/** Rows of the shard the decode and scan cases read. */
export const ROWS = 2_000
/** Rows of the shard the memory case compares against `ROWS`. */
export const BIG_ROWS = 20_000
/** Rows per row group of the generated shards. */
export const ROW_GROUP_SIZE = 500

export interface ShardInput {
  /** Folder holding the one shard (what `evflow scan` takes). */
  readonly dir: string
  /** The shard file. */
  readonly file: string
  readonly rows: number
  readonly fileBytes: number
}

export class BenchInputs {
  private root: string | undefined
  private readonly shards = new Map<number, Promise<ShardInput>>()
  private images: Promise<readonly Uint8Array[]> | undefined

  constructor(private readonly log: (message: string) => void = () => {}) {}

  /** The temp folder (created on first use). */
  get dir(): string {
    this.root ??= mkdtempSync(join(tmpdir(), 'evflow-bench-'))
    return this.root
  }

  /** A one-shard folder of `rows` rows of `IMAGE_SIDE`² JPEGs. */
  shard(rows: number): Promise<ShardInput> {
    let pending = this.shards.get(rows)
    if (!pending) {
      pending = (async () => {
        const started = performance.now()
        const dir = join(this.dir, `in-${rows}`)
        const [file] = await writeJpegShards(dir, 1, rows, { size: IMAGE_SIDE, distinct: DISTINCT_IMAGES, rowGroupSize: ROW_GROUP_SIZE })
        const fileBytes = statSync(file).size
        this.log(`generated ${rows} rows (${(fileBytes / 1e6).toFixed(1)} MB) in ${((performance.now() - started) / 1000).toFixed(1)} s`)
        return { dir, file, rows, fileBytes }
      })()
      this.shards.set(rows, pending)
    }
    return pending
  }

  /** The encoded images of the `ROWS`-row shard, in row order, read once into memory (for sharp alone). */
  encodedImages(): Promise<readonly Uint8Array[]> {
    this.images ??= (async () => {
      const { file } = await this.shard(ROWS)
      return lastValueFrom(
        readShards(file).pipe(
          reduce((all, record) => {
            if (record.kind === 'image-row' && record.image) all.push(Uint8Array.from(record.image))
            return all
          }, [] as Uint8Array[]),
        ),
      )
    })()
    return this.images
  }

  cleanup(): void {
    if (this.root) rmSync(this.root, { recursive: true, force: true })
    this.root = undefined
  }
}
