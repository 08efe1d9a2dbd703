"""A byte-level BPE tokenizer (GPT-2's scheme) in the Hugging Face tokenizer.json format: a trainer, an encoder and
a decoder, in plain Python (Debian has no Python `tokenizers` package).

    /usr/bin/python3 model/bpe.py --out tokenizer.json --vocab-size 32000      # train on local_corpus()

The format is the one @huggingface/tokenizers reads (src/model/tokenizer.ts, HfTokenizer): a ByteLevel pre-tokenizer
(GPT-2's split pattern, no prefix space), a BPE model whose vocabulary is the 256 bytes (as GPT-2's printable
characters) and the merges, a ByteLevel decoder, and the special tokens <pad> <bos> <eos> <unk> <sep> as ids 0-4
(the ids of evflow's manifests). encode() and decode() here give exactly what that library gives (checked by
test/model-package/bpe.test.ts on a sample), so PyTorch-side references use the runtime's token ids.

Training (train()): the text is split by the pre-tokenizer pattern and counted once per distinct piece; then, until
the vocabulary is full, the most frequent adjacent pair of symbols (ties: the lexicographically smallest pair) is
merged everywhere. Pair counts are kept incrementally: a merge re-counts only the pieces that contain the pair
(an index from pair to pieces) and a heap with lazy deletion finds the next pair, so a merge costs the pieces it
touches, not the corpus. Deterministic: the same text gives the same merges.

The corpus (local_corpus()) is text every Debian machine that can run model/ has: the Python standard library's sources
(code, comments, docstrings), the docstrings of numpy and torch (python3, python3-numpy, python3-torch) and the licence
texts in /usr/share/common-licenses; its size and sha256 are recorded, so two builds can tell whether they read the
same text.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import heapq
import json
import os
import re
import sys
import sysconfig
import time
import unicodedata
from collections import Counter, defaultdict

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>"]  # ids 0-4, as data.py's PAD BOS EOS UNK SEP


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _char_class(pred):
    """A regex character class of the code points for which pred(category) holds, as ranges."""
    ranges, start, prev = [], None, None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if pred(unicodedata.category(chr(cp))):
            if start is None:
                start = cp
            elif cp != prev + 1:
                ranges.append((start, prev))
                start = cp
            prev = cp
    if start is not None:
        ranges.append((start, prev))
    esc = lambda cp: re.escape(chr(cp))
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


def _pattern():
    """GPT-2's split pattern as @huggingface/tokenizers writes it in JavaScript,
    /'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+/gu, for Python's re: \\p{L} and
    \\p{N} as explicit classes (this Python's Unicode database), \\s as JavaScript's whitespace."""
    L = _char_class(lambda c: c[0] == "L")
    N = _char_class(lambda c: c[0] == "N")
    S = "\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+")


_SPLIT = None


def pre_tokenize(text):
    """The ByteLevel pre-tokenizer: the pattern's pieces, each as its UTF-8 bytes in GPT-2's characters."""
    global _SPLIT
    if _SPLIT is None:
        _SPLIT = _pattern()
    return ["".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8")) for piece in _SPLIT.findall(text)]


# ----------------------------------------------------------------------------- training

def train(pieces: Counter, n_symbols: int, min_frequency: int = 2, log=None):
    """The merges (list of (left, right) symbol strings) learned from piece counts (pre_tokenize's pieces), until
    there are n_symbols distinct symbols (the 256 bytes included). A merge whose result is already a symbol (ab + c
    after a + bc) reuses it, so there can be more merges than new symbols."""
    symbols = [BYTE_TO_CHAR[b] for b in range(256)]
    sid = {s: i for i, s in enumerate(symbols)}
    words = [[sid[c] for c in w] for w in pieces]
    freqs = list(pieces.values())
    counts = defaultdict(int)
    where = defaultdict(set)
    for wi, w in enumerate(words):
        for p in zip(w, w[1:]):
            counts[p] += freqs[wi]
            where[p].add(wi)
    heap = [(-c, symbols[a], symbols[b], a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges = []
    t0 = time.time()
    while len(sid) < n_symbols and heap:
        negc, _, _, a, b = heapq.heappop(heap)
        if counts.get((a, b), 0) != -negc:
            continue  # a stale entry: this pair's count changed after it was pushed
        if -negc < min_frequency:
            break
        merged = symbols[a] + symbols[b]
        c = sid.get(merged)
        if c is None:
            c = sid[merged] = len(symbols)
            symbols.append(merged)
        merges.append((symbols[a], symbols[b]))
        changed = set()
        for wi in where.pop((a, b)):
            w = words[wi]
            new, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    new.append(c)
                    i += 2
                else:
                    new.append(w[i])
                    i += 1
            if len(new) == len(w):
                continue  # the piece no longer holds the pair (an earlier merge took its symbols)
            f = freqs[wi]
            for p in zip(w, w[1:]):
                counts[p] -= f
                changed.add(p)
            for p in zip(new, new[1:]):
                counts[p] += f
                where[p].add(wi)
                changed.add(p)
            words[wi] = new
        del counts[(a, b)]
        changed.discard((a, b))
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], symbols[p[0]], symbols[p[1]], p[0], p[1]))
            else:
                del counts[p]
        if log and len(merges) % 4000 == 0:
            log(f"bpe: {len(merges)} merges ({time.time() - t0:.0f} s), last {merges[-1]} x{-negc}")
    return merges


# ----------------------------------------------------------------------------- the tokenizer

class BpeTokenizer:
    """Byte-level BPE: vocabulary = SPECIALS, the 256 bytes, then the merges' results in merge order (each once)."""

    file = "tokenizer.json"
    output = "generated tokens up to <eos>, special tokens skipped, decoded by the tokenizer (byte-level BPE)"

    def __init__(self, merges, path=None):
        self.merges = [tuple(m) for m in merges]
        tokens = SPECIALS + [BYTE_TO_CHAR[b] for b in range(256)]
        for m in self.merges:
            tokens.append("".join(m))
        tokens = list(dict.fromkeys(tokens))  # a merge whose result is already a token adds none
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.itos = tokens
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.path = path
        self._cache = {}
        self._special = re.compile("(" + "|".join(re.escape(s) for s in sorted(SPECIALS, key=len, reverse=True)) + ")")

    def __len__(self):
        return len(self.itos)

    def _bpe(self, piece):
        word = self._cache.get(piece)
        if word is not None:
            return word
        word = list(piece)
        while len(word) > 1:
            pairs = [(self.ranks.get(p, 1 << 60), i) for i, p in enumerate(zip(word, word[1:]))]
            rank, _ = min(pairs)
            if rank == 1 << 60:
                break
            a, b = self.merges[rank]
            new, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    new.append(a + b)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = new
        if len(piece) < 256:
            self._cache[piece] = word
        return word

    def encode(self, text):
        """Token ids of text, no special tokens added (special tokens written in the text are matched)."""
        ids = []
        for part in self._special.split(text):
            if part in self.vocab and part in SPECIALS:
                ids.append(self.vocab[part])
                continue
            for piece in pre_tokenize(part):
                ids += [self.vocab[t] for t in self._bpe(piece)]
        return ids

    def decode(self, ids):
        """Text of ids up to the first <eos>, special tokens skipped (invalid UTF-8 becomes U+FFFD)."""
        out = []
        for i in ids:
            if i == SPECIALS.index("<eos>"):
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return bytes(CHAR_TO_BYTE[c] for c in "".join(out)).decode("utf-8", errors="replace")

    def manifest_entry(self):
        return {"type": "huggingface", "file": self.file, "clean_up_tokenization_spaces": False}

    def to_json(self):
        """The Hugging Face tokenizer.json."""
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": {**byte_level, "trim_offsets": False},
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": self.vocab, "merges": [list(m) for m in self.merges]},
        }

    def save(self, path):
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, ensure_ascii=False)
        self.path = path

    @staticmethod
    def load(path):
        """Reads a tokenizer.json written by save() (checks that its vocabulary is SPECIALS + bytes + merges)."""
        j = json.load(open(path, encoding="utf-8"))
        tok = BpeTokenizer(j["model"]["merges"], path)
        if tok.vocab != j["model"]["vocab"]:
            raise ValueError(f"{path}: the vocabulary is not the specials, the bytes and the merges' results in order")
        return tok


