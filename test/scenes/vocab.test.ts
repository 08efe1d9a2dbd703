import { readFileSync } from 'node:fs'

import { describe, expect, it } from 'vitest'

import { buildVocabulary, captionOf, grammarPhrases, sampleQuestions, tokenize } from '../../scenes/grammar.js'
import { Rng } from '../../scenes/rng.js'
import { sampleImageScene, sampleVideoScene } from '../../scenes/scene.js'
import { SPECIAL_TOKENS } from '../../scenes/words.js'

const VOCAB_FILE = new URL('../../fixtures/scenes/vocab.txt', import.meta.url)

describe('vocabulary', () => {
  it('fixtures/scenes/vocab.txt is the one the code builds (regenerate: npm run data, see fixtures/scenes/README.md)', () => {
    expect(readFileSync(VOCAB_FILE, 'utf8')).toBe(buildVocabulary().join('\n') + '\n')
  })

  it('starts with the special tokens and has no duplicates', () => {
    const vocab = buildVocabulary()
    expect(vocab.slice(0, SPECIAL_TOKENS.length)).toEqual([...SPECIAL_TOKENS])
    expect(vocab.slice(0, 5)).toEqual(['<pad>', '<bos>', '<eos>', '<unk>', '<sep>'])
    expect(new Set(vocab).size).toBe(vocab.length)
  })

  it('is exactly the set of words the generator produces (captions, questions, answers)', () => {
    const produced = new Set<string>()
    const add = (text: string) => tokenize(text).forEach((w) => produced.add(w))
    for (let i = 0; i < 4000; i++) {
      const rng = new Rng([99, i])
      const scene = i % 3 === 2 ? sampleVideoScene(rng) : sampleImageScene(rng)
      add(captionOf(scene))
      for (const { question, answer } of sampleQuestions(scene, rng)) {
        add(question)
        add(answer)
      }
    }
    const words = buildVocabulary().slice(SPECIAL_TOKENS.length)
    expect([...produced].sort()).toEqual(words)
  })

  it('covers every phrase of the exhaustive grammar', () => {
    const vocab = new Set(buildVocabulary())
    for (const phrase of grammarPhrases()) for (const w of tokenize(phrase)) expect(vocab.has(w), w).toBe(true)
  })
})
