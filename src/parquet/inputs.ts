/**
 * The user's inputs: resolving files, folders and globs to a sorted list of Parquet files (never evflow's
 * own outputs), giving each shard an output name that no other shard of the plan can share, and refusing an
 * output folder that overlaps the inputs.
 *
 * The naming rule (input identity → output name is injective, also on case-insensitive file systems):
 * 1. the *raw name* of a file is its name without `.parquet` when those are distinct over the plan's
 *    files, otherwise its path relative to the files' common folder (`/` turned into `__`);
 * 2. the *readable name* is the raw name sanitised to `[A-Za-z0-9._=-]` (no leading `.` or `_`), plus
 *    `.rows-<start>-<end>` for a shard that is a part of its file;
 * 3. the readable name is the output name, unless sanitising changed the raw name, or the readable name is
 *    longer than {@link MAX_NAME_CHARS}, or another shard's readable name equals it ignoring case: then the
 *    output name is the readable name (shortened to fit) + `~` + the first 10 hex digits of the sha256 of
 *    the shard's identity (raw name and row range).
 * Readable names never hold `~`, so a hashed name never equals a plain one; two hashed names could only
 * meet on a hash collision, which {@link assignOutputNames} refuses before anything runs. Plain inputs keep
 * their plain names (`part-00000`, `test.rows-0-128`), and a hashed name does not depend on the other inputs.
 */
import { createHash } from 'node:crypto'
import { lstatSync, realpathSync, statSync } from 'node:fs'
import { stat } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import { glob, isDynamicPattern } from 'tinyglobby'

import { InputNotFoundError, OutputNameCollisionError, UnsafeOutputError } from '../errors.js'

/** The folder evflow keeps its own files in, inside an output folder. */
export const EVFLOW_DIR = '_evflow'

/**
 * Longest output name, in bytes (names are ASCII): `<name>.parquet`, `<name>.json` and the temp names built
 * from it (`<name>.<host ≤ 40>.<pid>.<random>.parquet`) all stay well within NAME_MAX (255 bytes).
 */
export const MAX_NAME_CHARS = 128

/**
 * Expands files, folders (recursively, `*.parquet`) and glob patterns; sorted, without duplicates.
 *
 * Never discovers evflow's outputs: `_evflow/` folders are skipped, and so are the files of any output
 * folder (a folder holding `_evflow/`) found *below* a folder or glob base you name. A folder you name
 * yourself is read even when it is an output folder (as `evflow eval` does), and so is a file you name.
 */
export async function resolveInputs(inputs: readonly string[]): Promise<string[]> {
  const files = new Set<string>()
  for (const input of inputs) {
    if (isDynamicPattern(input)) {
      const base = resolve(globBase(input))
      const matches = await glob(input, { absolute: true, onlyFiles: true, expandDirectories: false, ignore: ['**/_evflow/**'] })
      const parquet = matches.map((m) => resolve(m)).filter((m) => m.endsWith('.parquet') && !inOutputFolderBelow(m, base))
      if (parquet.length === 0) throw new InputNotFoundError(input)
      for (const m of parquet) files.add(m)
      continue
    }
    let info
    try {
      info = await stat(input)
    } catch {
      throw new InputNotFoundError(input, 'no such file or folder')
    }
    if (info.isDirectory()) {
      const base = resolve(input)
      const matches = await glob('**/*.parquet', { cwd: input, absolute: true, onlyFiles: true, ignore: ['**/_evflow/**'] })
      const parquet = matches.map((m) => resolve(m)).filter((m) => !inOutputFolderBelow(m, base))
      if (parquet.length === 0) {
        throw new InputNotFoundError(input, matches.length === 0 ? 'folder holds no .parquet file' : 'folder holds no .parquet file outside evflow output folders')
      }
      for (const m of parquet) files.add(m)
    } else {
      files.add(resolve(input))
    }
  }
  return [...files].sort()
}

