/**
 * What a Parquet schema tells evflow: which column holds images (binary, or the Hugging Face `datasets`
 * struct `{bytes, path}`), which holds ids, and how to copy kept columns to the output.
 */
import { parquetSchema, type FileMetaData, type SchemaElement, type SchemaTree } from 'hyparquet'

import type { KeptColumn } from '../records.js'

/** Names that mark a binary column as the image column when several binary columns exist. */
const IMAGE_NAMES = ['image', 'img', 'jpg', 'jpeg', 'png', 'webp', 'picture', 'photo', 'image_bytes', 'bytes', 'frames', 'video']

/** `frames`: a `list<binary>` column, one clip of encoded frames per row (video). */
export type ImageColumnLayout = 'binary' | 'hf-struct' | 'frames'

export interface ColumnSummary {
  readonly name: string
  /** Physical type for primitive columns; `group` for structs, `list`/`map` for nested. */
  readonly type: string
  readonly logical?: string
  readonly nullable: boolean
  readonly image?: ImageColumnLayout
}

/** Top-level columns of a file, with the image-capable ones marked. */
export function summarizeColumns(metadata: FileMetaData): ColumnSummary[] {
  const tree = parquetSchema(metadata)
  return tree.children.map((child) => {
    const el = child.element
    const logical = el.logical_type?.type ?? el.converted_type
    const nested = child.children.length > 0
    const type = nested ? (logical === 'LIST' ? 'list' : logical === 'MAP' || logical === 'MAP_KEY_VALUE' ? 'map' : 'group') : String(el.type)
    return {
      name: el.name,
      type,
      ...(logical === undefined ? {} : { logical: String(logical) }),
      nullable: el.repetition_type !== 'REQUIRED',
      ...withImage(imageLayout(child)),
    }
  })
}

function withImage(layout: ImageColumnLayout | undefined): { image?: ImageColumnLayout } {
  return layout === undefined ? {} : { image: layout }
}

function isBinaryLeaf(el: SchemaElement): boolean {
  if (el.type !== 'BYTE_ARRAY' && el.type !== 'FIXED_LEN_BYTE_ARRAY') return false
  if (el.repetition_type === 'REPEATED') return false
  const logical = el.logical_type?.type
  if (logical !== undefined) return false
  const converted = el.converted_type
  return converted === undefined
}

function imageLayout(node: SchemaTree): ImageColumnLayout | undefined {
  if (node.children.length === 0) return isBinaryLeaf(node.element) ? 'binary' : undefined
  const logical = node.element.logical_type?.type ?? node.element.converted_type
  if (logical === 'LIST') {
    // Three-level list: <name> (LIST) → repeated group `list` → `element`; or the legacy two-level form.
    const repeated = node.children.length === 1 ? node.children[0] : undefined
    if (!repeated || repeated.element.repetition_type !== 'REPEATED') return undefined
    if (repeated.children.length === 0) return isBinaryLeaf({ ...repeated.element, repetition_type: 'REQUIRED' }) ? 'frames' : undefined
    const element = repeated.children.length === 1 ? repeated.children[0] : undefined
    return element && element.children.length === 0 && isBinaryLeaf(element.element) ? 'frames' : undefined
  }
  if (logical === 'MAP' || logical === 'MAP_KEY_VALUE') return undefined
  const bytes = node.children.find((c) => c.element.name === 'bytes')
  if (bytes && bytes.children.length === 0 && isBinaryLeaf(bytes.element)) return 'hf-struct'
  return undefined
}

/**
 * Picks the image column: `requested` when given, else the only image-capable column, else the one with a
 * conventional name. Returns an explanation instead when none can be chosen.
 */
export function chooseImageColumn(
  columns: readonly ColumnSummary[],
  requested?: string,
): { column: string } | { problem: string } {
  if (requested !== undefined) {
    const found = columns.find((c) => c.name === requested)
    if (!found) return { problem: `no column '${requested}' (columns: ${columns.map((c) => c.name).join(', ')})` }
    if (!found.image) return { problem: `column '${requested}' is ${found.type}${found.logical ? `/${found.logical}` : ''}, not binary image bytes` }
    return { column: requested }
  }
  const candidates = columns.filter((c) => c.image)
  if (candidates.length === 1) return { column: candidates[0].name }
  for (const name of IMAGE_NAMES) {
    const match = candidates.find((c) => c.name.toLowerCase() === name)
    if (match) return { column: match.name }
  }
  if (candidates.length === 0) {
    return { problem: `no image column (no binary or {bytes, path} column among: ${columns.map((c) => c.name).join(', ')})` }
  }
  return { problem: `several binary columns (${candidates.map((c) => c.name).join(', ')}): choose one with imageColumn / --image-column` }
}

/** A top-level column: its schema element when it is primitive and not repeated (else it is written as JSON). */
export interface TopLevelField {
  readonly name: string
  readonly element?: SchemaElement
}

/** The top-level columns of a schema tree, as {@link keptColumns} needs them. */
export function keptFields(tree: SchemaTree): TopLevelField[] {
  return tree.children.map((node) =>
    node.children.length > 0 || node.element.repetition_type === 'REPEATED' ? { name: node.element.name } : { name: node.element.name, element: node.element },
  )
}

/** How each kept column is written: primitive columns keep their schema element, nested ones become JSON. */
export function keptColumns(fields: readonly TopLevelField[], names: readonly string[]): KeptColumn[] {
  return names.map((name) => {
    const field = fields.find((f) => f.name === name)
    return field?.element ? { name, element: field.element } : { name }
  })
}
