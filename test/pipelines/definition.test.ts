/**
 * What the pipelines declare (pipelines/definition.ts): which settings decide the output (they alone are
 * stored in output files and hashed), and the CLI help, whose defaults come from each pipeline's own defaults.
 */
import { z } from 'zod'
import { describe, expect, it } from 'vitest'

import { bytes, flagHelp, int, pipelineConfig } from '../../pipelines/definition.js'
import { pipelines } from '../../pipelines/index.js'

const help = (pipeline: string, key: string) => {
  const definition = pipelines[pipeline]
  return flagHelp(definition.flags.find((f) => f.key === key)!, definition.defaults)
}

describe('pipeline configs', () => {
  it('split each pipeline\'s settings into those that decide the output and engine settings', () => {
    // every key of the schema (the thread settings have no default value: the model's size decides them)
    const keys = (d: (typeof pipelines)[string]) => Object.keys((d.schema as unknown as { shape: object }).shape)
    const split = Object.fromEntries(Object.entries(pipelines).map(([name, d]) => [name, { output: d.outputKeys, engine: keys(d).filter((k) => !d.outputKeys.includes(k)).sort() }]))
    const modelEngine = ['batchSize', 'concurrency', 'decodeTimeoutMs', 'inferenceThreads', 'intraOpThreads', 'maxPixelsInFlight', 'maxWaitMs', 'model', 'provider', 'strictProvider']
    expect(split).toEqual({
      scan: { output: ['size', 'maxPixels', 'maxBytes'], engine: ['concurrency', 'decodeTimeoutMs', 'maxPixelsInFlight'] },
      caption: { output: ['maxPixels', 'maxBytes', 'decoder', 'maxNewTokens', 'beams'], engine: [...modelEngine, 'slots', 'continuous'].sort() },
      'video-caption': { output: ['maxPixels', 'maxBytes', 'decoder', 'maxNewTokens', 'beams'], engine: [...modelEngine, 'slots', 'continuous'].sort() },
      vqa: { output: ['maxPixels', 'maxBytes', 'decoder', 'maxNewTokens', 'beams', 'questionColumn', 'questions'], engine: [...modelEngine, 'slots', 'continuous'].sort() },
      embed: { output: ['maxPixels', 'maxBytes', 'decoder', 'normalize'], engine: modelEngine },
    })
  })

  it('pipelineConfig refuses a key that is both an output and an engine setting', () => {
    expect(() => pipelineConfig({ beams: z.number() }, { beams: z.number() })).toThrow('beams: is both an output and an engine setting')
  })
})

describe('flagHelp', () => {
  it('shows each pipeline\'s own default', () => {
    expect(help('vqa', 'maxNewTokens')).toBe('most generated tokens per text (default 8)')
    expect(help('caption', 'maxNewTokens')).toBe('most generated tokens per text (default 32)')
    expect(help('scan', 'size')).toBe('decode to this square size (default 64)')
    expect(help('vqa', 'questionColumn')).toBe('input column with the question (default question)')
  })

  it('formats byte sizes, names machine-dependent defaults in words, and shows none for switches and empty lists', () => {
    expect(help('caption', 'maxBytes')).toBe('reject images larger than this (bytes, or with a unit: 64MiB, 512KiB) (default 64 MiB = 67108864 bytes)')
    expect(help('scan', 'maxBytes')).toBe(help('caption', 'maxBytes'))
    expect(help('caption', 'inferenceThreads')).toBe('inference threads, each with its own ONNX Runtime sessions (default: the number of cores; 1 for a model over 256 MiB of weights)')
    expect(help('caption', 'strictProvider')).toBe('fail instead of falling back to cpu when the provider cannot start')
    expect(help('vqa', 'questions')).toBe('ask this of every image (repeat for several; overrides the column)')
  })
})

describe('flag parsers', () => {
  it('int takes whole numbers only: 2.5, 2x, an empty text throw (the CLI turns that into a usage error, exit 2)', () => {
    expect(int('32')).toBe(32)
    expect(int(' -3 ')).toBe(-3)
    for (const text of ['2.5', '2x', '', '1e3', 'NaN', '99999999999999999999']) expect(() => int(text)).toThrow(RangeError)
    expect(() => int('2.5')).toThrow('expected an integer, got "2.5"')
  })

  it('bytes takes a byte count, or one with a binary unit', () => {
    expect(bytes('67108864')).toBe(67108864)
    expect(bytes('64MiB')).toBe(67108864)
    expect(bytes('64m')).toBe(67108864)
    expect(bytes('512 KiB')).toBe(524288)
    expect(bytes('1GiB')).toBe(2 ** 30)
    for (const text of ['64.5', '64MB?', 'lots', '', '-1']) expect(() => bytes(text)).toThrow(RangeError)
  })
})
