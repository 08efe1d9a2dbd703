/**
 * Mistakes are caught before any work (issue 15, items 3 and 4): each gives exit 2 and one line on stderr
 * naming what is wrong, promptly, with no output folder made and no process left running. The model-load
 * failures are tried on every model pipeline.
 */
import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { CLI, ROOT, runCli } from '../../helpers/cli.js'
import { duckQuery } from '../../helpers/duckdb.js'
import { MODEL_DIR } from '../../helpers/model.js'
import { tempDir } from '../../helpers/util.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-mistakes-')))
afterAll(() => cleanup())

const HAVE_MODEL = existsSync(join(MODEL_DIR, 'manifest.json'))
if (!HAVE_MODEL) console.warn(`NOTICE: test/app/cli/mistakes: no model package at ${MODEL_DIR}: SKIPPING the model-load cases`)

/** Runs the CLI in its own process group; resolves when it exits, or fails the test past `limitMs`. */
function runGroup(args: readonly string[], limitMs: number): Promise<{ code: number | null; stdout: string; stderr: string; ms: number; pid: number }> {
  return runGroupOf(process.execPath, [CLI, ...args], limitMs)
}

function runGroupOf(command: string, args: readonly string[], limitMs: number): Promise<{ code: number | null; stdout: string; stderr: string; ms: number; pid: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const child = spawn(command, args, { cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL')
      } catch {
        // already gone
      }
      reject(new Error(`${command} ${args.join(' ')} still running after ${limitMs} ms; stdout: ${stdout}; stderr: ${stderr}`))
    }, limitMs)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr, ms: Date.now() - started, pid: child.pid! })
    })
  })
}

/** Whether any process of the group `pid` leads is alive. */
function groupAlive(pid: number): boolean {
  try {
    process.kill(-pid, 0)
    return true
  } catch {
    return false
  }
}

/** Exit 2, exactly one line on stderr matching `line`, nothing on stdout, no output folder. */
function expectMistake(result: { code: number | null; stdout: string; stderr: string }, line: RegExp, out?: string): void {
  expect(result.code, result.stderr).toBe(2)
  expect(result.stderr.trimEnd().split('\n'), result.stderr).toHaveLength(1)
  expect(result.stderr.trimEnd()).toMatch(line)
  expect(result.stdout).toBe('')
  if (out !== undefined) expect(existsSync(out)).toBe(false)
}