/** The part of a glob before its first dynamic segment (`data/**\/*.parquet` → `data`). */
function globBase(pattern: string): string {
  const segments = pattern.split('/')
  const fixed: string[] = []
  for (const segment of segments) {
    if (isDynamicPattern(segment)) break
    fixed.push(segment)
  }
  if (fixed.length === 0) return '.'
  const base = fixed.join('/')
  return base === '' ? '/' : base
}

/** Whether `file` sits in an evflow output folder (one holding `_evflow/`) strictly below `base`. */
function inOutputFolderBelow(file: string, base: string): boolean {
  for (let folder = dirname(file); folder !== base && folder.startsWith(base + sep); folder = dirname(folder)) {
    if (isOutputFolder(folder)) return true
  }
  return false
}

function isOutputFolder(folder: string): boolean {
  try {
    return lstatSync(join(folder, EVFLOW_DIR)).isDirectory()
  } catch {
    return false
  }
}

/** Replaces every character outside `[A-Za-z0-9._=-]` and strips leading dots and underscores: a safe file name. */
export function sanitizeName(name: string): string {
  const clean = name.replace(/[^A-Za-z0-9._=-]+/g, '_').replace(/^[._]+/, '')
  return clean.length > 0 ? clean : 'shard'
}

/** One shard of a plan as naming sees it: its file, and its row range when it is a part of the file. */
export interface ShardIdentity {
  /** Absolute path of the input file. */
  readonly path: string
  /** `[start, end)` when the shard is a part of the file; absent for the whole file. */
  readonly rows?: readonly [number, number]
}

/**
 * The output name of each shard (see the naming rule at the top of this file). Throws
 * `OutputNameCollisionError`, naming the inputs, when two shards would still share a name (a hash collision),
 * and before anything is written.
 */
export function assignOutputNames(shards: readonly ShardIdentity[]): string[] {
  if (shards.length === 0) return []
  const files = [...new Set(shards.map((s) => s.path))]
  const stems = files.map((f) => basename(f).replace(/\.parquet$/i, ''))
  const useStems = new Set(stems).size === stems.length
  const root = useStems ? '' : commonDir(files)
  const rawOf = new Map(files.map((f, i) => [f, useStems ? stems[i] : relative(root, f).replace(/\.parquet$/, '').split(sep).join('/')]))

  const planned = shards.map((shard) => {
    const raw = rawOf.get(shard.path)!
    const display = raw.split('/').join('__')
    const clean = sanitizeName(display)
    const suffix = shard.rows === undefined ? '' : `.rows-${shard.rows[0]}-${shard.rows[1]}`
    const readable = clean + suffix
    const identity = JSON.stringify([raw, shard.rows ?? null])
    return { shard, clean, suffix, readable, identity, hashed: clean !== display || readable.length > MAX_NAME_CHARS }
  })
  const counts = new Map<string, number>()
  for (const p of planned) counts.set(p.readable.toLowerCase(), (counts.get(p.readable.toLowerCase()) ?? 0) + 1)
  const names = planned.map((p) => {
    if (!p.hashed && counts.get(p.readable.toLowerCase()) === 1) return p.readable
    const hash = createHash('sha256').update(p.identity).digest('hex').slice(0, 10)
    const room = MAX_NAME_CHARS - p.suffix.length - hash.length - 1
    return `${p.clean.slice(0, room)}${p.suffix}~${hash}`
  })

  const seen = new Map<string, number>()
  for (const [i, name] of names.entries()) {
    const other = seen.get(name.toLowerCase())
    if (other !== undefined) throw new OutputNameCollisionError(name, [describeIdentity(shards[other]), describeIdentity(shards[i])])
    seen.set(name.toLowerCase(), i)
  }
  return names
}

function describeIdentity(shard: ShardIdentity): string {
  return shard.rows === undefined ? shard.path : `${shard.path} rows ${shard.rows[0]}:${shard.rows[1]}`
}

