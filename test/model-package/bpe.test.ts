/**
 * The byte-level BPE tokenizer of model/bpe.py (the tokenizer of evlm-base, built by model/build_base.py) read by
 * the runtime's Hugging Face tokenizer path: `HfTokenizer` (src/model/tokenizer.ts, @huggingface/tokenizers) must
 * load the tokenizer.json the Python trainer writes and give, on a sample of texts (ASCII, accents, CJK, emoji,
 * numbers, code, contractions, odd whitespace, special tokens written in the text), exactly the token ids of the
 * Python encoder, which the PyTorch references of a package are computed with, and decode them back to the text.
 *
 * Trains a 2,000-token tokenizer on the repository's docs/*.md with Debian's /usr/bin/python3 (no torch needed);
 * skipped, with a notice, where that Python is missing.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { HfTokenizer } from '../../src/model/tokenizer.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const PYTHON = '/usr/bin/python3'
const HAVE_PYTHON = existsSync(PYTHON) && spawnSync(PYTHON, ['-c', 'import re, unicodedata'], { encoding: 'utf8' }).status === 0
if (!HAVE_PYTHON) console.warn(`NOTICE: test/model-package/bpe: ${PYTHON} is missing: SKIPPING the byte-level BPE tokenizer tests`)

const TEXTS = [
  'a small red circle at the top left',
  'what color is the large triangle?',
  "Hello, world! It's 2024; don't   panic.\n\tTabs\tand\nnewlines  \n",
  'Numbers: 3.14159, 1e-10, 0x1F, 12345678901234567890',
  'Ünïcödé façade naïve café — “quotes” ‘single’ …',
  '日本語のテキストと中文文本, 한국어',
  'emoji 😀🚀 and flags 🇫🇷, a family 👨‍👩‍👧',
  'def f(x):\n    return x ** 2  # square\n',
  '<bos> special tokens <sep> written in the text',
  'nbsp\u00a0here, thin\u2009space, line\u2028separator',
  '   leading spaces and trailing   ',
  "I'll we've they're he'd she's 'tis OK'S",
  'Ⅻ ² ½ ٣ numerals of other kinds',
  'spaced punctuation . , ? ! stays as it is',
]

interface Sample { text: string, ids: number[], decoded: string }

describe.skipIf(!HAVE_PYTHON)('byte-level BPE tokenizer (model/bpe.py) through HfTokenizer', () => {
  let dir: string
  let json: unknown
  let samples: Sample[]

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'evflow-bpe-'))
    const docs = readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => join(ROOT, 'docs', f))
    writeFileSync(join(dir, 'texts.json'), JSON.stringify(TEXTS))
    const r = spawnSync(PYTHON, ['model/bpe.py', '--out', join(dir, 'tokenizer.json'), '--vocab-size', '2000', '--text', ...docs,
      '--samples', join(dir, 'texts.json'), join(dir, 'samples.json')], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } })
    if (r.status !== 0) throw new Error(`model/bpe.py failed: ${r.stderr}`)
    json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'))
    samples = JSON.parse(readFileSync(join(dir, 'samples.json'), 'utf8')) as Sample[]
  })
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('loads, with the special tokens at ids 0-4 and the requested size', () => {
    const tok = new HfTokenizer(json)
    expect(tok.vocabSize).toBe(2000)
    expect(['<pad>', '<bos>', '<eos>', '<unk>', '<sep>'].map((t) => tok.tokenId(t))).toEqual([0, 1, 2, 3, 4])
    expect(samples.map((s) => s.text)).toEqual(TEXTS)
  })

  it('encodes every sample to exactly the Python encoder\'s ids', () => {
    const tok = new HfTokenizer(json)
    for (const s of samples) expect(tok.encode(s.text), JSON.stringify(s.text)).toEqual(s.ids)
    // special tokens written in the text are matched as themselves
    expect(samples[8].ids.slice(0, 1)).toEqual([1])
  })

  it('decodes the ids back to the text (special tokens skipped) with clean_up_tokenization_spaces off', () => {
    const tok = new HfTokenizer(json, { clean_up_tokenization_spaces: false })
    for (const s of samples.filter((x) => x.ids.length > 0)) {
      expect(tok.decode(s.ids), JSON.stringify(s.text)).toBe(s.decoded)
      if (!s.text.includes('<')) expect(s.decoded).toBe(s.text)
    }
    // the library's default (clean_up_tokenization_spaces on) rewrites " ." and friends: the manifest says to turn it off
    expect(new HfTokenizer(json).decode(samples[13].ids)).toBe('spaced punctuation.,?! stays as it is')
  })
})
