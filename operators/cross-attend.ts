import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { copyTensor, type Feeds } from '../src/tensor/tensors.js'
import { isVisualTokens, type BatchRow, type CrossMemory, type ErrorRecord, type VisualTokens } from '../src/records.js'
import { modelStage, type ModelStageOptions, type StagePlan } from './internal/model-stage.js'

export interface CrossAttendOptions extends ModelStageOptions {
  model: VisionLanguageModel
}

/**
 * Computes the decoder's cross-attention memory once per image or clip (`xattn_kv.onnx`): for each decoder
 * layer, keys and values from the tap that feeds that layer (different ViT depths feed different decoder
 * depths, as in EVLM). Clips are laid out frame-major with a learned frame embedding; a batch's clips are
 * padded to its longest (`frame_mask` 0), and padding frames are masked out of attention (-1e9).
 * `visual_tokens [N, L, Q, D]` → `xattn_k / xattn_v [B, n_layer, H, M, dh]`, `xattn_mask [B, M]`, M = F·Q.
 *
 * In → out: `VisualTokens` → `CrossMemory`, 1 → 1; everything else passes through. Unrefined tokens are
 * accepted (a model run without its experts). Chains with the model operators around it
 * (`chainModelStages`): the memory then stays in the inference thread for `decodeText`. Errors: a failing
 * run turns the batch's rows into error rows.
 *
 * @example
 * refined$.pipe(crossAttend({ model }))
 */
export function crossAttend<T extends { kind: string }>(options: CrossAttendOptions): OperatorFunction<T, Exclude<T, VisualTokens> | CrossMemory | ErrorRecord> {
  const { model } = options
  const name = 'crossAttend'
  const plan = (rows: readonly BatchRow[]): StagePlan<CrossMemory> => ({
    step: { kind: 'cross-attend', stage: name, graph: model.graph('xattn_kv'), frames: rows.map((row) => row.frames) },
    refused: [],
    rows,
    build: (_, tensors) => [{ kind: 'cross-memory', rows, xattn_k: tensors.xattn_k, xattn_v: tensors.xattn_v, xattn_mask: tensors.xattn_mask }],
  })
  return modelStage(
    {
      name,
      model,
      accepts: isVisualTokens,
      rows: (batch: VisualTokens) => batch.rows,
      outputs: ['xattn_k', 'xattn_v', 'xattn_mask'],
      // A copy crosses to the inference thread (transferring detaches it), where the frames are packed per
      // row (a new array): the input record stays intact.
      start: (batch: VisualTokens): { plan: StagePlan<CrossMemory>; inputs: Feeds } => ({ plan: plan(batch.rows), inputs: { visual_tokens: copyTensor(batch.visual_tokens) } }),
      follow: plan,
      count: (outcome, metrics) => metrics.add('compute_ms', outcome.ms),
    },
    options,
  )
}
