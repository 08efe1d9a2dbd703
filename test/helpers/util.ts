/** Small helpers shared by tests. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { lastValueFrom, toArray, type Observable } from 'rxjs'

/** A fresh temp folder, removed by the returned cleanup. */
export function tempDir(prefix = 'evflow-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

export function collect<T>(source: Observable<T>): Promise<T[]> {
  return lastValueFrom(source.pipe(toArray()), { defaultValue: [] as T[] })
}

/** Path of apache/parquet-testing when `../shared` is present (a developer or CI checkout), else undefined. */
export const PARQUET_TESTING = new URL('../../../shared/parquet-testing/', import.meta.url).pathname
