/**
 * Help matches behaviour (issue 15, item 5): every command has examples and they all work on the bundled
 * data; defaults come from the pipelines' own defaults (in `submit` too, for every pipeline that has the
 * flag); exit codes come from the error classes, in the help and in docs/cli.md; `--json` is a switch
 * everywhere; the run commands say which kept columns are renamed.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { EXAMPLES } from '../../../app/cli/examples.js'
import { pipelines } from '../../../pipelines/index.js'
import { exitCodes } from '../../../src/errors.js'
import { ROOT, runCli } from '../../helpers/cli.js'
import { MODEL_DIR } from '../../helpers/model.js'
import { shellWords as words } from '../../helpers/readme.js'
import { tempDir } from '../../helpers/util.js'
import { hasRedis, RedisServer } from '../queue/redis-server.js'

const HAVE_MODEL = existsSync(join(MODEL_DIR, 'manifest.json'))
if (!HAVE_MODEL) console.warn(`NOTICE: test/app/cli/help: no model package at ${MODEL_DIR}: SKIPPING the model commands' examples`)
if (!hasRedis) console.warn('NOTICE: test/app/cli/help: redis-server not installed: SKIPPING the distributed commands\' examples')

const COMMANDS = ['scan', 'caption', 'video-caption', 'vqa', 'embed', 'inspect', 'eval', 'report', 'submit', 'worker', 'status', 'cancel']
const QUEUE = new Set(['submit', 'worker', 'status', 'cancel'])
const MODEL = new Set(['caption', 'video-caption', 'vqa', 'embed'])

const help = (command?: string) => runCli(command === undefined ? ['--help'] : [command, '--help'])

describe('every command\'s help', () => {
  it('has examples (the ones in app/cli/examples.ts) and its exit codes', () => {
    for (const command of [undefined, ...COMMANDS]) {
      const result = help(command)
      expect(result.code).toBe(0)
      const examples = EXAMPLES[command ?? 'evflow']
      expect(examples?.length, `examples of ${command}`).toBeGreaterThan(0)
      for (const example of examples) expect(result.stdout).toContain(example)
      if (command !== undefined) expect(result.stdout, `${command} --help`).toMatch(/^Exit codes: 0 ok[^\n]*, 1 anything else( \([^)\n]*\))?\.$/m)
    }
  })

  it('gives each exit code the meaning and the code its error classes have', () => {
    const meaning = new Map(exitCodes().map((e) => [e.code, e.short]))
    for (const command of COMMANDS) {
      const line = /^Exit codes: (.*)\.$/m.exec(help(command).stdout)![1]
      for (const part of line.split(/, (?=\d+ )/)) {
        const [, code, text] = /^(\d+) (.*)$/.exec(part)!
        expect(text.startsWith(meaning.get(Number(code))!), `${command}: ${part}`).toBe(true)
      }
    }
  })

  it('docs/cli.md\'s exit code table is the one the error classes give', () => {
    const docs = readFileSync(join(ROOT, 'docs', 'cli.md'), 'utf8')
    const section = /## Exit codes\n\n([\s\S]*?)\n\n/.exec(docs)![1]
    const table = [
      '| code | meaning | errors |',
      '|---|---|---|',
      ...exitCodes().map((e) => `| ${e.code} | ${e.detail} | ${e.errors.map((n) => `\`${n}\``).join(', ')} |`),
    ].join('\n')
    expect(section).toBe(table)
  })

  it('the docs name every long flag of every command\'s help (docs/cli.md; the queue commands: docs/distributed.md too)', () => {
    const cli = readFileSync(join(ROOT, 'docs', 'cli.md'), 'utf8')
    const distributed = readFileSync(join(ROOT, 'docs', 'distributed.md'), 'utf8')
    const missing: string[] = []
    for (const command of COMMANDS) {
      const docs = QUEUE.has(command) ? cli + distributed : cli
      for (const [, flag] of help(command).stdout.matchAll(/^ {2}(?:-\w, )?(--[a-z][a-z-]*)/gm)) {
        if (flag !== '--help' && !new RegExp(`(?<![\\w-])${flag}(?![\\w-])`).test(docs)) missing.push(`${command} ${flag}`)
      }
    }
    expect(missing).toEqual([])
  })

  it('--json is a switch wherever it exists (JSON on stdout)', () => {
    for (const command of COMMANDS) {
      const line = help(command).stdout.split('\n').find((l) => l.trim().startsWith('--json'))
      if (line) expect(line, command).toMatch(/^ {2}--json {2,}\S/)
    }
  })

  it('run commands list their output columns and say which kept column is renamed', () => {
    expect(help('caption').stdout).toContain('A kept column named like one of these is written as input_<name> (--keep caption gives input_caption).')
    expect(help('caption').stdout).toContain('Output columns: the kept columns (--keep, the id column), status, error, error_code, caption, finish_reason, mean_logprob, min_logprob.')
    expect(help('scan').stdout).toContain('(--keep width gives input_width)')
  })

  it('submit shows every pipeline flag with the pipelines that have it and each one\'s default', () => {
    const text = help('submit').stdout.replace(/\s+/g, ' ')
    expect(text).toMatch(/--max-new-tokens <n> most generated tokens per text \[caption, video-caption: default 32; vqa: default 8\]/)
    expect(text).toMatch(/--model <dir> model package folder \[caption, video-caption, vqa, embed: default: the bundled evlm-tiny\]/)
    expect(text).toMatch(/--max-bytes <bytes> reject images larger than this \(bytes, or with a unit: 64MiB, 512KiB\) \[scan, caption, video-caption, vqa, embed: default 64 MiB = 67108864 bytes\]/)
    expect(text).toMatch(/--question <text> ask this of every image .* \[vqa\]/)
    for (const definition of Object.values(pipelines)) {
      for (const flag of definition.flags) expect(text, flag.flags).toContain(flag.flags)
    }
  })
})

describe('every example works on the bundled data', () => {
  let dir: string
  let cleanup: () => void
  let redis: RedisServer | undefined
  beforeAll(async () => {
    ;({ dir, cleanup } = tempDir('evflow-examples-'))
    if (hasRedis) redis = await RedisServer.start(join(dir, 'redis'))
  })
  afterAll(async () => {
    await redis?.stop('SIGTERM')
    cleanup()
  })

  // in this order: the eval and report examples read the caption and vqa examples' outputs
  const order = ['scan', 'caption', 'video-caption', 'vqa', 'embed', 'inspect', 'eval', 'report', 'submit', 'worker', 'status', 'cancel', 'evflow']
  it('lists an example for every command', () => {
    expect(Object.keys(EXAMPLES).sort()).toEqual([...order].sort())
  })

  for (const command of order) {
    const skip = (QUEUE.has(command) && !hasRedis) || (!HAVE_MODEL && (MODEL.has(command) || ['eval', 'report', 'evflow'].includes(command)))
    it.skipIf(skip)(`${command}`, { timeout: 240_000 }, () => {
      for (const example of EXAMPLES[command]) {
        const args = words(example)
        expect(args[0]).toBe('evflow')
        const rewritten = args.slice(1).map((a) => a.replace(/^out\//, `${dir}/`).replace('redis://127.0.0.1:6379', redis?.url ?? ''))
        const result = runCli(rewritten, { timeoutMs: 200_000 })
        expect(result.code, `${example}\n${result.stderr}`).toBe(0)
        expect(result.stderr, example).not.toMatch(/warning|\w+Error:|unexpected/i)
      }
    })
  }
})

describe('the exit codes\' one source', () => {
  it('errorSamples (src/errors.ts) has an instance of every error class the module exports', async () => {
    const errors = await import('../../../src/errors.js')
    const classes = Object.entries(errors).filter(([, v]) => typeof v === 'function' && v.prototype instanceof errors.EvflowError).map(([name]) => name)
    const sampled = new Set(errors.errorSamples().map((e) => e.name))
    expect(classes.filter((name) => !sampled.has(name))).toEqual([])
  })
})
