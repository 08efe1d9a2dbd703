/**
 * Real photographs at real resolutions for benchmarks: Parquet shards cut from the photos Debian's wallpaper
 * packages put on the machine (`gnome-backgrounds`, `mate-backgrounds`, `plasma-workspace-wallpapers`;
 * licences in docs/benchmarks.md), seeded crops re-encoded as JPEG / PNG / WebP. Nothing here is committed:
 * the shards go to a cache folder and are reused while the seed, the sources and sharp stay the same.
 *
 *   npm run photos -- [--out DIR] [--rows N] [--sized-rows N] [--seed S] [--sets mixed,jpeg-256,...] [--no-install]
 *
 * Sets (one folder of shards each, with columns id, image, format, width, height, source):
 * - `mixed`: `--rows` (default 2,000) photos of 0.3 to 12 megapixels (log-uniform, never upscaled), 70 %
 *   JPEG (quality 70-95, a quarter progressive, a tenth 4:4:4), 15 % PNG, 15 % WebP (quality 75-90);
 * - `jpeg-256`, `jpeg-640`, `jpeg-2048`: `--sized-rows` (default 500) JPEGs whose longer side is 256, 640 or
 *   2,048 px, the sizes datasets store (decode benchmarks, issue #19);
 * - `png-256`, `webp-256`, `png-640`, `webp-640`: the same crops as PNG and WebP.
 *
 * When fewer than 20 photos are found and the process runs as root with apt-get, the packages are installed
 * (apt-get update first); otherwise the tool prints the command and exits with 2. Deterministic: the same
 * seed, source files and sharp version give the same bytes.
 */
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join, relative } from 'node:path'
import { parseArgs } from 'node:util'
import { parquetWriteBuffer } from 'hyparquet-writer'
import sharp, { type Sharp } from 'sharp'

import { rng } from '../test/helpers/images.js'

/** Where Debian's wallpaper packages put their photos, and the package that owns each folder. */
export const PHOTO_ROOTS: readonly { dir: string; pkg: string }[] = [
  { dir: '/usr/share/backgrounds/gnome', pkg: 'gnome-backgrounds' },
  { dir: '/usr/share/backgrounds/mate', pkg: 'mate-backgrounds' },
  { dir: '/usr/share/wallpapers', pkg: 'plasma-workspace-wallpapers' },
]
export const PHOTO_PACKAGES = PHOTO_ROOTS.map((r) => r.pkg)
const MIN_SOURCES = 20
/** Bumped when the mixed set's recipe changes (its cached folder is then rebuilt). */
const MIXED_VERSION = 2
const ROWS_PER_SHARD = 100
export const DEFAULT_PHOTO_DIR = process.env.EVFLOW_PHOTOS ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'evflow', 'photos')

export type PhotoFormat = 'jpeg' | 'png' | 'webp'
export const SIZED_SETS: readonly { name: string; format: PhotoFormat; side: number }[] = [
  { name: 'jpeg-256', format: 'jpeg', side: 256 },
  { name: 'jpeg-640', format: 'jpeg', side: 640 },
  { name: 'jpeg-2048', format: 'jpeg', side: 2048 },
  { name: 'png-256', format: 'png', side: 256 },
  { name: 'webp-256', format: 'webp', side: 256 },
  { name: 'png-640', format: 'png', side: 640 },
  { name: 'webp-640', format: 'webp', side: 640 },
]
export const ALL_SETS = ['mixed', ...SIZED_SETS.map((s) => s.name)]

interface Source {
  readonly path: string
  readonly pkg: string
  readonly width: number
  readonly height: number
}

