/**
 * Where the job queue lives: a Redis URL (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS)
 * and a queue name. Long-lived processes (workers) retry the connection forever; short commands
 * (`submit`, `status`, `cancel`) give up after a few seconds with a `QueueError`.
 */
import type { ConnectionOptions } from 'bullmq'

import { PipelineConfigError } from '../../src/errors.js'

/** Queue name used when none is given. */
export const DEFAULT_QUEUE_NAME = 'evflow'

export interface QueueAddress {
  /** The Redis URL as given. */
  readonly url: string
  /** BullMQ queue name. Default {@link DEFAULT_QUEUE_NAME}. */
  readonly name: string
}

/** Validates a queue URL and name; throws `PipelineConfigError` naming the flag. */
export function queueAddress(url: string | undefined, name: string = DEFAULT_QUEUE_NAME): QueueAddress {
  if (url === undefined || url.length === 0) throw new PipelineConfigError('--queue', 'give the Redis URL, e.g. redis://127.0.0.1:6379 (or set EVFLOW_QUEUE)')
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new PipelineConfigError('--queue', `not a URL: ${url}`)
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new PipelineConfigError('--queue', `expected redis://host:port or rediss://host:port, got ${parsed.protocol}//`)
  }
  if (!/^[A-Za-z0-9._-]{1,100}$/.test(name)) {
    throw new PipelineConfigError('--queue-name', `use 1-100 letters, digits, '.', '_' or '-', got ${JSON.stringify(name)}`)
  }
  return Object.freeze({ url, name })
}

/** The address for messages: the URL without its password, and the queue name. */
export function describeQueue(address: QueueAddress): string {
  const parsed = new URL(address.url)
  if (parsed.password) parsed.password = '***'
  return `${parsed.toString().replace(/\/$/, '')} (queue ${address.name})`
}

/**
 * ioredis options for a long-lived worker: reconnect forever (every 0.2 s growing to 5 s), never fail a
 * command while disconnected (BullMQ requires `maxRetriesPerRequest: null` for workers).
 */
export function workerConnection(address: QueueAddress): ConnectionOptions {
  return {
    url: address.url,
    maxRetriesPerRequest: null,
    retryStrategy: (times: number) => Math.min(200 * times, 5000),
  }
}

/** ioredis options for a short command: five connection attempts over about 2 s, then an error. */
export function commandConnection(address: QueueAddress): ConnectionOptions {
  return {
    url: address.url,
    maxRetriesPerRequest: 2,
    connectTimeout: 3000,
    retryStrategy: (times: number) => (times > 4 ? null : 200 * times),
  }
}