# ----------------------------------------------------------------------------- the corpus

SKIP_DIRS = ("test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__")


def _sources(root):
    """The .py files under root (tests excluded), in sorted path order."""
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        for f in sorted(files):
            if f.endswith(".py"):
                try:
                    yield open(os.path.join(d, f), encoding="utf-8").read()
                except (UnicodeDecodeError, OSError):
                    continue


def _docstrings(root):
    """Docstrings (modules, classes, functions) of the .py files under root, in sorted path order."""
    for text in _sources(root):
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    yield doc


def local_corpus(extra=()):
    """(texts, description): the Python standard library's sources (code, comments and docstrings; tests excluded),
    the docstrings of numpy and torch, the licences in /usr/share/common-licenses, and any `extra` text files, in a
    fixed order."""
    import numpy
    import torch
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = list(_sources(stdlib))
    roots = [os.path.dirname(numpy.__file__), os.path.dirname(torch.__file__)]
    for root in roots:
        texts += list(_docstrings(root))
    licences = "/usr/share/common-licenses"
    files = sorted(os.path.join(licences, f) for f in os.listdir(licences)) if os.path.isdir(licences) else []
    for path in files + list(extra):
        if os.path.isfile(path):
            texts.append(open(path, encoding="utf-8", errors="replace").read())
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", errors="surrogatepass"))
        h.update(b"\0")
    desc = {"sources": [f"{stdlib}/**/*.py (no tests)"] + [f"docstrings of {r}/**/*.py" for r in roots] + [licences] + list(extra),
            "texts": len(texts),
            "bytes": sum(len(t.encode("utf-8", errors="surrogatepass")) for t in texts), "sha256": h.hexdigest(),
            "python": sys.version.split()[0], "numpy": numpy.__version__, "torch": torch.__version__}
    return texts, desc


