/**
 * Loading a model package: a folder with `manifest.json`, ONNX graphs and a tokenizer file. The manifest is
 * the only thing the TypeScript side knows about a model (DESIGN §2); it is validated on load, every file is
 * checked against its sha256, and no path may leave the folder. Errors are `ModelManifestError`s naming the
 * field.
 */
import { createHash } from 'node:crypto'
import { createReadStream, existsSync, realpathSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { isAbsolute, join, relative, resolve, sep } from 'node:path'
import { z } from 'zod'

import { ModelManifestError } from '../errors.js'
import { HfTokenizer, WordTokenizer, type TextTokenizer } from './tokenizer.js'

export const MODEL_FORMAT = 'evflow-model/1'

/** The graphs a vision-language model package must have (DESIGN §1 table). */
export const REQUIRED_GRAPHS = ['vit', 'resampler', 'router', 'experts', 'xattn_kv', 'decoder'] as const

const positive = z.number().int().positive()
const dtype = z.enum(['float32', 'int64', 'int32', 'uint8', 'bool'])
const valueSpec = z.object({ name: z.string().min(1), dtype, shape: z.array(z.union([z.number().int(), z.string()])) })
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'must be a hex sha256')

const graphSpec = z.object({
  file: z.string().min(1),
  inputs: z.array(valueSpec).min(1),
  outputs: z.array(valueSpec).min(1),
  sha256,
  bytes: z.number().int().nonnegative().optional(),
})

export const manifestSchema = z.object({
  format: z.literal(MODEL_FORMAT),
  name: z.string().min(1),
  description: z.string().optional(),
  dims: z.object({
    image_size: positive,
    patch_size: positive,
    vit_dim: positive,
    d_visual: positive,
    n_taps: positive,
    n_patches: positive,
    n_query: positive,
    n_experts: positive,
    top_k: positive,
    shared_expert: z.boolean(),
    d_model: positive,
    n_layer: positive,
    n_head: positive,
    head_dim: positive,
    vocab_size: positive,
    max_frames: positive,
    max_text_len: positive,
  }),
  taps: z.array(z.number().int().nonnegative()).min(1),
  tap_for_layer: z.array(z.number().int().nonnegative()).min(1),
  experts: z.object({ form: z.enum(['evlm', 'eve']), n_experts: positive, top_k: positive, shared_expert: z.boolean() }).passthrough(),
  preprocessing: z.object({
    size: positive,
    resize: z.enum(['cover', 'contain', 'pad', 'fill']),
    mean: z.tuple([z.number(), z.number(), z.number()]),
    std: z.tuple([z.number().positive(), z.number().positive(), z.number().positive()]),
  }).passthrough(),
  tokenizer: z.object({
    type: z.enum(['word', 'huggingface']),
    file: z.string().min(1),
    split_punctuation: z.array(z.string().length(1)).optional(),
    unknown: z.string().optional(),
  }).passthrough(),
  special_tokens: z.object({ pad: z.number().int().nonnegative(), bos: z.number().int().nonnegative(), eos: z.number().int().nonnegative(), unk: z.number().int().nonnegative(), sep: z.number().int().nonnegative().optional() }),
  generation: z.object({ max_new_tokens: positive, strategy: z.string() }).passthrough(),
  graphs: z.record(z.string(), graphSpec),
  files: z.record(z.string(), z.object({ sha256, bytes: z.number().int().nonnegative().optional() })).optional(),
}).passthrough()

export type ModelManifest = z.infer<typeof manifestSchema>
export type GraphSpec = z.infer<typeof graphSpec>

export interface ModelPackage {
  /** Absolute, real path of the package folder. */
  readonly dir: string
  readonly manifest: Readonly<ModelManifest>
  readonly tokenizer: TextTokenizer
  /** Absolute path of a graph's file. */
  graphPath(graph: string): string
  /** sha256 over the manifest: identifies the model in config hashes. */
  readonly fingerprint: string
}

export interface LoadModelOptions {
  /** Graphs that must be present. Default: the vision-language set (`REQUIRED_GRAPHS`). */
  requiredGraphs?: readonly string[]
  /** Check every file's sha256 (reads the files once). Default true. */
  verifyHashes?: boolean
}

/** A path inside `dir`: relative, and resolving (symlinks followed) inside it. */
function confined(dir: string, file: string, field: string): string {
  if (isAbsolute(file)) throw new ModelManifestError(field, `must be a path relative to the package, got ${file}`)
  const path = resolve(dir, file)
  const inside = (p: string) => {
    const rel = relative(dir, p)
    return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) && !rel.split(sep).includes('..')
  }
  if (!inside(path)) throw new ModelManifestError(field, `${file} leaves the model folder`)
  if (!existsSync(path)) throw new ModelManifestError(field, `${file} does not exist in ${dir}`)
  if (!inside(realpathSync(path))) throw new ModelManifestError(field, `${file} links outside the model folder`)
  return path
}

function fileSha256(path: string): Promise<string> {
  return new Promise((resolveHash, reject) => {
    const hash = createHash('sha256')
    createReadStream(path)
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolveHash(hash.digest('hex')))
  })
}

