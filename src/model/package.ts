/**
 * Opening a model package: a folder with `manifest.json`, ONNX graphs and a tokenizer file. The manifest is
 * read and validated by `readManifest` (manifest.ts, its only reader); here every file it names is checked
 * against its sha256, no path may leave the folder, the tokenizer is read and the prompt templates are
 * resolved against it. Errors are `ModelManifestError`s naming the field.
 */
import { createHash } from 'node:crypto'
import { createReadStream, existsSync, realpathSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { isAbsolute, relative, resolve, sep } from 'node:path'

import { ModelManifestError } from '../errors.js'
import { readManifest, type ManifestFile, type ModelManifest, type ReadManifestOptions } from './manifest.js'
import { compilePrompt, type PromptTemplate } from './prompts.js'
import { HfTokenizer, WordTokenizer, type TextTokenizer } from './tokenizer.js'

export interface ModelPackage {
  /** Absolute, real path of the package folder. */
  readonly dir: string
  readonly manifest: Readonly<ModelManifest>
  readonly tokenizer: TextTokenizer
  /** The manifest's prompt templates, resolved to token ids. */
  readonly prompts: { readonly caption: PromptTemplate; readonly vqa: PromptTemplate }
  /** Absolute path of a graph's file. */
  graphPath(graph: string): string
  /** sha256 of the manifest's bytes: identifies the model in config hashes. */
  readonly fingerprint: string
}

export interface LoadModelOptions extends ReadManifestOptions {
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

/**
 * The settings of a Hugging Face tokenizer that the manifest's `tokenizer` may carry (those of a
 * `tokenizer_config.json`): `clean_up_tokenization_spaces` (the library's default, true, rewrites `" ."` to
 * `"."` when decoding, which a byte-level tokenizer's own decoder does not do).
 */
function hfTokenizerConfig(tokenizer: ModelManifest['tokenizer']): Record<string, unknown> {
  const cleanUp = tokenizer.clean_up_tokenization_spaces
  return typeof cleanUp === 'boolean' ? { clean_up_tokenization_spaces: cleanUp } : {}
}

/** Reads the manifest of `dir` and opens the package (see `openModelPackage`). */
export async function loadModelPackage(dir: string, options: LoadModelOptions = {}): Promise<ModelPackage> {
  return openModelPackage(readManifest(dir, options), options)
}

/** Checks the files a read manifest names (paths, sha256), reads the tokenizer and resolves the prompts. */
export async function openModelPackage(file: ManifestFile, options: Pick<LoadModelOptions, 'verifyHashes'> = {}): Promise<ModelPackage> {
  const { dir, manifest, fingerprint } = file
  const paths = new Map<string, string>()
  for (const [name, graph] of Object.entries(manifest.graphs)) paths.set(name, confined(dir, graph.file, `graphs.${name}.file`))
  const tokenizerPath = confined(dir, manifest.tokenizer.file, 'tokenizer.file')
  if (options.verifyHashes !== false) {
    for (const [name, graph] of Object.entries(manifest.graphs)) {
      const actual = await fileSha256(paths.get(name)!)
      if (actual !== graph.sha256) throw new ModelManifestError(`graphs.${name}.sha256`, `${graph.file} has sha256 ${actual}, the manifest says ${graph.sha256} (corrupt or modified file)`)
    }
    for (const [name, entry] of Object.entries(manifest.files ?? {})) {
      const actual = await fileSha256(confined(dir, name, `files.${name}`))
      if (actual !== entry.sha256) throw new ModelManifestError(`files.${name}.sha256`, `${name} has sha256 ${actual}, the manifest says ${entry.sha256}`)
    }
  }

  const tokenizerText = await readFile(tokenizerPath, 'utf8')
  const tokenizer: TextTokenizer =
    manifest.tokenizer.type === 'word'
      ? WordTokenizer.fromText(tokenizerText, {
          splitPunctuation: manifest.tokenizer.split_punctuation ?? [],
          ...(manifest.tokenizer.unknown ? { unknown: manifest.tokenizer.unknown } : {}),
        })
      : new HfTokenizer(JSON.parse(tokenizerText), hfTokenizerConfig(manifest.tokenizer))
  if (tokenizer.vocabSize !== manifest.dims.vocab_size) {
    throw new ModelManifestError('dims.vocab_size', `is ${manifest.dims.vocab_size} but ${manifest.tokenizer.file} has ${tokenizer.vocabSize} tokens`)
  }
  for (const [name, id] of Object.entries(manifest.special_tokens)) {
    if (id !== undefined && id >= manifest.dims.vocab_size) throw new ModelManifestError(`special_tokens.${name}`, `id ${id} is outside the vocabulary (${manifest.dims.vocab_size})`)
  }
  const prompts = { caption: compilePrompt(manifest.prompts.caption, tokenizer, 'prompts.caption'), vqa: compilePrompt(manifest.prompts.vqa, tokenizer, 'prompts.vqa') }
  return {
    dir,
    manifest,
    tokenizer,
    prompts,
    graphPath: (graph) => {
      const path = paths.get(graph)
      if (!path) throw new ModelManifestError(`graphs.${graph}`, `the model has no graph ${graph} (graphs: ${[...paths.keys()].join(', ')})`)
      return path
    },
    fingerprint,
  }
}
