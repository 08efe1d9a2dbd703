/**
 * Checks a model package as the runtime will read it (run by tools/build-model.sh after model/build_base.py):
 *   node dist/tools/check-model.js DIR
 * 1. `loadModelPackage` (src/model/package.ts) accepts it: the manifest schema, every file's sha256, the tokenizer
 *    through its real path (`HfTokenizer` for a tokenizer.json) and its size against dims.vocab_size;
 * 2. the tokenizer's reference samples (manifest reference.tokenizer_samples, written by the Python encoder) encode
 *    to exactly the same ids, and decode back to the same text (clean_up_tokenization_spaces as the manifest says).
 * Prints one JSON line; exits 1 on any difference.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { loadModelPackage } from '../src/model/package.js'
import { HfTokenizer } from '../src/model/tokenizer.js'

interface Sample { text: string, ids: number[], decoded: string }

async function main(dir: string): Promise<number> {
  const started = performance.now()
  const pkg = await loadModelPackage(dir)
  const loadS = (performance.now() - started) / 1000
  const manifest = pkg.manifest as typeof pkg.manifest & { reference?: { tokenizer_samples?: string } }
  const problems: string[] = []
  const rel = manifest.reference?.tokenizer_samples
  let samples: Sample[] = []
  if (rel) {
    samples = JSON.parse(readFileSync(join(pkg.dir, rel), 'utf8')) as Sample[]
    const tokenizerJson = JSON.parse(readFileSync(join(pkg.dir, manifest.tokenizer.file), 'utf8')) as unknown
    const cleanUp = (manifest.tokenizer as { clean_up_tokenization_spaces?: boolean }).clean_up_tokenization_spaces
    const decoder = manifest.tokenizer.type === 'huggingface' ? new HfTokenizer(tokenizerJson, cleanUp === undefined ? {} : { clean_up_tokenization_spaces: cleanUp }) : pkg.tokenizer
    for (const s of samples) {
      const ids = pkg.tokenizer.encode(s.text)
      if (JSON.stringify(ids) !== JSON.stringify(s.ids)) problems.push(`encode(${JSON.stringify(s.text)}) = ${JSON.stringify(ids)}, Python gave ${JSON.stringify(s.ids)}`)
      else if (ids.length > 0 && decoder.decode(ids) !== s.decoded) problems.push(`decode(encode(${JSON.stringify(s.text)})) = ${JSON.stringify(decoder.decode(ids))}, Python gave ${JSON.stringify(s.decoded)}`)
    }
  }
  console.log(JSON.stringify({ package: pkg.dir, name: manifest.name, vocabSize: pkg.tokenizer.vocabSize, loadSeconds: Number(loadS.toFixed(1)), tokenizerSamples: samples.length, problems }))
  return problems.length === 0 ? 0 : 1
}

const dir = process.argv[2]
if (!dir) {
  console.error('usage: node dist/tools/check-model.js MODEL_DIR')
  process.exit(2)
}
main(dir).then((code) => process.exit(code), (error: unknown) => {
  console.error(`check-model: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(1)
})
