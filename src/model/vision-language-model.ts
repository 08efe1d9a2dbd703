/**
 * `VisionLanguageModel`: a model package and the pool of inference workers that runs its graphs. The model
 * operators share one instance; each acquires it while subscribed, and the worker pool (with every ONNX
 * Runtime session in it) is created on first use and destroyed when the last operator completes, errors or
 * is unsubscribed. The package is loaded (validated, hashes checked) once, on first use.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

import { ModelManifestError } from '../errors.js'
import { loadModelPackage, type ModelManifest, type ModelPackage } from './package.js'
import { InferencePool, type ExecutionProvider, type InferencePoolOptions } from './inference-pool.js'

/** The folder of the model bundled with evflow (`fixtures/models/evlm-tiny`). */
export function bundledModelDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const candidate = join(dir, 'fixtures', 'models', 'evlm-tiny')
    if (existsSync(join(dir, 'package.json')) && existsSync(candidate)) return candidate
    const parent = dirname(dir)
    if (parent === dir) return resolve('fixtures/models/evlm-tiny')
    dir = parent
  }
}

/** sha256 of a package's manifest (which holds the sha256 of every file): identifies the model's content. */
export function modelFingerprint(dir: string): string {
  try {
    return createHash('sha256').update(readFileSync(join(dir, 'manifest.json'))).digest('hex')
  } catch {
    throw new ModelManifestError('dir', `no manifest.json in ${dir} (pass --model DIR, a model package folder)`)
  }
}

export interface VisionLanguageModelOptions extends InferencePoolOptions {
  /** Check every file's sha256 when loading. Default true. */
  verifyHashes?: boolean
}

export class VisionLanguageModel {
  readonly dir: string
  private loading: Promise<ModelPackage> | undefined
  private pkg: ModelPackage | undefined
  private workerPool: InferencePool | undefined
  private users = 0
  private closing: Promise<void> = Promise.resolve()

  constructor(
    dir: string = bundledModelDir(),
    private readonly options: VisionLanguageModelOptions = {},
  ) {
    this.dir = resolve(dir)
    // validate pool options now, so that a bad --workers fails before any data is read
    InferencePool.validate(options)
  }

  /** The loaded package (validated once). */
  load(): Promise<ModelPackage> {
    this.loading ??= loadModelPackage(this.dir, { verifyHashes: this.options.verifyHashes ?? true }).then((pkg) => {
      this.pkg = pkg
      return pkg
    })
    return this.loading
  }

  /** The package, after `load()` resolved. */
  get package(): ModelPackage {
    if (!this.pkg) throw new Error('VisionLanguageModel.package read before load() resolved')
    return this.pkg
  }

  get manifest(): Readonly<ModelManifest> {
    return this.package.manifest
  }

  /** Marks one more user (an operator subscribed). */
  acquire(): void {
    this.users += 1
  }

  /** One user less; the last one destroys the worker pool (releasing every session). */
  release(): Promise<void> {
    this.users = Math.max(0, this.users - 1)
    if (this.users === 0 && this.workerPool) {
      const pool = this.workerPool
      this.workerPool = undefined
      this.closing = pool.destroy()
    }
    return this.closing
  }

  /** The worker pool, created on first use while acquired. */
  pool(): InferencePool {
    if (!this.workerPool) {
      if (this.users === 0) throw new Error('VisionLanguageModel.pool() used without acquire()')
      this.workerPool = new InferencePool(this.options)
    }
    return this.workerPool
  }

  /** Worker threads the pool runs (default: the number of cores). */
  get workers(): number {
    return this.options.workers ?? availableParallelism()
  }

  /** Whether a worker pool is alive (for tests: sessions are released when it is not). */
  get active(): boolean {
    return this.workerPool !== undefined
  }

  get provider(): ExecutionProvider {
    return this.workerPool?.activeProvider ?? this.options.provider ?? 'cpu'
  }

  /** Waits for a pool being destroyed. */
  async closed(): Promise<void> {
    await this.closing
  }

  graph(name: string): string {
    return this.package.graphPath(name)
  }
}
