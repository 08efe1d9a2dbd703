import type { OperatorFunction } from 'rxjs'

import { PipelineConfigError } from '../src/errors.js'
import { decoderSpecOf, validateGeneration, type GenerationParams } from '../src/model/generate.js'
import { generatedTexts, planPrompts, type Asked } from '../src/model/prompts.js'
import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { copyTensor, type Feeds } from '../src/tensor/tensors.js'
import { isCrossMemory, type BatchRow, type CrossMemory, type ErrorRecord, type GeneratedText } from '../src/records.js'
import { modelStage, type ModelStageOptions, type StagePlan } from './internal/model-stage.js'

export interface DecodeTextOptions extends ModelStageOptions {
  model: VisionLanguageModel
  /**
   * The questions of a row (VQA: the manifest's `prompts.vqa` template, e.g. `<bos> question <sep>`; several
   * questions about one image share its memory). Absent: captions (`prompts.caption`, e.g. `<bos>`). A row
   * for which it returns nothing becomes a `missing-question` error row; one with a question the tokenizer
   * cannot represent (`TextTokenizer.unknownWords`), a `question-out-of-vocabulary` one.
   */
  questions?: (row: BatchRow) => Asked
  /**
   * What decides the generated tokens (vLLM's `SamplingParams`). Defaults: `maxNewTokens` the manifest's
   * `generation.max_new_tokens`, `minNewTokens` the manifest's `generation.min_new_tokens` (absent: 0; the end
   * token cannot be chosen before), `beams` 1 (greedy: argmax, ties to the lowest id), `lengthPenalty` 1 (beam
   * search: score = logprob / length ** lengthPenalty).
   */
  generation?: Partial<GenerationParams>
  /** Sequences decoded at once in an inference thread (speed only). Default 32. */
  slots?: number
  /** A finished sequence's slot is taken by a waiting one at the next step, else static batches (speed only). Default true. */
  continuous?: boolean
}

/**
 * Generates text from the cross-attention memory (`decoder.onnx`): captions, or answers to questions. The
 * whole generation loop of a batch runs inside an inference thread (one task per batch, not per token):
 * prompt prefill, a KV cache, greedy or beam search, stop at the end token or `maxNewTokens`, and continuous
 * batching (`slots` sequences at once; a finished one's slot goes to a waiting sample). A sample's text does
 * not depend on the batch it lands in, nor on `slots` or `continuous`.
 *
 * In → out: `CrossMemory` → one `GeneratedText` per row (1 → B), with one `Generation` per question
 * (one for a caption): its text, tokens, how it ended (`finish`: `eos` | `length`) and the log-probability
 * of each token chosen (`logprobs`, the end token included; batch-invariant like the text). Everything else
 * passes through. Chains after the model operators before it (`chainModelStages`): the memory is then read
 * where `crossAttend` made it, in the inference thread. Metrics under `decodeText`: `tokens`,
 * `decoder_runs`, `row_steps`. Errors: rows without a question become `missing-question` error rows, rows
 * whose question has words the vocabulary cannot represent `question-out-of-vocabulary` ones; a failing run
 * turns the batch's rows into error rows (`stage-failed`).
 *
 * @example
 * memory$.pipe(decodeText({ model, generation: { maxNewTokens: 32 } }))          // captions
 * memory$.pipe(decodeText({ model, questions: (row) => row.kept.question as string }))  // VQA
 */
export function decodeText<T extends { kind: string }>(options: DecodeTextOptions): OperatorFunction<T, Exclude<T, CrossMemory> | GeneratedText | ErrorRecord> {
  const { model } = options
  const batching = { slots: options.slots ?? 32, continuous: options.continuous ?? true }
  // The model's default length is only known from its manifest: validate what can be now.
  const { maxNewTokens, minNewTokens, beams = 1, lengthPenalty = 1 } = options.generation ?? {}
  validateGeneration({ maxNewTokens: maxNewTokens ?? 1, ...(minNewTokens === undefined ? {} : { minNewTokens }), beams, lengthPenalty }, batching)
  if (typeof batching.continuous !== 'boolean') throw new PipelineConfigError('continuous', `must be true or false, got ${String(batching.continuous)}`)
  const name = 'decodeText'
  const plan = (rows: readonly BatchRow[]): StagePlan<GeneratedText> => {
    const { manifest, tokenizer, prompts } = model.package
    const planned = planPrompts(rows, {
      template: options.questions ? prompts.vqa : prompts.caption,
      tokenizer,
      questions: options.questions,
      maxPositions: manifest.dims.max_text_len,
      stage: name,
    })
    if (planned.samples.length === 0) return { refused: planned.refused, rows: [], build: () => [] }
    const params: GenerationParams = {
      maxNewTokens: maxNewTokens ?? manifest.generation.max_new_tokens,
      minNewTokens: minNewTokens ?? manifest.generation.min_new_tokens ?? 0,
      beams,
      lengthPenalty,
    }
    return {
      step: { kind: 'generate', stage: name, graph: model.graph('decoder'), samples: planned.samples, params, batching, decoder: decoderSpecOf(manifest) },
      refused: planned.refused,
      rows,
      build: (outcome) => generatedTexts(planned.planned, outcome.sequences ?? [], tokenizer),
    }
  }
  return modelStage(
    {
      name,
      model,
      accepts: isCrossMemory,
      rows: (batch: CrossMemory) => batch.rows,
      outputs: [],
      // Copies cross to the inference thread (transferring detaches them): the input record stays intact.
      start: (batch: CrossMemory): { plan: StagePlan<GeneratedText>; inputs: Feeds } => ({
        plan: plan(batch.rows),
        inputs: { xattn_k: copyTensor(batch.xattn_k), xattn_v: copyTensor(batch.xattn_v), xattn_mask: copyTensor(batch.xattn_mask) },
      }),
      follow: plan,
      count: (outcome, metrics) => {
        metrics.add('compute_ms', outcome.ms)
        metrics.add('tokens', outcome.stats?.tokens ?? 0)
        metrics.add('decoder_runs', outcome.stats?.decoderRuns ?? 0)
        metrics.add('row_steps', outcome.stats?.rowSteps ?? 0)
      },
    },
    options,
  )
}
