/**
 * The layers, as folders: `app → pipelines → operators → src`, with `scenes` (the synthetic dataset) beside
 * `src` for the applications and `tools` (benchmarks, fixture makers) on top of everything. This test parses
 * every import of the shipped code and the tools and fails when an import runs up the layers or when two
 * folders import each other (directly or through others).
 */
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { describe, expect, it } from 'vitest'

import { ROOT } from './helpers/cli.js'

/** What each top-level folder may import (besides itself and packages). */
const ALLOWED: Readonly<Record<string, readonly string[]>> = {
  src: [],
  scenes: ['src'],
  operators: ['src'],
  pipelines: ['operators', 'src'],
  app: ['pipelines', 'operators', 'src', 'scenes'],
  tools: ['app', 'pipelines', 'operators', 'src', 'scenes', 'test'],
}

interface ImportEdge {
  /** Importing file, relative to the root, `/`-separated. */
  readonly from: string
  /** Imported file, relative to the root. */
  readonly to: string
}

/** Relative imports of a TypeScript source (static, re-exports, dynamic with a literal). */
function importsOf(text: string): string[] {
  const specs: string[] = []
  for (const m of text.matchAll(/(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*['"](\.{1,2}\/[^'"]+)['"]/g)) specs.push(m[1])
  for (const m of text.matchAll(/(?:^|[\s;])import\s*['"](\.{1,2}\/[^'"]+)['"]/g)) specs.push(m[1])
  for (const m of text.matchAll(/\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g)) specs.push(m[1])
  return specs
}

/** Violations of the layer rules among `edges`. */
function upwardImports(edges: readonly ImportEdge[]): string[] {
  const problems: string[] = []
  for (const { from, to } of edges) {
    const a = from.split('/')[0]
    const b = to.split('/')[0]
    if (a === b || !(a in ALLOWED)) continue
    if (!ALLOWED[a].includes(b)) problems.push(`${from} imports ${to} (${a} may import ${ALLOWED[a].join(', ') || 'nothing outside itself'})`)
  }
  return problems
}

/**
 * Cycles between folders: each strongly connected group of more than one folder, as a sorted list. The
 * `index.ts` barrels (the package's entry points, which re-export their subfolders) are not edges.
 */
function folderCycles(edges: readonly ImportEdge[]): string[][] {
  const graph = new Map<string, Set<string>>()
  for (const { from, to } of edges) {
    if (from.endsWith('/index.ts')) continue
    const a = dirname(from)
    const b = dirname(to)
    if (!graph.has(a)) graph.set(a, new Set())
    if (!graph.has(b)) graph.set(b, new Set())
    if (a !== b) graph.get(a)!.add(b)
  }
  // Tarjan's strongly connected components.
  let index = 0
  const order = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const groups: string[][] = []
  const visit = (v: string) => {
    order.set(v, index)
    low.set(v, index)
    index += 1
    stack.push(v)
    onStack.add(v)
    for (const w of graph.get(v)!) {
      if (!order.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v)!, low.get(w)!))
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, order.get(w)!))
    }
    if (low.get(v) === order.get(v)) {
      const group: string[] = []
      let w: string
      do {
        w = stack.pop()!
        onStack.delete(w)
        group.push(w)
      } while (w !== v)
      if (group.length > 1) groups.push(group.sort())
    }
  }
  for (const v of graph.keys()) if (!order.has(v)) visit(v)
  return groups
}

function sources(dir: string): string[] {
  const out: string[] = []
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry)
    if (statSync(path).isDirectory()) out.push(...sources(path))
    else if (entry.endsWith('.ts') && !entry.endsWith('.d.ts')) out.push(path)
  }
  return out
}

function projectEdges(): ImportEdge[] {
  const edges: ImportEdge[] = []
  for (const top of Object.keys(ALLOWED)) {
    for (const file of sources(join(ROOT, top))) {
      for (const spec of importsOf(readFileSync(file, 'utf8'))) {
        const target = resolve(dirname(file), spec).replace(/\.js$/, '.ts')
        edges.push({ from: relative(ROOT, file).split(sep).join('/'), to: relative(ROOT, target).split(sep).join('/') })
      }
    }
  }
  return edges
}

describe('layers', () => {
  const edges = projectEdges()

  it('finds the imports it checks', () => {
    // app/cli/main.ts wires the pipelines into commands: if the parser missed it, the checks below would be empty.
    expect(edges).toContainEqual({ from: 'app/cli/main.ts', to: 'pipelines/index.ts' })
    expect(edges.filter((e) => e.from.startsWith('operators/')).length).toBeGreaterThan(20)
  })

  it('no import runs up the layers (app → pipelines → operators → src)', () => {
    expect(upwardImports(edges)).toEqual([])
  })

  it('no two folders import each other', () => {
    expect(folderCycles(edges)).toEqual([])
  })

  it('the checks catch an upward import and a cycle', () => {
    const bad: ImportEdge[] = [
      { from: 'src/cli/main.ts', to: 'pipelines/index.ts' },
      { from: 'src/engine/pipeline.ts', to: 'src/parquet/shards.ts' },
      { from: 'src/parquet/commit.ts', to: 'src/engine/lock.ts' },
      { from: 'scenes/score.ts', to: 'app/eval/metrics.ts' },
    ]
    expect(upwardImports(bad)).toEqual([
      'src/cli/main.ts imports pipelines/index.ts (src may import nothing outside itself)',
      'scenes/score.ts imports app/eval/metrics.ts (scenes may import src)',
    ])
    expect(folderCycles(bad)).toEqual([['src/engine', 'src/parquet']])
    expect(importsOf("import { a } from './a.js'\nexport * from '../b.js'\nconst c = await import('./c.js')\nimport './d.js'")).toEqual(['./a.js', '../b.js', './d.js', './c.js'])
  })
})
