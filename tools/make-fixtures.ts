/**
 * Regenerates `fixtures/shards/` (the README's bundled data and the tests' small shards):
 *   npm run build && node dist/tools/make-fixtures.js fixtures/shards
 * Deterministic: the same command gives the same bytes.
 */
import { join } from 'node:path'

import * as img from '../test/helpers/images.js'
import { hfShardBuffer, imageShardBuffer, writeBuffer, type ImageShardRow } from '../test/helpers/shards.js'

export async function makeFixtures(dir: string): Promise<void> {
  // part-00000: 64 clean JPEGs of varied sizes, 4 row groups.
  const clean: ImageShardRow[] = []
  for (let i = 0; i < 64; i++) {
    const [w, h] = i % 8 === 0 ? [320, 200] : i % 8 === 1 ? [150, 256] : [256, 256]
    clean.push({ id: `clean-${i}`, image: await img.jpeg(w, h, 1000 + i, 60 + (i % 4) * 10), url: `https://example.org/clean/${i}.jpg` })
  }
  writeBuffer(join(dir, 'part-00000.parquet'), imageShardBuffer(clean, 16))

  // part-00001: every layout decodeImages handles, and every failure it reports.
  const mixed: [string, Uint8Array | null][] = [
    ['png', await img.png(96, 64, 1)],
    ['png-alpha', await img.pngWithAlpha(64, 64, 2)],
    ['grey', await img.greyPng(64, 80, 3)],
    ['png-16bit', await img.png16(64, 64, 4)],
    ['cmyk-jpeg', await img.cmykJpeg(64, 64, 5)],
    ['webp', await img.webp(72, 64, 6)],
    ['exif-rotated', await img.rotatedJpeg(120, 60, 7)],
    ['animated-gif', await img.animatedGif(48, 48, 8)],
    ['truncated-jpeg', await img.truncatedJpeg(128, 128, 9)],
    ['garbage', img.garbage(300, 10)],
    ['empty', new Uint8Array(0)],
    ['null', null],
  ]
  const mixedRows: ImageShardRow[] = []
  for (let i = 0; i < 36; i++) {
    const [kind, bytes] = mixed[i % mixed.length]
    mixedRows.push({ id: `mixed-${i}-${kind}`, image: bytes, url: null })
  }
  writeBuffer(join(dir, 'part-00001.parquet'), imageShardBuffer(mixedRows, 12))

  // part-00002: the Hugging Face datasets layout, one row stored by path only.
  const hf = []
  for (let i = 0; i < 24; i++) {
    const bytes = i === 5 ? null : await img.png(64, 64, 2000 + i)
    hf.push({ id: `hf-${i}`, bytes, path: `images/${i}.png` })
  }
  writeBuffer(join(dir, 'part-00002.parquet'), hfShardBuffer(hf, 8))
}

if (process.argv[1]?.endsWith('make-fixtures.js')) {
  const dir = process.argv[2] ?? 'fixtures/shards'
  makeFixtures(dir).then(
    () => process.stdout.write(`wrote ${dir}\n`),
    (error: unknown) => {
      process.stderr.write(`${String(error)}\n`)
      process.exitCode = 1
    },
  )
}
