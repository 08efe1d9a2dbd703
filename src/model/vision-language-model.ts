/**
 * `VisionLanguageModel`: a model package and the pool of inference threads that runs its graphs. The model
 * operators share one instance; each acquires it while subscribed, and the inference pool (with every ONNX
 * Runtime session in it) is created on first use and destroyed when the last operator completes, errors or
 * is unsubscribed. The manifest is read (validated) on first access; the package (every file's sha256,
 * the tokenizer) is loaded once, on first use.
 */
import { existsSync, statSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

import { ModelUsageError } from '../errors.js'
import { REQUIRED_GRAPHS, readManifest, type ManifestFile, type ModelManifest } from './manifest.js'
import { openModelPackage, type ModelPackage } from './package.js'
import { InferencePool, threadPlan, type ExecutionProvider, type InferencePoolOptions, type ThreadPlan } from './inference-pool.js'

/**
 * A file shipped with evflow (`relative` to its package root: a clone, or `node_modules/evflow`), found by
 * walking up from this module; `relative` to the working folder when no package holds it.
 */
function bundledPath(relative: string): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const candidate = join(dir, relative)
    if (existsSync(join(dir, 'package.json')) && existsSync(candidate)) return candidate
    const parent = dirname(dir)
    if (parent === dir) return resolve(relative)
    dir = parent
  }
}

/** The folder of the model bundled with evflow (`fixtures/models/evlm-tiny`). */
export function bundledModelDir(): string {
  return bundledPath(join('fixtures', 'models', 'evlm-tiny'))
}

/**
 * The sample shard shipped with evflow (`fixtures/sample/scenes.parquet`): 64 rows of the synthetic scenes
 * the bundled model knows (`id`, `image`, `caption`, `question`, `answer`, `scene`), so that the examples
 * run from an installed package.
 */
export function bundledSample(): string {
  return bundledPath(join('fixtures', 'sample', 'scenes.parquet'))
}

/**
 * sha256 of a package's manifest (which holds the sha256 of every file): identifies the model's content.
 * Reads and validates the manifest (`readManifest`); throws `ModelManifestError`.
 */
export function modelFingerprint(dir: string): string {
  return readManifest(dir).fingerprint
}

export interface VisionLanguageModelOptions extends InferencePoolOptions {
  /** Check every file's sha256 when loading. Default true. */
  verifyHashes?: boolean
}

/**
 * Bytes of the graphs a vision-language model runs (the manifest's `bytes` of each, else the file's size):
 * the weights each inference thread loads.
 */
export function weightsBytes(file: ManifestFile): number {
  return REQUIRED_GRAPHS.reduce((sum, name) => {
    const graph = file.manifest.graphs[name]
    if (!graph) return sum
    if (graph.bytes !== undefined) return sum + graph.bytes
    const path = join(file.dir, graph.file)
    return sum + (existsSync(path) ? statSync(path).size : 0)
  }, 0)
}

export class VisionLanguageModel {
  readonly dir: string
  private described: ManifestFile | undefined
  private loading: Promise<ModelPackage> | undefined
  private pkg: ModelPackage | undefined
  private inferencePool: InferencePool | undefined
  private users = 0
  private closing: Promise<void> = Promise.resolve()

  constructor(
    dir: string = bundledModelDir(),
    private readonly options: VisionLanguageModelOptions = {},
  ) {
    this.dir = resolve(dir)
    // validate pool options now, so that a bad --inference-threads fails before any data is read
    InferencePool.validate(options)
  }

  /** The manifest, read and validated on first access (no graph or tokenizer is read). */
  get manifestFile(): ManifestFile {
    this.described ??= readManifest(this.dir)
    return this.described
  }

  get manifest(): Readonly<ModelManifest> {
    return this.manifestFile.manifest
  }

  /** The loaded package (files checked, tokenizer read, prompts resolved), once. */
  load(): Promise<ModelPackage> {
    this.loading ??= (async () => openModelPackage(this.manifestFile, { verifyHashes: this.options.verifyHashes ?? true }))().then((pkg) => {
      this.pkg = pkg
      return pkg
    })
    return this.loading
  }

  /** The package, after `load()` resolved. */
  get package(): ModelPackage {
    if (!this.pkg) throw new ModelUsageError('VisionLanguageModel.package read before load() resolved')
    return this.pkg
  }

  /** Marks one more user (an operator subscribed). */
  acquire(): void {
    this.users += 1
  }

  /** One user less; the last one destroys the inference pool (releasing every session). */
  release(): Promise<void> {
    this.users = Math.max(0, this.users - 1)
    if (this.users === 0 && this.inferencePool) {
      const pool = this.inferencePool
      this.inferencePool = undefined
      this.closing = pool.destroy()
    }
    return this.closing
  }

  /** The inference pool, created on first use while acquired. */
  pool(): InferencePool {
    if (!this.inferencePool) {
      if (this.users === 0) throw new ModelUsageError('VisionLanguageModel.pool() used without acquire()')
      this.inferencePool = new InferencePool({ ...this.options, ...this.threads })
    }
    return this.inferencePool
  }

  /**
   * Inference and intra-op threads the pool runs: as set, else chosen from the model's size (`threadPlan`:
   * a small model one inference thread per core; a large one a single inference thread, one copy of its
   * weights, with every core as intra-op threads).
   */
  get threads(): ThreadPlan {
    return threadPlan(weightsBytes(this.manifestFile), availableParallelism(), this.options)
  }

  /** Inference threads the pool runs (see `threads`). */
  get inferenceThreads(): number {
    return this.threads.inferenceThreads
  }

  /** Whether an inference pool is alive (for tests: sessions are released when it is not). */
  get active(): boolean {
    return this.inferencePool !== undefined
  }

  get provider(): ExecutionProvider {
    return this.inferencePool?.activeProvider ?? this.options.provider ?? 'cpu'
  }

  /** Waits for a pool being destroyed. */
  async closed(): Promise<void> {
    await this.closing
  }

  graph(name: string): string {
    return this.package.graphPath(name)
  }
}
