import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { copyTensor } from '../src/tensor/tensors.js'
import { isVitFeatures, type ErrorRecord, type VisualTokens, type VitFeatures } from '../src/records.js'
import { modelStage, type ModelStageOptions } from './internal/model-stage.js'

export interface ResampleTokensOptions extends ModelStageOptions {
  model: VisionLanguageModel
}

/**
 * Turns each frame's tapped ViT features into a few learned visual tokens (`resampler.onnx`: per tap, Q
 * learnable queries cross-attend to that tap's P patches, Perceiver-style): `taps [N, L, P, Dv]` →
 * `visual_tokens [N, L, Q, D]`, the papers' learnable image tokens.
 *
 * In → out: `VitFeatures` → `VisualTokens` (`refined` false), 1 → 1; everything else passes through.
 * Errors: a failing run turns the batch's rows into error rows (`stage-failed`).
 *
 * @example
 * features$.pipe(resampleTokens({ model }))
 */
export function resampleTokens<T extends { kind: string }>(options: ResampleTokensOptions): OperatorFunction<T, Exclude<T, VitFeatures> | VisualTokens | ErrorRecord> {
  const { model } = options
  return modelStage({
    name: 'resampleTokens',
    model,
    accepts: isVitFeatures,
    rows: (batch) => batch.rows,
    run: async (batch, metrics) => {
      // A copy crosses to the inference thread (transferring detaches it): the input record stays intact.
      const { outputs, ms } = await model.pool().run(model.graph('resampler'), { taps: copyTensor(batch.taps) })
      metrics?.add('compute_ms', ms)
      const tokens: VisualTokens = { kind: 'visual-tokens', rows: batch.rows, visual_tokens: outputs.visual_tokens, refined: false }
      return [tokens]
    },
  }, options)
}