describe('mistakes are caught before any work: exit 2, one line, nothing written', () => {
  it('a column that is not in every input: the image column, --keep, --id-column, the question column', async () => {
    const part0 = join(ROOT, 'fixtures', 'shards', 'part-00000.parquet')
    const cases: [string[], RegExp][] = [
      [['scan', 'fixtures/shards', '--image-column', 'nope'], new RegExp(`^evflow: PipelineConfigError: imageColumn: ${part0}: no column 'nope' \\(columns: id, image, url\\)$`)],
      [['scan', 'fixtures/shards', '--keep', 'url,nope'], new RegExp(`^evflow: PipelineConfigError: keep: ${part0} has no column 'nope' to keep \\(its columns: id, image, url\\)$`)],
      [['scan', 'fixtures/shards', '--id-column', 'key'], /^evflow: PipelineConfigError: idColumn: .*part-00000\.parquet has no column 'key' \(its columns: id, image, url\)$/],
    ]
    if (HAVE_MODEL) cases.push([['vqa', 'fixtures/shards'], /^evflow: PipelineConfigError: questionColumn: .*part-00000\.parquet has no question column 'question' \(its columns: id, image, url\): name it with --question-column, or ask .* --question TEXT$/])
    for (const [args, line] of cases) {
      const out = join(dir, `columns-${args[0]}-${args[2]}`)
      expectMistake(runCli([...args, '-o', out]), line, out)
    }
  })

  it('an input without any image column among good ones: named, with its columns', async () => {
    const inputs = join(dir, 'mixed')
    mkdirSync(inputs)
    cpSync(join(ROOT, 'fixtures', 'shards', 'part-00002.parquet'), join(inputs, 'a.parquet'))
    await duckQuery(`COPY (SELECT id, caption FROM read_parquet('${join(ROOT, 'fixtures', 'scenes', 'test.parquet')}') LIMIT 4) TO '${join(inputs, 'b.parquet')}' (FORMAT parquet)`)
    const out = join(dir, 'mixed-out')
    expectMistake(runCli(['scan', inputs, '-o', out]), /^evflow: PipelineConfigError: imageColumn: .*b\.parquet: no image column \(no binary or \{bytes, path\} column among: id, caption\)$/, out)
  })

  it('counts that are not whole, --limit 0 (also from a config file), an output path that is a file', () => {
    const out = join(dir, 'counts')
    expectMistake(runCli(['scan', 'fixtures/shards', '-o', out, '--concurrency', '2.5']), /^error: option '--concurrency <n>' argument '2\.5' is invalid\. expected an integer, got "2\.5" \(see --help\)$/, out)
    expectMistake(runCli(['scan', 'fixtures/shards', '-o', out, '--max-bytes', '1.5MiB']), /^error: option '--max-bytes <bytes>' argument '1\.5MiB' is invalid\. expected a byte count/, out)
    expectMistake(runCli(['scan', 'fixtures/shards', '-o', out, '--limit', '0']), /^error: option '--limit <n>' argument '0' is invalid\. expected a positive integer \(see --help\)$/, out)
    const config = join(dir, 'limit0.json')
    writeFileSync(config, JSON.stringify({ limit: 0 }))
    expectMistake(runCli(['scan', 'fixtures/shards', '-o', out, '--config', config]), /^evflow: PipelineConfigError: limit: /, out)
    writeFileSync(config, JSON.stringify({ size: 2.5 }))
    expectMistake(runCli(['scan', 'fixtures/shards', '-o', out, '--config', config]), /^evflow: PipelineConfigError: size: /, out)
    const file = join(dir, 'a-file')
    writeFileSync(file, 'not a folder')
    expectMistake(runCli(['scan', 'fixtures/shards', '-o', file]), new RegExp(`^evflow: PipelineConfigError: out: ${file} is a file, not a folder`))
    expectMistake(runCli(['scan', 'fixtures/shards', '-o', join(file, 'sub')]), /^evflow: PipelineConfigError: out: .*a-file, on the way to .*a-file\/sub, is a file, not a folder/)
    expect(readFileSync(file, 'utf8')).toBe('not a folder')
  })

  it('evflow inspect on a missing file or a folder: exit 2 and a clear line, as the run commands', () => {
    expectMistake(runCli(['inspect', join(dir, 'nope.parquet')]), new RegExp(`^evflow: InputNotFoundError: ${dir}/nope\\.parquet: no such file$`))
    expectMistake(runCli(['inspect', 'fixtures/shards']), /^evflow: InputNotFoundError: fixtures\/shards: is a folder: evflow inspect reads one Parquet file/)
    expectMistake(runCli(['scan', join(dir, 'nope.parquet'), '-o', join(dir, 'x')]), /^evflow: InputNotFoundError: /)
  })

  it.skipIf(!HAVE_MODEL)('vqa: no question at all, a blank one, one with words the vocabulary lacks', () => {
    const out = join(dir, 'vqa-fixed')
    expectMistake(runCli(['vqa', 'fixtures/scenes/test.parquet', '-o', out, '--question', '   ']), /^evflow: PipelineConfigError: questions\.0: is blank/, out)
    expectMistake(
      runCli(['vqa', 'fixtures/scenes/test.parquet', '-o', out, '--question', 'is there a star?', '--question', 'what is in the image?']),
      /^evflow: PipelineConfigError: questions: the question has words the model's vocabulary \(65 tokens\) cannot represent: "image"; every row would be a question-out-of-vocabulary error row$/,
      out,
    )
  })
})

