/**
 * What one queued job carries: everything a worker on another machine needs to run one shard exactly as a
 * single-process run would (pipeline name, resolved config, read options, the shard's input, row range and
 * output name computed at submit over the whole input set), plus ids that make submission idempotent.
 */
import { createHash } from 'node:crypto'
import { z } from 'zod'

/** Version of the job payload; a worker refuses payloads it does not know. */
export const JOB_FORMAT = 1

export const shardJobSchema = z.strictObject({
  format: z.literal(JOB_FORMAT),
  /** The submission this shard belongs to (see {@link runId}). */
  run: z.string().min(1),
  pipeline: z.string().min(1),
  /** The resolved, validated pipeline config (defaults < config file < flags), as `submit` froze it. */
  config: z.record(z.string(), z.unknown()),
  /** Read options shared by every shard of the run. */
  read: z.strictObject({
    imageColumn: z.string().optional(),
    idColumn: z.string().optional(),
    keep: z.array(z.string()).optional(),
    maxRecordsInFlight: z.number().int().positive().optional(),
  }),
  /** Output folder: absolute, the same path on every machine (a shared file system). */
  outDir: z.string().min(1),
  /** Input file: absolute, the same path on every machine. */
  input: z.string().min(1),
  /** Output name of this shard (`<outDir>/<shard>.parquet`), unique within the run. */
  shard: z.string().min(1),
  /** Position of the shard in the run's list (as a single-process run numbers it). */
  index: z.number().int().nonnegative(),
  /** Absolute rows `[start, end)` of the input file this job covers; null: the whole file (it could not be
   *  read at submit). */
  rows: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]).nullable(),
  /** Rows in the shard at submit (0 when unreadable then): for progress and ETA. */
  rowCount: z.number().int().nonnegative(),
  /** Input fingerprint at submit (`''` when the file could not be read then). */
  fingerprint: z.string(),
  /** Hash of everything that decides the output (see `runConfig`). */
  configHash: z.string().min(1),
})

export type ShardJobData = z.infer<typeof shardJobSchema>

/** What a finished job returns (stored by BullMQ as the job's return value). */
export interface ShardJobResult {
  /** `committed`: this attempt published the shard; `skipped`: it was already committed when the job
   *  started; `duplicate`: another attempt committed it while this one ran (this output was discarded). */
  readonly status: 'committed' | 'skipped' | 'duplicate'
  readonly shard: string
  readonly output: string
  readonly rowsIn: number
  readonly rowsOk: number
  readonly rowsError: number
  /** Whether a discarded duplicate had the same bytes as the committed shard (`duplicate` only). */
  readonly identical?: boolean
  readonly durationMs: number
  readonly worker: string
}

/** Progress a worker reports while a shard runs. */
export interface ShardJobProgress {
  readonly rowsDone: number
  readonly rowsTotal: number
}

const sha = (...parts: string[]) => createHash('sha256').update(parts.join('\u0000')).digest('hex')

/** A submission's id: the output folder, pipeline and config hash (resubmitting the same run gives the same id). */
export function runId(outDir: string, pipeline: string, configHash: string): string {
  return `r${sha('run', outDir, pipeline, configHash).slice(0, 12)}`
}

/**
 * A shard job's id: its run, output name, input fingerprint and config hash. Submitting the same shard again
 * gives the same id, which BullMQ ignores; a changed input (new fingerprint) gives a new job.
 */
export function shardJobId(data: Pick<ShardJobData, 'run' | 'outDir' | 'shard' | 'fingerprint' | 'configHash'>): string {
  return `${data.run}.${sha('shard', data.outDir, data.shard, data.fingerprint, data.configHash).slice(0, 20)}`
}