/** JPEG, PNG and WebP files under `roots` (default: the wallpaper folders) that sharp can read, in path order. */
export async function findPhotos(roots: readonly { dir: string; pkg: string }[] = PHOTO_ROOTS): Promise<Source[]> {
  const found: Source[] = []
  const walk = (dir: string, pkg: string): void => {
    if (!existsSync(dir)) return
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) walk(path, pkg)
      else if (entry.isFile() && /\.(jpe?g|png|webp)$/i.test(entry.name)) found.push({ path, pkg, width: 0, height: 0 })
    }
  }
  for (const root of roots) walk(root.dir, root.pkg)
  const sources: Source[] = []
  for (const s of found) {
    try {
      const meta = await sharp(s.path).metadata()
      if ((meta.width ?? 0) >= 256 && (meta.height ?? 0) >= 225) sources.push({ ...s, width: meta.width!, height: meta.height! })
    } catch {
      // not a photo sharp reads: skipped
    }
  }
  return sources
}

/** Installs the wallpaper packages with apt-get (root only); returns false where that is not possible. */
export function installPhotoPackages(log: (m: string) => void): boolean {
  const root = typeof process.getuid === 'function' && process.getuid() === 0
  if (!root || !existsSync('/usr/bin/apt-get')) return false
  log(`installing ${PHOTO_PACKAGES.join(' ')} with apt-get (about 175 MB)`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env })
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...PHOTO_PACKAGES], { stdio: 'ignore', env })
  return true
}

interface Photo {
  readonly id: string
  readonly image: Uint8Array
  readonly format: PhotoFormat
  readonly width: number
  readonly height: number
  readonly source: string
}

const ASPECTS = [1, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, 9 / 16] as const

/** A seeded crop of `source` with a random aspect ratio, `scale` of the largest such crop, at a random place. */
function crop(source: Source, random: () => number): { left: number; top: number; width: number; height: number } {
  const aspect = ASPECTS[Math.floor(random() * ASPECTS.length)]
  const maxW = Math.min(source.width, Math.floor(source.height * aspect))
  const scale = 0.5 + 0.5 * random()
  const width = Math.max(1, Math.floor(maxW * scale))
  const height = Math.max(1, Math.min(source.height, Math.round(width / aspect)))
  return { left: Math.floor(random() * (source.width - width + 1)), top: Math.floor(random() * (source.height - height + 1)), width, height }
}

async function encode(image: Sharp, format: PhotoFormat, random: () => number): Promise<Buffer> {
  if (format === 'jpeg') {
    const progressive = random() < 0.25
    const chromaSubsampling = random() < 0.1 ? '4:4:4' : '4:2:0'
    return image.jpeg({ quality: 70 + Math.floor(random() * 26), progressive, chromaSubsampling }).toBuffer()
  }
  if (format === 'png') return image.png({ compressionLevel: 6 }).toBuffer()
  return image.webp({ quality: 75 + Math.floor(random() * 16) }).toBuffer()
}

/**
 * Row `u` of the `mixed` set: a size drawn log-uniform in 0.3-12 MP first, then a source and crop that can
 * give it without upscaling (a few draws; a source too small for every draw gives its largest crop).
 */
async function mixedPhoto(sources: readonly Source[], seed: number, u: number): Promise<Photo> {
  const random = rng(seed * 1_000_003 + u)
  const megapixels = Math.exp(Math.log(0.3) + random() * (Math.log(12) - Math.log(0.3)))
  const target = megapixels * 1e6
  const candidates = sources.filter((s) => s.width * s.height >= target)
  const pool = candidates.length > 0 ? candidates : [sources.reduce((a, b) => (a.width * a.height >= b.width * b.height ? a : b))]
  const source = pool[Math.floor(random() * pool.length)]
  let region = crop(source, random)
  for (let attempt = 0; attempt < 8 && region.width * region.height < target; attempt++) region = crop(source, random)
  if (region.width * region.height < target) region = { left: 0, top: 0, width: source.width, height: source.height }
  const scale = Math.min(1, Math.sqrt(target / (region.width * region.height)))
  const width = Math.max(1, Math.round(region.width * scale))
  const height = Math.max(1, Math.round(region.height * scale))
  const pick = random()
  const format: PhotoFormat = pick < 0.7 ? 'jpeg' : pick < 0.85 ? 'png' : 'webp'
  const image = sharp(source.path).rotate().extract(region).resize(width, height, { fit: 'fill' }).removeAlpha()
  return { id: `mixed-${u}`, image: await encode(image, format, random), format, width, height, source: source.path }
}