describe.skipIf(!HAVE_MODEL)('a model that cannot load: exit 2 promptly with one line, for every model pipeline, nothing left running', () => {
  const manifest = () => readFileSync(join(MODEL_DIR, 'manifest.json'), 'utf8')
  const cases: { name: string; make: (pkg: string) => void; line: RegExp }[] = [
    { name: 'a truncated manifest', make: (pkg) => writeFileSync(join(pkg, 'manifest.json'), manifest().slice(0, 500)), line: /ModelManifestError: manifest manifest\.json: is not valid JSON/ },
    { name: 'an empty manifest', make: (pkg) => writeFileSync(join(pkg, 'manifest.json'), ''), line: /ModelManifestError: manifest manifest\.json: is not valid JSON/ },
    { name: 'a {} manifest', make: (pkg) => writeFileSync(join(pkg, 'manifest.json'), '{}'), line: /ModelManifestError: manifest format: / },
    {
      name: 'a manifest against its schema',
      make: (pkg) => writeFileSync(join(pkg, 'manifest.json'), manifest().replace('"n_layer": 4', '"n_layer": "four"')),
      line: /ModelManifestError: manifest dims\.n_layer: /,
    },
    { name: 'a missing graph', make: (pkg) => rmSync(join(pkg, 'decoder.onnx')), line: /ModelManifestError: manifest graphs\.decoder\.file: decoder\.onnx does not exist in / },
    { name: 'a graph with another sha256', make: (pkg) => writeFileSync(join(pkg, 'vit.onnx'), Buffer.concat([readFileSync(join(pkg, 'vit.onnx')), Buffer.from('x')])), line: /ModelManifestError: manifest graphs\.vit\.sha256: vit\.onnx has sha256 [0-9a-f]{64}, the manifest says / },
  ]
  const commands = [['caption', 'fixtures/scenes/test.parquet'], ['video-caption', 'fixtures/scenes/video.parquet'], ['vqa', 'fixtures/scenes/vqa.parquet'], ['embed', 'fixtures/scenes/test.parquet']]

  it('the fixture has the field the schema case edits', () => {
    expect(manifest()).toContain('"n_layer": 4')
  })

  for (const c of cases) {
    it(c.name, async () => {
      const pkg = join(dir, c.name.replace(/\W+/g, '-'))
      cpSync(MODEL_DIR, pkg, { recursive: true })
      c.make(pkg)
      // the four pipelines at once; each must be done well within the limit (a healthy start takes ~1 s)
      const results = await Promise.all(commands.map(([pipeline, input]) => runGroup([pipeline, input, '-o', join(pkg, `out-${pipeline}`), '--model', pkg, '--limit', '4'], 30_000)))
      for (const [i, result] of results.entries()) {
        expectMistake(result, new RegExp(`^evflow: ${c.line.source}`), join(pkg, `out-${commands[i][0]}`))
        expect(groupAlive(result.pid)).toBe(false)
      }
    })
  }
})

const HAVE_SCRIPT = spawnSync('script', ['--version'], { encoding: 'utf8' }).status === 0
if (!HAVE_SCRIPT) console.warn('NOTICE: test/app/cli/mistakes: no `script` (util-linux) to give the CLI a terminal: SKIPPING the progress-bar case')

describe.skipIf(!HAVE_MODEL || !HAVE_SCRIPT)('on a terminal', () => {
  it('a model that fails once the run has started (a graph ONNX Runtime cannot load) ends it: exit 6, the progress bar does not hold the process', async () => {
    const pkg = join(dir, 'garbage-graph')
    cpSync(MODEL_DIR, pkg, { recursive: true })
    const before = createHash('sha256').update(readFileSync(join(pkg, 'vit.onnx'))).digest('hex')
    writeFileSync(join(pkg, 'vit.onnx'), 'not an onnx graph, with the sha256 the manifest gives')
    const after = createHash('sha256').update(readFileSync(join(pkg, 'vit.onnx'))).digest('hex')
    writeFileSync(join(pkg, 'manifest.json'), readFileSync(join(pkg, 'manifest.json'), 'utf8').replace(before, after))
    // the domain declaration is bound to the manifest's bytes: declare it for the edited one
    const manifestSha = createHash('sha256').update(readFileSync(join(pkg, 'manifest.json'))).digest('hex')
    const domain = JSON.parse(readFileSync(join(pkg, 'domain.json'), 'utf8')) as { manifest_sha256: string }
    writeFileSync(join(pkg, 'domain.json'), JSON.stringify({ ...domain, manifest_sha256: manifestSha }))
    const command = [process.execPath, CLI, 'caption', 'fixtures/scenes/test.parquet', '-o', join(pkg, 'out'), '--model', pkg, '--limit', '4'].map((a) => `'${a}'`).join(' ')
    // `script` runs the command on a pseudo-terminal (stderr.isTTY: the progress bar) and exits with its code
    const result = await runGroupOf('script', ['-qec', command, '/dev/null'], 30_000)
    expect(result.code, result.stdout).toBe(6)
    expect(result.stdout).toMatch(/evflow: InferenceError: .*vit\.onnx: cannot create a session/)
    expect(groupAlive(result.pid)).toBe(false)
  })
})
