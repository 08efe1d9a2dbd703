/** Reading the README's examples and shell-like command lines (for the tests that run them). */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { ROOT } from './cli.js'

export const README = readFileSync(join(ROOT, 'README.md'), 'utf8')

/** The bodies of the README's fenced blocks of language `lang`, in order. */
export function readmeBlocks(lang: string, text = README): string[] {
  return [...text.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1])
}

/** A command of a console block and the output lines shown after it. */
export interface ShownCommand {
  readonly command: string
  readonly output: readonly string[]
}

/** The `$ ` commands of every console block, with the lines each shows. */
export function consoleCommands(text = README): ShownCommand[] {
  const shown: { command: string; output: string[] }[] = []
  for (const block of readmeBlocks('console', text)) {
    for (const line of block.split('\n')) {
      if (line.startsWith('$ ')) shown.push({ command: line.slice(2), output: [] })
      else if (line.trim() !== '' && shown.length > 0) shown.at(-1)!.output.push(line)
    }
  }
  return shown
}

/** Splits a command line as a shell would for the simple cases used in docs: single quotes, `#` comments. */
export function shellWords(line: string): string[] {
  const out: string[] = []
  let current = ''
  let quoted = false
  let started = false
  for (const c of line) {
    if (quoted) {
      if (c === "'") quoted = false
      else current += c
    } else if (c === "'") {
      quoted = true
      started = true
    } else if (c === '#') break
    else if (/\s/.test(c)) {
      if (started) out.push(current)
      current = ''
      started = false
    } else {
      current += c
      started = true
    }
  }
  if (started) out.push(current)
  return out
}
