/**
 * Text tokenizers of model packages: the word-level vocabulary of the reference model, and Hugging Face
 * `tokenizer.json` files (via `@huggingface/tokenizers`) for real models. Both encode without special tokens
 * (the decoding loop adds `<bos>` / `<sep>` itself) and decode skipping them.
 */
import { Tokenizer } from '@huggingface/tokenizers'

import { ModelManifestError } from '../errors.js'

export interface TextTokenizer {
  readonly vocabSize: number
  /** Token ids of `text`, no special tokens added. */
  encode(text: string): number[]
  /** Text of `ids`, special tokens skipped. */
  decode(ids: readonly number[]): string
  /** The id of a token (special tokens included), if it exists. */
  tokenId(token: string): number | undefined
  /**
   * The words of `text` the vocabulary cannot represent (each would be encoded as the unknown token), in
   * order, without repeats: empty for a tokenizer that can represent any text (byte-level BPE). A question
   * with such words is refused (`question-out-of-vocabulary`) rather than answered from `<unk>`s.
   */
  unknownWords?(text: string): string[]
}

export interface WordTokenizerOptions {
  /** Characters split off as tokens of their own (the reference model: `?`). Default none. */
  splitPunctuation?: readonly string[]
  /** The unknown-word token. Default `<unk>`. */
  unknown?: string
  /** Tokens skipped when decoding. Default: those that look like `<...>`. */
  special?: readonly string[]
}

/** Whitespace-separated words, one vocabulary line per token (id = line number). */
export class WordTokenizer implements TextTokenizer {
  private readonly ids = new Map<string, number>()
  private readonly special: Set<number>
  private readonly unknownId: number
  private readonly split: RegExp | undefined

  constructor(
    readonly vocabulary: readonly string[],
    options: WordTokenizerOptions = {},
  ) {
    vocabulary.forEach((token, id) => {
      if (token.length === 0 || /\s/.test(token)) throw new ModelManifestError('tokenizer.file', `line ${id + 1}: a token must be one non-empty word, got ${JSON.stringify(token)}`)
      if (this.ids.has(token)) throw new ModelManifestError('tokenizer.file', `line ${id + 1}: duplicate token ${JSON.stringify(token)}`)
      this.ids.set(token, id)
    })
    const unknown = options.unknown ?? '<unk>'
    const unknownId = this.ids.get(unknown)
    if (unknownId === undefined) throw new ModelManifestError('tokenizer.file', `the vocabulary has no unknown token ${unknown}`)
    this.unknownId = unknownId
    const special = options.special ?? vocabulary.filter((t) => /^<.+>$/.test(t))
    this.special = new Set(special.map((t) => this.ids.get(t)).filter((id): id is number => id !== undefined))
    const punctuation = options.splitPunctuation ?? []
    this.split = punctuation.length > 0 ? new RegExp(`([${punctuation.map((p) => p.replace(/[\\\]^-]/g, '\\$&')).join('')}])`, 'g') : undefined
  }

  /** Parses a vocabulary file's text (one token per line; a trailing newline is allowed). */
  static fromText(text: string, options?: WordTokenizerOptions): WordTokenizer {
    const lines = text.split('\n')
    if (lines.at(-1) === '') lines.pop()
    return new WordTokenizer(lines, options)
  }

  get vocabSize(): number {
    return this.vocabulary.length
  }

  encode(text: string): number[] {
    return this.words(text).map((word) => this.idOf(word))
  }

  unknownWords(text: string): string[] {
    return [...new Set(this.words(text).filter((word) => this.idOf(word) === this.unknownId))]
  }

  /** The words of `text`: split at whitespace, punctuation of `splitPunctuation` split off. */
  private words(text: string): string[] {
    const spaced = this.split ? text.replace(this.split, ' $1 ') : text
    return spaced.split(/\s+/).filter(Boolean)
  }

  private idOf(word: string): number {
    return this.ids.get(word) ?? this.ids.get(word.toLowerCase()) ?? this.unknownId
  }

  decode(ids: readonly number[]): string {
    const words: string[] = []
    for (const id of ids) {
      if (this.special.has(id)) continue
      const word = this.vocabulary[id]
      if (word === undefined) continue
      if (this.split && word.length === 1 && this.split.source.includes(word) && words.length > 0) words[words.length - 1] += word
      else words.push(word)
    }
    return words.join(' ')
  }

  tokenId(token: string): number | undefined {
    return this.ids.get(token)
  }
}

/** A Hugging Face `tokenizer.json` (BPE, WordPiece, Unigram, WordLevel) through `@huggingface/tokenizers`. */
export class HfTokenizer implements TextTokenizer {
  private readonly tokenizer: Tokenizer
  private readonly vocab: Map<string, number>
  private readonly unknownId: number | undefined

  constructor(tokenizerJson: unknown, config: object = {}) {
    if (!tokenizerJson || typeof tokenizerJson !== 'object') throw new ModelManifestError('tokenizer.file', 'tokenizer.json is not a JSON object')
    try {
      this.tokenizer = new Tokenizer(tokenizerJson, config)
    } catch (cause) {
      throw new ModelManifestError('tokenizer.file', `cannot load tokenizer.json: ${(cause as Error).message}`, { cause })
    }
    const json = tokenizerJson as { model?: { vocab?: unknown; unk_token?: string }; added_tokens?: { id: number; content: string }[] }
    this.vocab = new Map()
    const vocab = json.model?.vocab
    if (Array.isArray(vocab)) vocab.forEach((entry, id) => this.vocab.set(Array.isArray(entry) ? String(entry[0]) : String(entry), id))
    else if (vocab && typeof vocab === 'object') for (const [token, id] of Object.entries(vocab)) this.vocab.set(token, Number(id))
    for (const added of json.added_tokens ?? []) this.vocab.set(added.content, added.id)
    this.unknownId = json.model?.unk_token === undefined ? undefined : this.vocab.get(json.model.unk_token)
  }

  get vocabSize(): number {
    return this.vocab.size
  }

  encode(text: string): number[] {
    // Some models of the library leave out-of-vocabulary ids undefined instead of using `unk_token`.
    return (this.tokenizer.encode(text, { add_special_tokens: false }).ids as (number | undefined)[]).map((id) => {
      if (id !== undefined) return id
      if (this.unknownId === undefined) throw new ModelManifestError('tokenizer.file', `cannot encode ${JSON.stringify(text)}: a word is out of the vocabulary and the model has no unk_token`)
      return this.unknownId
    })
  }

  decode(ids: readonly number[]): string {
    // the library refuses an empty list (a text that ended at once)
    if (ids.length === 0) return ''
    return this.tokenizer.decode([...ids], { skip_special_tokens: true })
  }

  /** Whitespace-separated words whose encoding holds the model's `unk_token` (none without one). */
  unknownWords(text: string): string[] {
    const unknown = this.unknownId
    if (unknown === undefined) return []
    const words = text.split(/\s+/).filter(Boolean)
    return [...new Set(words.filter((word) => (this.tokenizer.encode(word, { add_special_tokens: false }).ids as (number | undefined)[]).some((id) => id === undefined || id === unknown)))]
  }

  tokenId(token: string): number | undefined {
    return this.vocab.get(token)
  }
}
