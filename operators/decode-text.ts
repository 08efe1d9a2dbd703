import type { OperatorFunction } from 'rxjs'

import { PipelineConfigError } from '../src/errors.js'
import type { GenerationSample } from '../src/model/generate.js'
import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { copyTensor, type TensorData } from '../src/tensor/tensors.js'
import { toErrorRecord, type BatchRow, type CrossMemory, type ErrorRecord, type GeneratedText, type Generation } from '../src/records.js'
import { modelStage, type ModelStageOptions } from './internal/model-stage.js'

export interface DecodeTextOptions extends ModelStageOptions {
  model: VisionLanguageModel
  /**
   * The questions of a row (VQA: `<bos> question <sep>` prompts; several questions about one image share its
   * memory). Absent: captions (`<bos>`). A row for which it returns nothing becomes a `missing-question`
   * error row.
   */
  questions?: (row: BatchRow) => string | readonly string[] | null | undefined
  /** Most generated tokens per text. Default: the model's `generation.max_new_tokens`. */
  maxNewTokens?: number
  /** 1: greedy (argmax, ties to the lowest id); more: beam search. Default 1. */
  beams?: number
  /** Sequences decoded at once in a worker. Default 32. */
  slots?: number
  /** A finished sequence's slot is taken by a waiting one at the next step (else: static batches). Default true. */
  continuous?: boolean
  /** Beam search length penalty (score = logprob / length ** p). Default 1. */
  lengthPenalty?: number
}

function positiveInt(field: string, value: number | undefined): void {
  if (value !== undefined && (!Number.isInteger(value) || value < 1)) throw new PipelineConfigError(field, `must be a positive integer, got ${value}`)
}

/**
 * Generates text from the cross-attention memory (`decoder.onnx`): captions, or answers to questions. The
 * whole generation loop of a batch runs inside an inference worker (one message per batch, not per token):
 * prompt prefill, a KV cache, greedy or beam search, stop at the end token or `maxNewTokens`, and continuous
 * batching (`slots` sequences at once; a finished one's slot goes to a waiting sample). A sample's text does
 * not depend on the batch it lands in.
 *
 * In → out: `CrossMemory` → one `GeneratedText` per row (1 → B), with one `Generation` per question
 * (one for a caption); everything else passes through. Metrics under `decodeText`: `tokens`,
 * `decoder_runs`, `row_steps`. Errors: rows without a question become `missing-question` error rows; a
 * failing run turns the batch's rows into error rows (`stage-failed`).
 *
 * @example
 * memory$.pipe(decodeText({ model, maxNewTokens: 32 }))                      // captions
 * memory$.pipe(decodeText({ model, questions: (row) => row.kept.question as string }))  // VQA
 */
export function decodeText<T extends { kind: string }>(options: DecodeTextOptions): OperatorFunction<T, Exclude<T, CrossMemory> | GeneratedText | ErrorRecord> {
  const { model } = options
  positiveInt('maxNewTokens', options.maxNewTokens)
  positiveInt('beams', options.beams)
  positiveInt('slots', options.slots)
  const stage = 'decodeText'
  return modelStage<CrossMemory>(
    stage,
    model,
    (record) => (record as { kind: string }).kind === 'cross-memory',
    (batch) => batch.rows,
    async (batch, metrics) => {
      const manifest = model.manifest
      const { tokenizer } = model.package
      const special = manifest.special_tokens
      const templates = (manifest as { prompts?: { caption?: string[]; vqa?: string[] } }).prompts ?? {}
      const template = options.questions ? (templates.vqa ?? ['<bos>', '{question}', '<sep>']) : (templates.caption ?? ['<bos>'])
      const promptIds = (question: string | null): number[] =>
        template.flatMap((part) => {
          if (part === '{question}') return tokenizer.encode(question ?? '')
          const id = tokenizer.tokenId(part)
          if (id === undefined) throw new PipelineConfigError('prompts', `the model's prompt token ${part} is not in its vocabulary`)
          return [id]
        })

      const out: (GeneratedText | ErrorRecord)[] = []
      const samples: GenerationSample[] = []
      const plan: { row: BatchRow; prompts: (string | null)[]; first: number }[] = []
      batch.rows.forEach((row, memoryRow) => {
        let prompts: (string | null)[] = [null]
        if (options.questions) {
          const asked = options.questions(row)
          const list = (typeof asked === 'string' ? [asked] : (asked ?? [])).filter((q) => typeof q === 'string' && q.trim() !== '')
          if (list.length === 0) {
            out.push(toErrorRecord(row, stage, 'missing-question', 'the row has no question'))
            if (metrics) metrics.errors += 1
            return
          }
          prompts = list
        }
        const ids = prompts.map(promptIds)
        const longest = Math.max(...ids.map((p) => p.length))
        if (longest >= manifest.dims.max_text_len) {
          out.push(toErrorRecord(row, stage, 'stage-failed', `a prompt of ${longest} tokens leaves no room in the decoder's ${manifest.dims.max_text_len} positions`))
          if (metrics) metrics.errors += 1
          return
        }
        plan.push({ row, prompts, first: samples.length })
        ids.forEach((prompt) => samples.push({ memoryRow, prompt }))
      })
      if (samples.length > 0) {
        const memory: Record<'xattn_k' | 'xattn_v' | 'xattn_mask', TensorData> = { xattn_k: copyTensor(batch.xattn_k), xattn_v: copyTensor(batch.xattn_v), xattn_mask: copyTensor(batch.xattn_mask) }
        const { sequences, stats, ms } = await model.pool().generate(
          model.graph('decoder'),
          memory,
          samples,
          {
            maxNewTokens: options.maxNewTokens ?? manifest.generation.max_new_tokens,
            maxPositions: manifest.dims.max_text_len,
            beams: options.beams ?? 1,
            slots: options.slots ?? 32,
            continuous: options.continuous ?? true,
            eos: special.eos,
            pad: special.pad,
            ...(options.lengthPenalty === undefined ? {} : { lengthPenalty: options.lengthPenalty }),
          },
          { nLayer: manifest.dims.n_layer, heads: manifest.dims.n_head, headDim: manifest.dims.head_dim },
        )
        metrics?.add('compute_ms', ms)
        metrics?.add('tokens', stats.tokens)
        metrics?.add('decoder_runs', stats.decoderRuns)
        metrics?.add('row_steps', stats.rowSteps)
        for (const { row, prompts, first } of plan) {
          const generations: Generation[] = prompts.map((prompt, i) => {
            const sequence = sequences[first + i]
            return { prompt, text: tokenizer.decode(sequence.tokens), tokens: sequence.tokens, finish: sequence.finish }
          })
          out.push({ kind: 'generated-text', key: row.key, source: row.source, kept: row.kept, id: row.id, generations })
        }
      }
      return out
    },
    options,
  ) as OperatorFunction<T, Exclude<T, CrossMemory> | GeneratedText | ErrorRecord>
}
