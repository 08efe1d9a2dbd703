/** The usage examples in each command's `--help`. */

/**
 * The usage examples of each command (run on the bundled data from a clone's root; `test/app/cli/help.test.ts`
 * runs every one of them). A `#` starts a comment.
 */
export const EXAMPLES: Readonly<Record<string, readonly string[]>> = {
  evflow: [
    'evflow caption fixtures/scenes/test.parquet -o out/caption --limit 64',
    'evflow eval out/caption --reference fixtures/scenes/test.parquet',
    'evflow inspect fixtures/scenes/test.parquet',
  ],
  scan: ['evflow scan fixtures/shards -o out/scan', 'evflow scan fixtures/shards/part-00000.parquet -o out/scan-json --keep url --json   # JSON lines on stdout'],
  caption: [
    'evflow caption fixtures/scenes/test.parquet -o out/caption --limit 64',
    'evflow caption fixtures/scenes/test.parquet -o out/caption-kept --limit 8 --keep caption   # the kept caption is written as input_caption',
  ],
  'video-caption': ['evflow video-caption fixtures/scenes/video.parquet -o out/video-caption --limit 16'],
  vqa: [
    'evflow vqa fixtures/scenes/vqa.parquet -o out/vqa --limit 64   # the question column',
    "evflow vqa fixtures/scenes/test.parquet -o out/vqa-fixed --limit 16 --question 'what color is the star?' --question 'is there a red circle?'",
  ],
  embed: ['evflow embed fixtures/scenes/test.parquet -o out/embed --limit 64'],
  inspect: ['evflow inspect fixtures/scenes/test.parquet', 'evflow inspect fixtures/shards/part-00002.parquet --json'],
  eval: ['evflow eval out/caption --reference fixtures/scenes/test.parquet', 'evflow eval out/vqa --reference fixtures/scenes/vqa.parquet --json   # the report as JSON on stdout'],
  report: ['evflow report out/caption', 'evflow report out/caption -o out/caption-report.html --reference fixtures/scenes/test.parquet'],
  submit: ['evflow submit fixtures/shards -o out/queued --pipeline scan --queue redis://127.0.0.1:6379'],
  worker: ['evflow worker --queue redis://127.0.0.1:6379 --exit-when-idle'],
  status: ['evflow status --queue redis://127.0.0.1:6379'],
  cancel: ['evflow cancel --all --queue redis://127.0.0.1:6379'],
}

/** The "Examples:" paragraph of a command's help. */
export function examplesHelp(command: string): string {
  const lines = EXAMPLES[command] ?? []
  return lines.length === 0 ? '' : `\nExamples (on the bundled data, from a clone's root):\n${lines.map((l) => `  ${l}`).join('\n')}\n`
}
