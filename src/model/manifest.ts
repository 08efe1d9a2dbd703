/**
 * The model manifest (`manifest.json`): its schema and its one reader. The manifest is the only thing the
 * TypeScript side knows about a model (DESIGN §2): dimensions, taps, experts, preprocessing, tokenizer,
 * special tokens, prompt templates, generation defaults and the graphs with their sha256. Everything the
 * runtime reads from it is in the schema below; `readManifest` is the only function that reads the file, and
 * it feeds the pipelines (preprocessing, the fingerprint in the config hash) and the model package (graphs,
 * tokenizer, prompts). Errors are `ModelManifestError`s naming the field.
 *
 * The model's domain (what it was trained on, what its vocabulary covers) is the manifest's optional
 * `domain`; a package whose manifest predates the field may declare it in a sidecar, `domain.json`, bound to
 * the exact manifest by its sha256 (see `DOMAIN_FILE`). It is read here too, and never enters the
 * fingerprint: it describes the model, it does not change its outputs.
 */
import { createHash } from 'node:crypto'
import { readFileSync, realpathSync } from 'node:fs'
import { join } from 'node:path'
import { z } from 'zod'

import { ModelManifestError } from '../errors.js'

export const MODEL_FORMAT = 'evflow-model/1'

/** The graphs a vision-language model package must have (DESIGN §1 table). */
export const REQUIRED_GRAPHS = ['vit', 'resampler', 'router', 'experts', 'xattn_kv', 'decoder'] as const

/** The placeholder of a prompt template that stands for the question's tokens. */
export const QUESTION_SLOT = '{question}'

const positive = z.number().int().positive()
const tokenId = z.number().int().nonnegative()
const dtype = z.enum(['float32', 'int64', 'int32', 'uint8', 'bool'])
const valueSpec = z.object({ name: z.string().min(1), dtype, shape: z.array(z.union([z.number().int(), z.string()])) })
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'must be a hex sha256')
/** A prompt: special tokens by name (`<bos>`, `<sep>`) and, for questions, the `{question}` slot. */
const template = z.array(z.string().min(1)).min(1)

/** What a model was trained on (`domain` in the manifest, or in `domain.json`). */
export const domainSchema = z
  .object({
    /** True when the model was trained only on generated (synthetic) data: its outputs on real images mean nothing. */
    synthetic: z.boolean(),
    /** What it was trained on, in a phrase (e.g. `synthetic scenes of coloured shapes on a plain background`). */
    trained_on: z.string().min(1),
    /** What its vocabulary covers, in a phrase (e.g. `a closed list of 65 words`). */
    vocabulary: z.string().min(1).optional(),
  })
  .passthrough()

export type ModelDomain = z.infer<typeof domainSchema>

/**
 * The sidecar that declares the domain of a package whose manifest has no `domain` field (a manifest cannot
 * be edited without changing the model's fingerprint): `{ "manifest_sha256": "<sha256 of manifest.json>",
 * "domain": { ... } }`. It applies only to the manifest with that sha256; for any other it is an error.
 */
export const DOMAIN_FILE = 'domain.json'

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
  /** What the model was trained on. Optional: a package without it (and without `domain.json`) declares nothing. */
  domain: domainSchema.optional(),
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
  special_tokens: z.object({ pad: tokenId, bos: tokenId, eos: tokenId, unk: tokenId, sep: tokenId.optional() }),
  /** Prompt templates: `caption` (e.g. `["<bos>"]`) and `vqa` (e.g. `["<bos>", "{question}", "<sep>"]`). */
  prompts: z.object({ caption: template, vqa: template }).passthrough(),
  /** Generation defaults; `min_new_tokens`: the end token is out of reach until a text has that many tokens (absent: 0). */
  generation: z.object({ max_new_tokens: positive, strategy: z.string(), min_new_tokens: z.number().int().nonnegative().optional() }).passthrough(),
  graphs: z.record(z.string(), graphSpec),
  files: z.record(z.string(), z.object({ sha256, bytes: z.number().int().nonnegative().optional() })).optional(),
}).passthrough()

export type ModelManifest = z.infer<typeof manifestSchema>
export type ModelDims = ModelManifest['dims']
export type GraphSpec = z.infer<typeof graphSpec>

