/**
 * A Parquet parser process (started by {@link ParquetReader} with `child_process.fork`): runs the tasks it
 * is sent over IPC, one at a time, and sends each result back. It is a process, not a thread, so that
 * nothing a file makes it do can take the evflow process down with it: V8 ends a worker thread that passes
 * its heap limit gracefully only when the last allocation is small, and a single large one (an array
 * doubling, a long string) aborts the whole process.
 *
 * The evflow process decides when a parser ends: SIGINT and SIGTERM are ignored here (a Ctrl-C reaches the
 * whole process group, and a worker finishing its shards must keep its parsers); a parser exits when its
 * IPC channel closes, and a watchdog thread kills it should the evflow process die while it is stuck in a
 * parse (its parent then changes).
 */
import { Worker } from 'node:worker_threads'

import { compressors, forget, runTask, type ReaderTask } from './parser.js'

/** Messages from the reader. */
export type ToParser = { readonly kind: 'task'; readonly id: number; readonly task: ReaderTask } | { readonly kind: 'forget'; readonly fileId: number }

/** Messages to the reader. */
export type FromParser =
  | { readonly kind: 'ready' }
  | { readonly kind: 'started'; readonly id: number }
  | { readonly kind: 'result'; readonly id: number; readonly result: unknown; readonly maxRssKiB: number }

const send = (message: FromParser) => process.send!(message)

process.on('SIGINT', () => {})
process.on('SIGTERM', () => {})
process.on('disconnect', () => process.exit(0))

// Orphan guard: if the evflow process dies (even by SIGKILL) while this one loops in a parse, its parent
// becomes another process; the watchdog thread runs whatever the main thread does, and ends the parser.
new Worker(
  `const { workerData } = require('node:worker_threads')
   setInterval(() => { if (process.ppid !== workerData.ppid) process.kill(process.pid, 'SIGKILL') }, 500)`,
  { eval: true, workerData: { ppid: process.ppid } },
).unref()

process.on('message', (message: ToParser) => {
  if (message.kind === 'forget') {
    forget(message.fileId)
    return
  }
  send({ kind: 'started', id: message.id })
  void runTask(message.task).then(
    (result) => send({ kind: 'result', id: message.id, result, maxRssKiB: process.resourceUsage().maxRSS }),
    (error: unknown) =>
      send({ kind: 'result', id: message.id, result: { failed: true, message: error instanceof Error ? error.message : String(error) }, maxRssKiB: process.resourceUsage().maxRSS }),
  )
})

send({ kind: 'ready' })
// Load the decompressors while idle, so that the first row group does not wait for them.
setImmediate(() => void compressors().catch(() => {}))