def train_tokenizer(texts, vocab_size=32000, log=None):
    """A BpeTokenizer of vocab_size entries (SPECIALS + 256 bytes + merges) learned from texts."""
    pieces = Counter()
    for t in texts:
        pieces.update(pre_tokenize(t))
    merges = train(pieces, vocab_size - len(SPECIALS), log=log)
    tok = BpeTokenizer(merges)
    if len(tok) < vocab_size:
        raise ValueError(f"the corpus gives only {len(tok)} tokens (pairs seen at least twice); {vocab_size} are needed")
    return tok


def encode_samples(tok, texts):
    """[{text, ids, decoded}]: what the TypeScript side must reproduce (test/model-package/bpe.test.ts)."""
    return [{"text": t, "ids": tok.encode(t), "decoded": tok.decode(tok.encode(t))} for t in texts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--text", nargs="*", help="train on these text files instead of local_corpus()")
    ap.add_argument("--extra", nargs="*", default=[], help="more text files for local_corpus()")
    ap.add_argument("--samples", nargs=2, metavar=("IN", "OUT"),
                    help="encode the texts of IN (a JSON list of strings) into OUT ([{text, ids, decoded}])")
    args = ap.parse_args()
    t0 = time.time()
    if args.text:
        texts = [open(f, encoding="utf-8").read() for f in args.text]
        desc = {"texts": len(texts), "bytes": sum(len(t.encode()) for t in texts), "sha256": "-"}
    else:
        texts, desc = local_corpus(args.extra)
    print(f"bpe: corpus {desc['texts']} texts, {desc['bytes'] / 1e6:.1f} MB, sha256 {desc['sha256'][:16]}", flush=True)
    tok = train_tokenizer(texts, args.vocab_size, log=lambda m: print(m, flush=True))
    tok.save(args.out)
    print(f"bpe: wrote {args.out}: {len(tok)} tokens in {time.time() - t0:.0f} s", flush=True)
    if args.samples:
        texts = json.load(open(args.samples[0], encoding="utf-8"))
        json.dump(encode_samples(tok, texts), open(args.samples[1], "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main()
