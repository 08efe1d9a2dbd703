import { createHash } from 'node:crypto'
import { copyFileSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

import { ModelManifestError } from '../../src/errors.js'
import { REQUIRED_GRAPHS, readManifest } from '../../src/model/manifest.js'
import { loadModelPackage } from '../../src/model/package.js'
import { ROOT } from '../helpers/cli.js'
import { tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex')

/** A structurally valid package whose graphs are all the tiny test graph (the loader never runs them). */
function writePackage(edit: (m: Record<string, any>) => void = () => {}): void {
  copyFileSync(join(ROOT, 'fixtures', 'onnx', 'tiny-linear.onnx'), join(dir, 'g.onnx'))
  copyFileSync(join(ROOT, 'fixtures', 'scenes', 'vocab.txt'), join(dir, 'vocab.txt'))
  const graph = { file: 'g.onnx', inputs: [{ name: 'x', dtype: 'float32', shape: ['B', 4] }], outputs: [{ name: 'y', dtype: 'float32', shape: ['B', 2] }], sha256: sha(join(dir, 'g.onnx')) }
  const manifest: Record<string, any> = {
    format: 'evflow-model/1',
    name: 'test',
    dims: { image_size: 64, patch_size: 8, vit_dim: 128, d_visual: 128, n_taps: 3, n_patches: 64, n_query: 8, n_experts: 8, top_k: 2, shared_expert: true, d_model: 192, n_layer: 4, n_head: 6, head_dim: 32, vocab_size: 65, max_frames: 8, max_text_len: 40 },
    taps: [2, 4, 6],
    tap_for_layer: [0, 1, 2, 2],
    experts: { form: 'evlm', n_experts: 8, top_k: 2, shared_expert: true },
    preprocessing: { size: 64, resize: 'fill', mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
    tokenizer: { type: 'word', file: 'vocab.txt', split_punctuation: ['?'], unknown: '<unk>' },
    special_tokens: { pad: 0, bos: 1, eos: 2, unk: 3, sep: 4 },
    prompts: { caption: ['<bos>'], vqa: ['<bos>', '{question}', '<sep>'] },
    generation: { max_new_tokens: 32, strategy: 'greedy' },
    graphs: Object.fromEntries(REQUIRED_GRAPHS.map((g) => [g, { ...graph }])),
    files: { 'vocab.txt': { sha256: sha(join(dir, 'vocab.txt')) } },
  }
  edit(manifest)
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest))
}

beforeEach(() => ({ dir, cleanup } = tempDir('evflow-model-')))
afterEach(() => cleanup())

async function failure(): Promise<ModelManifestError> {
  const error = await loadModelPackage(dir).then(() => undefined, (e: unknown) => e)
  expect(error).toBeInstanceOf(ModelManifestError)
  return error as ModelManifestError
}

describe('loadModelPackage', () => {
  it('loads a valid package: manifest, graph paths, tokenizer, prompts, fingerprint', async () => {
    writePackage()
    const model = await loadModelPackage(dir)
    expect(model.manifest.dims.n_layer).toBe(4)
    expect(model.graphPath('vit')).toBe(join(model.dir, 'g.onnx'))
    expect(model.tokenizer.decode(model.tokenizer.encode('a red circle?'))).toBe('a red circle?')
    const token = (t: string) => model.tokenizer.tokenId(t)!
    expect(model.prompts).toEqual({ caption: { before: [token('<bos>')], asks: false, after: [] }, vqa: { before: [token('<bos>')], asks: true, after: [token('<sep>')] } })
    expect(model.fingerprint).toBe(sha(join(dir, 'manifest.json')))
    expect(() => model.graphPath('nope')).toThrow(/has no graph nope/)
  })

  it('readManifest: validates the manifest alone, synchronously, with the fingerprint of its bytes', () => {
    writePackage()
    const read = readManifest(dir)
    expect([read.manifest.name, read.fingerprint]).toEqual(['test', sha(join(dir, 'manifest.json'))])
    writePackage((m) => delete m.prompts)
    expect(() => readManifest(dir)).toThrow('manifest prompts: ')
  })

  it('checks the prompt templates: the question slot once in vqa, never in caption, known tokens', async () => {
    writePackage((m) => (m.prompts.vqa = ['<bos>', '<sep>']))
    expect([(await failure()).field, (await failure()).message]).toEqual(['prompts.vqa', 'manifest prompts.vqa: must hold {question} exactly once, found 0'])
    writePackage((m) => (m.prompts.caption = ['<bos>', '{question}']))
    expect((await failure()).field).toBe('prompts.caption')
    writePackage((m) => (m.prompts.vqa = ['<bos>', '{question}', '<eoq>']))
    expect([(await failure()).field, (await failure()).message]).toEqual(['prompts.vqa.2', 'manifest prompts.vqa.2: the prompt token <eoq> is not in the vocabulary'])
  })

  it('names the field of a missing or malformed manifest entry', async () => {
    writePackage((m) => delete m.dims.n_layer)
    expect((await failure()).field).toBe('dims.n_layer')
    writePackage((m) => (m.format = 'other/9'))
    expect((await failure()).field).toBe('format')
    writePackage((m) => (m.preprocessing.resize = 'squash'))
    expect((await failure()).field).toBe('preprocessing.resize')
    writePackage((m) => delete m.graphs.decoder)
    expect((await failure()).field).toBe('graphs.decoder')
    writePackage((m) => (m.tap_for_layer = [0, 1, 5, 2]))
    expect((await failure()).field).toBe('tap_for_layer.2')
    writePackage((m) => (m.dims.vocab_size = 70))
    expect((await failure()).message).toMatch(/vocab.txt has 65 tokens/)
  })

  it('refuses files that leave the package folder, by path or by link', async () => {
    writePackage((m) => (m.graphs.vit.file = '../outside.onnx'))
    expect((await failure()).message).toMatch(/leaves the model folder/)
    writePackage((m) => (m.graphs.vit.file = '/etc/passwd'))
    expect((await failure()).message).toMatch(/relative to the package/)
    symlinkSync(join(ROOT, 'fixtures', 'onnx', 'tiny-linear.onnx'), join(dir, 'link.onnx'))
    writePackage((m) => (m.graphs.vit.file = 'link.onnx'))
    expect((await failure()).message).toMatch(/links outside the model folder/)
  })

  it('detects a modified file by its sha256', async () => {
    writePackage()
    writeFileSync(join(dir, 'g.onnx'), Buffer.concat([readFileSync(join(dir, 'g.onnx')), Buffer.from([0])]))
    expect((await failure()).field).toMatch(/^graphs\.\w+\.sha256$/)
    expect((await loadModelPackage(dir, { verifyHashes: false })).manifest.name).toBe('test')
  })

  it('reports a missing folder, manifest or invalid JSON', async () => {
    await expect(loadModelPackage(join(dir, 'nope'))).rejects.toThrow(`manifest dir: model folder ${join(dir, 'nope')} does not exist (pass --model DIR, a folder with manifest.json)`)
    await expect(loadModelPackage(dir)).rejects.toThrow(/manifest.json: not found/)
    writeFileSync(join(dir, 'manifest.json'), '{')
    await expect(loadModelPackage(dir)).rejects.toThrow(/not valid JSON/)
  })
})

describe('the declared domain (manifest `domain`, or domain.json bound to the manifest)', () => {
  const domain = { synthetic: true, trained_on: 'generated shapes', vocabulary: 'a closed list of 65 words' }

  it('the bundled evlm-tiny declares a synthetic domain in its domain.json, bound to its exact manifest', () => {
    const bundled = readManifest(join(ROOT, 'fixtures', 'models', 'evlm-tiny'))
    expect(bundled.domainSource).toBe('domain.json')
    expect(bundled.domain).toMatchObject({ synthetic: true })
    const sidecar = JSON.parse(readFileSync(join(ROOT, 'fixtures', 'models', 'evlm-tiny', 'domain.json'), 'utf8')) as { manifest_sha256: string }
    expect(sidecar.manifest_sha256).toBe(bundled.fingerprint)
  })

  it('reads the manifest\'s own domain first; without one, domain.json; without either, none', () => {
    writePackage()
    expect(readManifest(dir)).toMatchObject({ domain: null, domainSource: null })
    writeFileSync(join(dir, 'domain.json'), JSON.stringify({ manifest_sha256: sha(join(dir, 'manifest.json')), domain }))
    expect(readManifest(dir)).toMatchObject({ domain, domainSource: 'domain.json' })
    writePackage((m) => (m.domain = { synthetic: false, trained_on: 'photos' }))
    expect(readManifest(dir)).toMatchObject({ domain: { synthetic: false, trained_on: 'photos' }, domainSource: 'manifest.json' })
  })

  it('refuses a domain.json written for another manifest (a retrained model) or malformed, naming the file', () => {
    writePackage()
    writeFileSync(join(dir, 'domain.json'), JSON.stringify({ manifest_sha256: '0'.repeat(64), domain }))
    expect(() => readManifest(dir)).toThrow(/manifest domain\.json: declares the domain of another manifest .*update its manifest_sha256/)
    writeFileSync(join(dir, 'domain.json'), JSON.stringify({ manifest_sha256: sha(join(dir, 'manifest.json')), domain: { synthetic: 'yes' } }))
    expect(() => readManifest(dir)).toThrow(ModelManifestError)
    writeFileSync(join(dir, 'domain.json'), '{')
    expect(() => readManifest(dir)).toThrow(/domain\.json: is not valid JSON/)
    writePackage((m) => (m.domain = { synthetic: 'no' }))
    expect(() => readManifest(dir)).toThrow(/manifest domain\.synthetic: /)
  })
})
