import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'

import { ModelManifestError } from '../../src/errors.js'
import { HfTokenizer, WordTokenizer } from '../../src/model/tokenizer.js'
import { ROOT } from '../helpers/cli.js'

const vocabText = readFileSync(`${ROOT}/fixtures/scenes/vocab.txt`, 'utf8')

describe('WordTokenizer', () => {
  const tokenizer = WordTokenizer.fromText(vocabText, { splitPunctuation: ['?'] })

  it('encodes words to vocabulary line numbers, splitting ? off', () => {
    const ids = tokenizer.encode('where is the red circle?')
    expect(ids.map((id) => tokenizer.vocabulary[id])).toEqual(['where', 'is', 'the', 'red', 'circle', '?'])
    expect(tokenizer.vocabSize).toBe(65)
    expect(tokenizer.tokenId('<bos>')).toBe(1)
  })

  it('maps unknown words to <unk> and decodes skipping special tokens', () => {
    const ids = tokenizer.encode('a large zebra')
    expect(ids[2]).toBe(tokenizer.tokenId('<unk>'))
    const bos = tokenizer.tokenId('<bos>')!
    const eos = tokenizer.tokenId('<eos>')!
    expect(tokenizer.decode([bos, ...tokenizer.encode('a large red circle on the left'), eos])).toBe('a large red circle on the left')
    expect(tokenizer.decode(tokenizer.encode('how many stars are there?'))).toBe('how many stars are there?')
  })

  it('rejects a malformed vocabulary with ModelManifestError', () => {
    expect(() => WordTokenizer.fromText('a\na\n<unk>\n')).toThrow(ModelManifestError)
    expect(() => WordTokenizer.fromText('a\nb\n')).toThrow(/unknown token/)
    expect(() => WordTokenizer.fromText('a b\n<unk>\n')).toThrow(/one non-empty word/)
  })
})

describe('HfTokenizer', () => {
  // A tiny WordLevel tokenizer.json in the Hugging Face format.
  const json = {
    version: '1.0',
    added_tokens: [
      { id: 0, content: '[UNK]', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 1, content: '[BOS]', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordLevel', vocab: { '[UNK]': 0, '[BOS]': 1, a: 2, red: 3, circle: 4, '?': 5 }, unk_token: '[UNK]' },
  }

  it('encodes and decodes with a tokenizer.json', () => {
    const tokenizer = new HfTokenizer(json)
    expect(tokenizer.encode('A red circle?')).toEqual([2, 3, 4, 5])
    expect(tokenizer.encode('a blue circle')).toEqual([2, 0, 4])
    expect(tokenizer.decode([1, 2, 3, 4])).toBe('a red circle')
    expect(tokenizer.tokenId('[BOS]')).toBe(1)
    expect(tokenizer.vocabSize).toBe(6)
  })

  it('rejects what is not a tokenizer.json', () => {
    expect(() => new HfTokenizer(null)).toThrow(ModelManifestError)
  })
})