/** A manifest read and validated, with what identifies the model. */
export interface ManifestFile {
  /** Absolute, real path of the package folder. */
  readonly dir: string
  readonly manifest: Readonly<ModelManifest>
  /** sha256 of the manifest's bytes (which hold the sha256 of every file): identifies the model's content. */
  readonly fingerprint: string
  /** The declared domain: the manifest's `domain`, else `domain.json`'s; null when the package declares none. */
  readonly domain: Readonly<ModelDomain> | null
  /** Where `domain` was declared. */
  readonly domainSource: 'manifest.json' | typeof DOMAIN_FILE | null
}

export interface ReadManifestOptions {
  /** Graphs that must be present. Default: the vision-language set (`REQUIRED_GRAPHS`). */
  requiredGraphs?: readonly string[]
}

/**
 * Reads `<dir>/manifest.json`, validates it against the schema and checks that its fields agree with each
 * other (taps, experts, preprocessing size, head dims, prompt templates). Synchronous: the pipelines need the
 * preprocessing and the fingerprint before the stream starts. Does not read the graphs or the tokenizer
 * (`openModelPackage` does).
 */
export function readManifest(dirInput: string, options: ReadManifestOptions = {}): ManifestFile {
  let dir: string
  try {
    dir = realpathSync(dirInput)
  } catch {
    throw new ModelManifestError('dir', `model folder ${dirInput} does not exist (pass --model DIR, a folder with manifest.json)`)
  }
  let bytes: Buffer
  try {
    bytes = readFileSync(join(dir, 'manifest.json'))
  } catch {
    throw new ModelManifestError('manifest.json', `not found in ${dir} (pass --model DIR, a model package folder)`)
  }
  let raw: unknown
  try {
    raw = JSON.parse(bytes.toString('utf8'))
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
  const fingerprint = createHash('sha256').update(bytes).digest('hex')
  const sidecar = manifest.domain === undefined ? readDomainFile(dir, fingerprint) : null
  return {
    dir,
    manifest: Object.freeze(manifest),
    fingerprint,
    domain: manifest.domain ?? sidecar,
    domainSource: manifest.domain !== undefined ? 'manifest.json' : sidecar ? DOMAIN_FILE : null,
  }
}

/** A declared domain in one line: `synthetic data: <trained_on>; vocabulary: <vocabulary>`. */
export function domainText(domain: ModelDomain): string {
  return `${domain.synthetic ? 'synthetic data' : 'real data'}: ${domain.trained_on}${domain.vocabulary ? `; vocabulary: ${domain.vocabulary}` : ''}`
}

const domainFileSchema = z.object({ manifest_sha256: sha256, domain: domainSchema }).strict()

/** `<dir>/domain.json`, checked against the manifest's sha256; null when there is none. */
function readDomainFile(dir: string, fingerprint: string): ModelDomain | null {
  let text: string
  try {
    text = readFileSync(join(dir, DOMAIN_FILE), 'utf8')
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw new ModelManifestError(DOMAIN_FILE, `cannot be read: ${(cause as Error).message}`, { cause })
  }
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (cause) {
    throw new ModelManifestError(DOMAIN_FILE, `is not valid JSON: ${(cause as Error).message}`, { cause })
  }
  const parsed = domainFileSchema.safeParse(raw)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new ModelManifestError(`${DOMAIN_FILE} ${issue.path.join('.') || '(root)'}`, issue.message)
  }
  if (parsed.data.manifest_sha256 !== fingerprint) {
    throw new ModelManifestError(
      DOMAIN_FILE,
      `declares the domain of another manifest (sha256 ${parsed.data.manifest_sha256.slice(0, 12)}…, this one is ${fingerprint.slice(0, 12)}…): ` +
        `update its manifest_sha256 if the model's domain is unchanged, or put "domain" in manifest.json and delete ${DOMAIN_FILE}`,
    )
  }
  return parsed.data.domain
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
  for (const [task, slots] of [['caption', 0], ['vqa', 1]] as const) {
    const found = m.prompts[task].filter((part) => part === QUESTION_SLOT).length
    if (found !== slots) throw new ModelManifestError(`prompts.${task}`, `must hold ${QUESTION_SLOT} ${slots === 0 ? 'nowhere' : 'exactly once'}, found ${found}`)
  }
}
