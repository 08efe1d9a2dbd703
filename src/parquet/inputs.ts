/**
 * Resolving the user's inputs (files, folders, globs) to a sorted list of Parquet files, and giving each
 * a sanitised output name that is unique within the run and cannot escape the output folder.
 */
import { stat } from 'node:fs/promises'
import { basename, dirname, relative, resolve, sep } from 'node:path'
import { glob, isDynamicPattern } from 'tinyglobby'

import { InputNotFoundError } from '../errors.js'

/** Expands files, folders (recursively, `*.parquet`) and glob patterns; sorted, without duplicates. */
export async function resolveInputs(inputs: readonly string[]): Promise<string[]> {
  const files = new Set<string>()
  for (const input of inputs) {
    if (isDynamicPattern(input)) {
      const matches = await glob(input, { absolute: true, onlyFiles: true, expandDirectories: false })
      const parquet = matches.filter((m) => m.endsWith('.parquet'))
      if (parquet.length === 0) throw new InputNotFoundError(input)
      for (const m of parquet) files.add(resolve(m))
      continue
    }
    let info
    try {
      info = await stat(input)
    } catch {
      throw new InputNotFoundError(input, 'no such file or folder')
    }
    if (info.isDirectory()) {
      const matches = await glob('**/*.parquet', { cwd: input, absolute: true, onlyFiles: true, ignore: ['**/_evflow/**'] })
      if (matches.length === 0) throw new InputNotFoundError(input, 'folder holds no .parquet file')
      for (const m of matches) files.add(resolve(m))
    } else {
      files.add(resolve(input))
    }
  }
  return [...files].sort()
}

/** Replaces every character outside `[A-Za-z0-9._=-]` and strips leading dots: a safe file name. */
export function sanitizeName(name: string): string {
  const clean = name.replace(/[^A-Za-z0-9._=-]+/g, '_').replace(/^[._]+/, '')
  return clean.length > 0 ? clean.slice(0, 200) : 'shard'
}

/**
 * Output names for `files`: the file name without `.parquet` when those are unique, otherwise the path
 * relative to the files' common folder with separators turned into `__`.
 */
export function outputNames(files: readonly string[]): string[] {
  const stems = files.map((f) => basename(f).replace(/\.parquet$/i, ''))
  if (new Set(stems.map(sanitizeName)).size === stems.length) return stems.map(sanitizeName)
  const root = commonDir(files)
  const names = files.map((f) => sanitizeName(relative(root, f).replace(/\.parquet$/i, '').split(sep).join('__')))
  // Sanitising can still merge distinct paths ("a b" and "a_b"): number the repeats.
  const seen = new Map<string, number>()
  return names.map((n) => {
    const count = seen.get(n) ?? 0
    seen.set(n, count + 1)
    return count === 0 ? n : `${n}-${count}`
  })
}

function commonDir(files: readonly string[]): string {
  let root = dirname(files[0])
  for (const f of files) {
    while (!(f.startsWith(root + sep) || root === dirname(root))) root = dirname(root)
  }
  return root
}
