/** evflow's public operators: one per file, composable with RxJS `pipe`. */
export { readShards, type ReadShardsOptions, type ShardRecord } from './read-shards.js'
export { decodeImages, resolveDecodeOptions, type DecodeImagesOptions } from './decode-images.js'
export { batchRecords, type BatchRecordsOptions } from './batch-records.js'
export { writeShards, type OutputColumn, type ShardCommit, type WriteShardsOptions } from './write-shards.js'
