/**
 * Child process of the `sharp settings` case (the libuv thread pool size is fixed when a process starts, so
 * each `UV_THREADPOOL_SIZE` needs its own process). Runs `readShards → decodeImages` once per given setting
 * and prints one JSON line of `{ setting, wallS, cpuS, images }` per setting.
 *
 * argv[2]: JSON `{ file, size, limit, settings: [{ sharpConcurrency, concurrency, cache }] }`.
 */
import sharp from 'sharp'

import { decodeImages } from '../../../operators/decode-images.js'
import { readShards } from '../../../operators/read-shards.js'
import { timed } from '../stats.js'

export interface DecodeSetting {
  /** `sharp.concurrency()`: libvips threads per image. */
  readonly sharpConcurrency: number
  /** decodeImages `concurrency`: images in flight. */
  readonly concurrency: number
  /** libvips operation cache on (sharp's default) or off (`sharp.cache(false)`). */
  readonly cache: boolean
}

export interface DecodeSettingsJob {
  readonly file: string
  readonly size: number
  readonly limit: number
  readonly settings: readonly DecodeSetting[]
}

async function decodeAll(file: string, size: number, limit: number, concurrency: number): Promise<number> {
  let images = 0
  await new Promise<void>((resolve, reject) =>
    readShards(file, { limit })
      .pipe(decodeImages({ size, concurrency }))
      .subscribe({
        next: (r) => {
          if (r.kind !== 'decoded-image') reject(new Error(`unexpected ${r.kind} record`))
          images += 1
        },
        error: reject,
        complete: resolve,
      }),
  )
  return images
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2]) as DecodeSettingsJob
  await decodeAll(job.file, job.size, 200, 2) // warm-up
  for (const setting of job.settings) {
    sharp.concurrency(setting.sharpConcurrency)
    sharp.cache(setting.cache)
    let images = 0
    const t = await timed(async () => {
      images = await decodeAll(job.file, job.size, job.limit, setting.concurrency)
    })
    process.stdout.write(`${JSON.stringify({ setting, images, ...t })}\n`)
  }
}

await main()