/** Row `u` of a sized set: a crop whose longer side becomes `side` px. */
async function sizedPhoto(sources: readonly Source[], seed: number, set: (typeof SIZED_SETS)[number], u: number): Promise<Photo> {
  // The crop depends on the side only, so png-256 and jpeg-256 hold the same pictures.
  const random = rng(seed * 7_000_003 + set.side * 131 + u)
  const candidates = sources.filter((s) => Math.max(s.width, s.height) >= set.side)
  const source = candidates[Math.floor(random() * candidates.length)]
  let region = crop(source, random)
  if (Math.max(region.width, region.height) < set.side) region = { left: 0, top: 0, width: source.width, height: source.height }
  const scale = set.side / Math.max(region.width, region.height)
  const width = Math.max(1, Math.round(region.width * scale))
  const height = Math.max(1, Math.round(region.height * scale))
  const image = sharp(source.path).rotate().extract(region).resize(width, height, { fit: 'fill' }).removeAlpha()
  return { id: `${set.name}-${u}`, image: await encode(image, set.format, random), format: set.format, width, height, source: source.path }
}

function writeShard(file: string, photos: readonly Photo[]): void {
  const buffer = parquetWriteBuffer({
    columnData: [
      { name: 'id', data: photos.map((p) => p.id), type: 'STRING' },
      { name: 'image', data: photos.map((p) => p.image), type: 'BYTE_ARRAY' },
      { name: 'format', data: photos.map((p) => p.format), type: 'STRING' },
      { name: 'width', data: photos.map((p) => p.width), type: 'INT32' },
      { name: 'height', data: photos.map((p) => p.height), type: 'INT32' },
      { name: 'source', data: photos.map((p) => p.source), type: 'STRING' },
    ],
    rowGroupSize: 25,
    createdBy: 'evflow-photos',
  })
  writeFileSync(file, new Uint8Array(buffer))
}

export interface PhotoSetsOptions {
  readonly out?: string
  readonly rows?: number
  readonly sizedRows?: number
  readonly seed?: number
  readonly sets?: readonly string[]
  /** Install the wallpaper packages when missing (root and apt-get only). Default true. */
  readonly install?: boolean
  /** Folders to take photos from (default: the wallpaper packages' folders). */
  readonly roots?: readonly { dir: string; pkg: string }[]
  readonly log?: (message: string) => void
}

export interface PhotoSets {
  readonly dir: string
  /** Set name → its folder of shards. */
  readonly sets: Readonly<Record<string, string>>
  readonly sources: number
}

