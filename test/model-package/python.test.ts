/**
 * The reference model's Python tests (model/tests: shapes per stage, zero gates, frame-aware memory,
 * batch-independent routing, the presets and the init rule, a 20-step training smoke test, a tiny export, the
 * package's weights read back from its ONNX graphs, a small evlm-base build, the PyTorch peer on the committed
 * package) run from the README's test command. They need Debian's PyTorch (`python3-torch`, `python3-numpy`, `python3-pytest`,
 * `libopenblas0-pthread`) under /usr/bin/python3; skipped, with a notice, where torch does not import.
 */
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

import { describe, expect, it } from 'vitest'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const PYTHON = '/usr/bin/python3'
const probe = spawnSync(PYTHON, ['-c', 'import torch, numpy, pytest'], { encoding: 'utf8' })
const HAVE_TORCH = probe.status === 0
if (!HAVE_TORCH) {
  console.warn(`NOTICE: test/model-package/python: ${PYTHON} cannot import torch, numpy and pytest: SKIPPING model/tests ` +
    '(install the Debian packages python3-torch python3-numpy python3-pytest libopenblas0-pthread to run them)')
}

describe.skipIf(!HAVE_TORCH)('model/tests (pytest)', () => {
  it('passes', () => {
    const r = spawnSync(PYTHON, ['-m', 'pytest', 'model/tests', '-q', '-p', 'no:cacheprovider'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1', OMP_NUM_THREADS: '1' },
      timeout: 470_000,
    })
    if (r.status !== 0) console.error(r.stdout, r.stderr)
    expect(r.error).toBeUndefined()
    expect(r.status).toBe(0)
  }, 480_000)
})