/** Reads, validates and checks a model package. */
export async function loadModelPackage(dirInput: string, options: LoadModelOptions = {}): Promise<ModelPackage> {
  let dir: string
  try {
    dir = realpathSync(dirInput)
  } catch {
    throw new ModelManifestError('dir', `model folder ${dirInput} does not exist`)
  }
  const manifestPath = join(dir, 'manifest.json')
  let text: string
  try {
    text = await readFile(manifestPath, 'utf8')
  } catch {
    throw new ModelManifestError('manifest.json', `not found in ${dir}`)
  }
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (cause) {
    throw new ModelManifestError('manifest.json', `is not valid JSON: ${(cause as Error).message}`, { cause })
  }
  const parsed = manifestSchema.safeParse(raw)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new ModelManifestError(issue.path.join('.') || 'manifest', issue.message)
  }
  const manifest = parsed.data
  checkConsistency(manifest, options.requiredGraphs ?? REQUIRED_GRAPHS)

  const paths = new Map<string, string>()
  for (const [name, graph] of Object.entries(manifest.graphs)) paths.set(name, confined(dir, graph.file, `graphs.${name}.file`))
  const tokenizerPath = confined(dir, manifest.tokenizer.file, 'tokenizer.file')
  if (options.verifyHashes !== false) {
    for (const [name, graph] of Object.entries(manifest.graphs)) {
      const actual = await fileSha256(paths.get(name)!)
      if (actual !== graph.sha256) throw new ModelManifestError(`graphs.${name}.sha256`, `${graph.file} has sha256 ${actual}, the manifest says ${graph.sha256} (corrupt or modified file)`)
    }
    for (const [file, entry] of Object.entries(manifest.files ?? {})) {
      const actual = await fileSha256(confined(dir, file, `files.${file}`))
      if (actual !== entry.sha256) throw new ModelManifestError(`files.${file}.sha256`, `${file} has sha256 ${actual}, the manifest says ${entry.sha256}`)
    }
  }

  const tokenizerText = await readFile(tokenizerPath, 'utf8')
  const tokenizer: TextTokenizer =
    manifest.tokenizer.type === 'word'
      ? WordTokenizer.fromText(tokenizerText, {
          splitPunctuation: manifest.tokenizer.split_punctuation ?? [],
          ...(manifest.tokenizer.unknown ? { unknown: manifest.tokenizer.unknown } : {}),
        })
      : new HfTokenizer(JSON.parse(tokenizerText))
  if (tokenizer.vocabSize !== manifest.dims.vocab_size) {
    throw new ModelManifestError('dims.vocab_size', `is ${manifest.dims.vocab_size} but ${manifest.tokenizer.file} has ${tokenizer.vocabSize} tokens`)
  }
  for (const [name, id] of Object.entries(manifest.special_tokens)) {
    if (id !== undefined && id >= manifest.dims.vocab_size) throw new ModelManifestError(`special_tokens.${name}`, `id ${id} is outside the vocabulary (${manifest.dims.vocab_size})`)
  }
  return {
    dir,
    manifest: Object.freeze(manifest),
    tokenizer,
    graphPath: (graph) => {
      const path = paths.get(graph)
      if (!path) throw new ModelManifestError(`graphs.${graph}`, `the model has no graph ${graph} (graphs: ${[...paths.keys()].join(', ')})`)
      return path
    },
    fingerprint: createHash('sha256').update(text).digest('hex'),
  }
}

function checkConsistency(m: ModelManifest, required: readonly string[]): void {
  for (const graph of required) if (!m.graphs[graph]) throw new ModelManifestError(`graphs.${graph}`, `missing (a vision-language package needs ${required.join(', ')})`)
  if (m.taps.length !== m.dims.n_taps) throw new ModelManifestError('taps', `lists ${m.taps.length} layers but dims.n_taps is ${m.dims.n_taps}`)
  if (m.tap_for_layer.length !== m.dims.n_layer) throw new ModelManifestError('tap_for_layer', `has ${m.tap_for_layer.length} entries but dims.n_layer is ${m.dims.n_layer}`)
  m.tap_for_layer.forEach((tap, i) => {
    if (tap >= m.dims.n_taps) throw new ModelManifestError(`tap_for_layer.${i}`, `tap ${tap} does not exist (n_taps ${m.dims.n_taps})`)
  })
  if (m.dims.top_k > m.dims.n_experts) throw new ModelManifestError('dims.top_k', `${m.dims.top_k} exceeds n_experts ${m.dims.n_experts}`)
  if (m.experts.n_experts !== m.dims.n_experts || m.experts.top_k !== m.dims.top_k) throw new ModelManifestError('experts', 'n_experts / top_k disagree with dims')
  if (m.preprocessing.size !== m.dims.image_size) throw new ModelManifestError('preprocessing.size', `${m.preprocessing.size} differs from dims.image_size ${m.dims.image_size}`)
  if (m.dims.head_dim * m.dims.n_head !== m.dims.d_model) throw new ModelManifestError('dims.head_dim', `head_dim × n_head (${m.dims.head_dim} × ${m.dims.n_head}) must equal d_model ${m.dims.d_model}`)
}