/** Output names of whole files (no row ranges): {@link assignOutputNames} over `files`. */
export function outputNames(files: readonly string[]): string[] {
  return assignOutputNames(files.map((path) => ({ path })))
}

/**
 * Gives the shards of a plan their final names in one pass over the whole plan. On entry each `info.name`
 * is the selection suffix `planShards` computed (`''` for a whole file, `.rows-<start>-<end>` for a part);
 * on return it is the output name. Throws `OutputNameCollisionError` as {@link assignOutputNames} does.
 */
export function nameShards<T extends { readonly plan: { readonly info: { readonly path: string; readonly name: string } } }>(planned: readonly T[]): T[] {
  const identities = planned.map(({ plan: { info } }): ShardIdentity => {
    const part = /^\.rows-(\d+)-(\d+)$/.exec(info.name)
    return part ? { path: info.path, rows: [Number(part[1]), Number(part[2])] } : { path: info.path }
  })
  const names = assignOutputNames(identities)
  return planned.map((p, i) => ({ ...p, plan: { ...p.plan, info: { ...p.plan.info, name: names[i] } } }) as T)
}

function commonDir(files: readonly string[]): string {
  let root = dirname(files[0])
  for (const f of files) {
    while (!(f.startsWith(root + sep) || root === dirname(root))) root = dirname(root)
  }
  return root
}

/**
 * Refuses (`UnsafeOutputError`, exit 2, before anything is written) an output folder that overlaps the
 * inputs: that equals, contains or is inside an input folder (a folder named as input, or the fixed part of
 * a glob that reaches into subfolders, such as `data/**\/*.parquet`), or that equals or contains an input
 * file (`files`, the resolved inputs). Real paths are compared, so symlinked folders are seen
 * through; an output folder that does not exist yet is resolved through its nearest existing parent.
 */
export function checkOutputFolder(outDir: string, inputs: readonly string[], files: readonly string[]): void {
  const out = realPathOf(outDir)
  const within = (child: string, parent: string) => child === parent || child.startsWith(parent.endsWith(sep) ? parent : parent + sep)
  const refuse = (message: string): never => {
    throw new UnsafeOutputError(outDir, `${message}; outputs could overwrite inputs or be read back as inputs: choose an output folder outside the inputs`)
  }
  for (const input of inputs) {
    const dynamic = isDynamicPattern(input)
    // A glob that matches only files directly in its base folder (`data/*.parquet`) cannot reach into a
    // folder below it: its files are checked below. One that can (`data/**/*.parquet`) counts as the folder.
    if (dynamic && !input.slice(globBase(input).length).replace(/^\/+/, '').includes('/') && !input.includes('**')) continue
    const path = realPathOf(dynamic ? globBase(input) : input)
    let folder = dynamic
    if (!dynamic) {
      try {
        folder = statSync(path).isDirectory()
      } catch {
        continue // a missing input is reported by resolving it
      }
    }
    if (folder) {
      if (out === path) refuse(`the output folder is the input folder ${input}`)
      if (within(out, path)) refuse(`the output folder is inside the input folder ${input}`)
      if (within(path, out)) refuse(`the output folder contains the input folder ${input}`)
    } else if (within(path, out)) {
      refuse(out === path ? `the output folder is the input file ${input}` : `the output folder contains the input file ${input}`)
    }
  }
  for (const file of files) {
    const path = realPathOf(file)
    if (within(path, out)) refuse(`the output folder contains the input file ${file}`)
  }
}

/** The real path of `path`, resolving symlinks through its nearest existing ancestor when it does not exist. */
function realPathOf(path: string): string {
  let current = isAbsolute(path) ? path : resolve(path)
  const rest: string[] = []
  for (;;) {
    try {
      return join(realpathSync(current), ...rest.reverse())
    } catch {
      const parent = dirname(current)
      if (parent === current) return resolve(path)
      rest.push(basename(current))
      current = parent
    }
  }
}
