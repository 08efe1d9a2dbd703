/**
 * Synthetic scenes: seeded shapes-on-a-grid images, VQA pairs and moving-object clips with a small
 * caption grammar, for training and testing the reference model end to end (see docs/data.md).
 */
export * from './words.js'
export * from './rng.js'
export * from './scene.js'
export * from './grammar.js'
export * from './render.js'
export * from './pixels.js'
export * from './npy.js'
export * from './splits.js'
export * from './generate.js'
