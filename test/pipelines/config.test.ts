/**
 * What a run stores in each output file (`evflow.config`) and hashes (`evflow.config_hash`, which decides
 * what a rerun skips): only the settings that decide the output. The stored strings are exactly those
 * evflow 0.1.0 wrote (produced by the code before the options were split by meaning). The hashes of the
 * model pipelines differ from 0.1.0's: they name the decoder (`decoder`, issue #19: the fast JPEG/PNG path
 * gives slightly different pixels than sharp), and 0.1.0 left the model's fingerprint out (its key `identity.model` was
 * dropped as if it were the engine setting `model`): now another model gives another hash. A change here
 * changes the bytes of every output file and makes every committed shard look stale.
 *
 * The text pipelines (caption, video-caption, vqa) also name their result columns in the identity since
 * they write `finish_reason` and the log-probabilities: outputs written without those columns are redone
 * once, rather than left beside new ones with another schema.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

import { tempDir } from '../helpers/util.js'

import { pipelines } from '../../pipelines/index.js'
import { runConfig } from '../../pipelines/run.js'

const MODEL = '16cecd436567133b79a043b8d1208a819031948f517a19483b6ad6e39cc70623'
const READ = '"read":{"imageColumn":null,"idColumn":null,"keep":[]}'
const IDENTITY = `"identity":{"model":"${MODEL}"}`
const TEXT = (...columns: string[]) => `"identity":{"model":"${MODEL}","columns":${JSON.stringify(columns)}}`
const CAPTION = TEXT('caption', 'finish_reason', 'mean_logprob', 'min_logprob')

const cases: { pipeline: string; settings: Record<string, unknown>; keep?: string[]; hash: string; output: string }[] = [
  { pipeline: 'scan', settings: {}, hash: 'd33c69ded5d09027', output: `{"pipeline":"scan","scan":{"size":64,"maxPixels":64000000,"maxBytes":67108864},${READ}}` },
  { pipeline: 'scan', settings: { size: 32, maxPixels: 1000, concurrency: 3 }, hash: '630c249be4e8b6e9', output: `{"pipeline":"scan","scan":{"size":32,"maxPixels":1000,"maxBytes":67108864},${READ}}` },
  { pipeline: 'caption', settings: {}, hash: 'c2158bb37fe7ca92', output: `{"pipeline":"caption","caption":{"maxPixels":64000000,"maxBytes":67108864,"decoder":"auto","maxNewTokens":32,"beams":1},${READ},${CAPTION}}` },
  {
    pipeline: 'caption',
    settings: { maxNewTokens: 5, beams: 3, slots: 2, continuous: false, batchSize: 4, inferenceThreads: 1, intraOpThreads: 2 },
    hash: 'ebc3c68639719856',
    output: `{"pipeline":"caption","caption":{"maxPixels":64000000,"maxBytes":67108864,"decoder":"auto","maxNewTokens":5,"beams":3},${READ},${CAPTION}}`,
  },
  { pipeline: 'video-caption', settings: {}, hash: 'fe849a85462ef065', output: `{"pipeline":"video-caption","video-caption":{"maxPixels":64000000,"maxBytes":67108864,"decoder":"auto","maxNewTokens":32,"beams":1},${READ},${CAPTION}}` },
  { pipeline: 'vqa', settings: {}, hash: '9406f024bbc49a16', output: `{"pipeline":"vqa","vqa":{"maxPixels":64000000,"maxBytes":67108864,"decoder":"auto","maxNewTokens":8,"beams":1,"questionColumn":"question","questions":[]},${READ},${TEXT('answer', 'finish_reason', 'mean_logprob', 'min_logprob')}}` },
  {
    pipeline: 'vqa',
    settings: { questions: ['what?', 'why?'], maxNewTokens: 4 },
    hash: 'fe94c74356887f52',
    output: `{"pipeline":"vqa","vqa":{"maxPixels":64000000,"maxBytes":67108864,"decoder":"auto","maxNewTokens":4,"beams":1,"questionColumn":"question","questions":["what?","why?"]},${READ},${TEXT('questions', 'answers', 'finish_reasons', 'mean_logprobs', 'min_logprobs')}}`,
  },
  { pipeline: 'embed', settings: {}, hash: '162798d8a1fb1364', output: `{"pipeline":"embed","embed":{"maxPixels":64000000,"maxBytes":67108864,"decoder":"auto","normalize":true},${READ},${IDENTITY}}` },
  {
    pipeline: 'embed',
    settings: { normalize: false, maxBytes: 1000 },
    keep: ['a'],
    hash: '11234f6e6f11e2b1',
    output: `{"pipeline":"embed","embed":{"maxPixels":64000000,"maxBytes":1000,"decoder":"auto","normalize":false},"read":{"imageColumn":null,"idColumn":null,"keep":["a"]},${IDENTITY}}`,
  },
]

describe('runConfig: the output config and config hash', () => {
  const { dir, cleanup } = tempDir('evflow-config-')
  afterAll(cleanup)

  for (const c of cases) {
    it(`${c.pipeline} ${JSON.stringify(c.settings)}`, () => {
      const definition = pipelines[c.pipeline]
      const config = definition.schema.parse({ ...definition.defaults, ...c.settings })
      const { hash, output } = runConfig(definition, config, { inputs: ['in'], outDir: 'out', ...(c.keep ? { keep: c.keep } : {}) })
      expect(JSON.stringify(output)).toBe(c.output)
      expect(hash).toBe(c.hash)
    })
  }

  it('another model (another manifest fingerprint) gives another hash; the same model in another folder the same', () => {
    const definition = pipelines.caption
    const manifest = readFileSync(join(definition.defaults.model as string, 'manifest.json'), 'utf8')
    const place = (name: string, text: string) => {
      mkdirSync(join(dir, name))
      writeFileSync(join(dir, name, 'manifest.json'), text)
      return runConfig(definition, definition.schema.parse({ ...definition.defaults, model: join(dir, name) }), { inputs: ['in'], outDir: 'out' })
    }
    const bundled = runConfig(definition, definition.schema.parse({ ...definition.defaults }), { inputs: ['in'], outDir: 'out' })
    expect(place('moved', manifest).hash).toBe(bundled.hash)
    const other = place('other', manifest.replace('"name": "evlm-tiny"', '"name": "evlm-other"'))
    expect(other.hash).not.toBe(bundled.hash)
    expect((other.output.identity as { model: string }).model).not.toBe(MODEL)
  })

  it('speed settings change neither the output config nor the hash', () => {
    const definition = pipelines.caption
    const base = runConfig(definition, definition.schema.parse({ ...definition.defaults }), { inputs: ['in'], outDir: 'out' })
    const fast = runConfig(definition, definition.schema.parse({ ...definition.defaults, batchSize: 3, maxWaitMs: 1, inferenceThreads: 3, intraOpThreads: 2, concurrency: 1, slots: 1, continuous: false }), { inputs: ['in'], outDir: 'out' })
    expect(fast.hash).toBe(base.hash)
    expect(JSON.stringify(fast.output)).toBe(JSON.stringify(base.output))
  })
})