/** Builds (or reuses) the photo sets; returns their folders. */
export async function buildPhotoSets(options: PhotoSetsOptions = {}): Promise<PhotoSets> {
  const log = options.log ?? ((m: string) => process.stderr.write(`[photos] ${m}\n`))
  const out = options.out ?? DEFAULT_PHOTO_DIR
  const seed = options.seed ?? 1
  const rows = options.rows ?? 2_000
  const sizedRows = options.sizedRows ?? 500
  const names = options.sets ?? ALL_SETS
  for (const name of names) if (!ALL_SETS.includes(name)) throw new Error(`unknown set ${name} (sets: ${ALL_SETS.join(', ')})`)
  let sources = await findPhotos(options.roots)
  if (sources.length < MIN_SOURCES) {
    if (options.roots || options.install === false || !installPhotoPackages(log)) {
      throw new PhotosMissingError(`found ${sources.length} photos; install them with: apt-get install ${PHOTO_PACKAGES.join(' ')}`)
    }
    sources = await findPhotos()
    if (sources.length < MIN_SOURCES) throw new PhotosMissingError(`found ${sources.length} photos after installing ${PHOTO_PACKAGES.join(' ')}`)
  }
  const fingerprint = createHash('sha256')
    .update(JSON.stringify({ seed, sharp: sharp.versions, sources: sources.map((s) => [s.path, statSync(s.path).size, s.width, s.height]) }))
    .digest('hex')
    .slice(0, 16)
  const sets: Record<string, string> = {}
  for (const name of names) {
    const count = name === 'mixed' ? rows : sizedRows
    const dir = join(out, `${name}${name === 'mixed' ? `-v${MIXED_VERSION}` : ''}-${count}-${fingerprint}`)
    sets[name] = dir
    if (existsSync(join(dir, 'complete.json'))) continue
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(dir, { recursive: true })
    const started = performance.now()
    const sized = SIZED_SETS.find((s) => s.name === name)
    let bytes = 0
    for (let first = 0; first < count; first += ROWS_PER_SHARD) {
      const indices = Array.from({ length: Math.min(ROWS_PER_SHARD, count - first) }, (_, k) => first + k)
      const photos: Photo[] = new Array(indices.length)
      let next = 0
      await Promise.all(
        Array.from({ length: 2 }, async () => {
          while (next < indices.length) {
            const k = next++
            photos[k] = sized ? await sizedPhoto(sources, seed, sized, indices[k]) : await mixedPhoto(sources, seed, indices[k])
          }
        }),
      )
      bytes += photos.reduce((n, p) => n + p.image.byteLength, 0)
      writeShard(join(dir, `part-${String(first / ROWS_PER_SHARD).padStart(5, '0')}.parquet`), photos)
      log(`${name}: ${first + indices.length}/${count} rows`)
    }
    const seconds = (performance.now() - started) / 1000
    writeFileSync(join(dir, 'complete.json'), `${JSON.stringify({ set: name, rows: count, seed, encodedBytes: bytes, seconds, sources: sources.length }, null, 2)}\n`)
    log(`${name}: ${count} rows, ${(bytes / 1e6).toFixed(0)} MB of images in ${seconds.toFixed(0)} s → ${relative(process.cwd(), dir) || dir}`)
  }
  return { dir: out, sets, sources: sources.length }
}

/** The photos are not on the machine and cannot be installed from here. */
export class PhotosMissingError extends Error {
  override readonly name = 'PhotosMissingError'
}

/** Encoded images of a set's shards, in row order (for benchmarks that decode from memory). */
export async function readPhotoSet(dir: string, limit = Infinity): Promise<Uint8Array[]> {
  const { parquetReadObjects } = await import('hyparquet')
  const images: Uint8Array[] = []
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.parquet')).sort()) {
    if (images.length >= limit) break
    const data = readFileSync(join(dir, file))
    const buffer = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)
    const rows = (await parquetReadObjects({ file: buffer, columns: ['image'], utf8: false })) as { image: Uint8Array }[]
    for (const row of rows) if (images.length < limit) images.push(row.image)
  }
  return images
}

if (process.argv[1]?.endsWith('photos.js')) {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      rows: { type: 'string', default: '2000' },
      'sized-rows': { type: 'string', default: '500' },
      seed: { type: 'string', default: '1' },
      sets: { type: 'string' },
      'no-install': { type: 'boolean', default: false },
    },
  })
  buildPhotoSets({
    ...(values.out ? { out: values.out } : {}),
    rows: Number(values.rows),
    sizedRows: Number(values['sized-rows']),
    seed: Number(values.seed),
    ...(values.sets ? { sets: values.sets.split(',') } : {}),
    install: !values['no-install'],
  }).then(
    (result) => {
      for (const [name, dir] of Object.entries(result.sets)) process.stdout.write(`${name}\t${dir}\n`)
    },
    (error: unknown) => {
      process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`)
      process.exitCode = error instanceof PhotosMissingError ? 2 : 1
    },
  )
}
