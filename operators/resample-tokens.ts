import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { copyTensor, type Feeds } from '../src/tensor/tensors.js'
import { isVitFeatures, type BatchRow, type ErrorRecord, type VisualTokens, type VitFeatures } from '../src/records.js'
import { modelStage, type ModelStageOptions, type StagePlan } from './internal/model-stage.js'

export interface ResampleTokensOptions extends ModelStageOptions {
  model: VisionLanguageModel
}

/**
 * Turns each frame's tapped ViT features into a few learned visual tokens (`resampler.onnx`: per tap, Q
 * learnable queries cross-attend to that tap's P patches, Perceiver-style): `taps [N, L, P, Dv]` →
 * `visual_tokens [N, L, Q, D]`, the papers' learnable image tokens.
 *
 * In → out: `VitFeatures` → `VisualTokens` (`refined` false), 1 → 1; everything else passes through. Chains
 * with the model operators around it (`chainModelStages`): the tensors then stay in the inference thread.
 * Errors: a failing run turns the batch's rows into error rows (`stage-failed`).
 *
 * @example
 * features$.pipe(resampleTokens({ model }))
 */
export function resampleTokens<T extends { kind: string }>(options: ResampleTokensOptions): OperatorFunction<T, Exclude<T, VitFeatures> | VisualTokens | ErrorRecord> {
  const { model } = options
  const name = 'resampleTokens'
  const plan = (rows: readonly BatchRow[]): StagePlan<VisualTokens> => ({
    step: { kind: 'resample', stage: name, graph: model.graph('resampler') },
    refused: [],
    rows,
    build: (_, tensors) => [{ kind: 'visual-tokens', rows, visual_tokens: tensors.visual_tokens, refined: false }],
  })
  return modelStage(
    {
      name,
      model,
      accepts: isVitFeatures,
      rows: (batch: VitFeatures) => batch.rows,
      outputs: ['visual_tokens'],
      // A copy crosses to the inference thread (transferring detaches it): the input record stays intact.
      start: (batch: VitFeatures): { plan: StagePlan<VisualTokens>; inputs: Feeds } => ({ plan: plan(batch.rows), inputs: { taps: copyTensor(batch.taps) } }),
      follow: plan,
      count: (outcome, metrics) => metrics.add('compute_ms', outcome.ms),
    },
    options,
  )
}
