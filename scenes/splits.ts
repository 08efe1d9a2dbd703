/**
 * Splits and their seeds. Each split owns a disjoint range of seeds and every row's random stream is
 * derived from (seed, kind, index), so no two splits ever share a row's stream; the generator refuses a
 * seed outside its split's range (e.g. a test split with a train seed).
 */

import { PipelineConfigError } from '../src/errors.js'

export const SPLITS = ['train', 'val', 'test'] as const
export type Split = (typeof SPLITS)[number]

export const KINDS = ['caption', 'vqa', 'video'] as const
/** caption: one image per row; vqa: one question per row, several rows per image; video: one clip per row. */
export type Kind = (typeof KINDS)[number]

/** Inclusive seed range of each split; the first seed is the split's default. */
export const SPLIT_SEEDS: Readonly<Record<Split, { min: number; max: number }>> = {
  train: { min: 1_000_000, max: 1_999_999 },
  val: { min: 2_000_000, max: 2_999_999 },
  test: { min: 3_000_000, max: 3_999_999 },
}

/** Stream tag mixed into every row's seed, so that the kinds of one seed draw different scenes. */
export const KIND_STREAM: Readonly<Record<Kind, number>> = { caption: 1, vqa: 2, video: 3 }

/** An invalid generator option; `field` names it. */

/** The split whose range holds `seed`, or null. */
export function splitOfSeed(seed: number): Split | null {
  for (const split of SPLITS) {
    const { min, max } = SPLIT_SEEDS[split]
    if (seed >= min && seed <= max) return split
  }
  return null
}

/** Throws `PipelineConfigError` unless `seed` is in `split`'s range. */
export function checkSeed(split: Split, seed: number): void {
  if (!Number.isSafeInteger(seed)) throw new PipelineConfigError('seed', `must be an integer, got ${seed}`)
  const owner = splitOfSeed(seed)
  if (owner !== split) {
    const { min, max } = SPLIT_SEEDS[split]
    const why = owner === null ? 'belongs to no split' : `belongs to the ${owner} split`
    throw new PipelineConfigError('seed', `${seed} ${why}; ${split} seeds are ${min}-${max}`)
  }
}
