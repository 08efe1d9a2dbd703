"""Synthetic scenes for training and evaluation: the numpy export of `npm run data` (docs/data.md).

Images: {stem}.images.npy uint8 [N,64,64,3] + {stem}.jsonl; clips: {stem}.frames.npy uint8 [N,8,64,64,3] + .jsonl
(num_frames per row). Text: word-level vocabulary, '?' a token of its own.

Training rows are packed: one row per image (or clip) holds its caption and a few of its questions as separate
segments `<bos> caption <eos>`, `<bos> question <sep> answer <eos>`; attention never crosses segments and
positions restart at 0 in each, so a packed row trains exactly as separate sequences would, sharing one visual
memory (the image is encoded once for all its texts).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

PAD, BOS, EOS, UNK, SEP = 0, 1, 2, 3, 4
MEAN = STD = 0.5  # pixels: (v/255 - 0.5) / 0.5 per channel


class Vocab:
    def __init__(self, path):
        self.itos = open(path).read().splitlines()
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        assert self.itos[:5] == ["<pad>", "<bos>", "<eos>", "<unk>", "<sep>"], "unexpected special tokens"

    def __len__(self):
        return len(self.itos)

    def encode(self, text):
        return [self.stoi.get(w, UNK) for w in text.replace("?", " ? ").split()]

    def decode(self, ids):
        words = []
        for i in ids:
            if i == EOS:
                break
            words.append(self.itos[i])
        return " ".join(words).replace(" ?", "?")


def normalize(pixels_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [...,64,64,3] (HWC) -> float [...,3,64,64], (v/255 - mean) / std."""
    x = pixels_u8.float().movedim(-1, -3)
    return (x / 255.0 - MEAN) / STD


@dataclass
class Split:
    """One exported dataset: pixels (images [N,64,64,3] or clips [N,8,64,64,3]) and its rows."""
    pixels: np.ndarray
    rows: list
    video: bool

    @staticmethod
    def load(directory, stem, limit=None, mmap=False):
        video = os.path.exists(os.path.join(directory, f"{stem}.frames.npy"))
        npy = os.path.join(directory, f"{stem}.frames.npy" if video else f"{stem}.images.npy")
        pixels = np.load(npy, mmap_mode="r" if mmap else None)
        rows = []
        with open(os.path.join(directory, f"{stem}.jsonl")) as f:
            for line in f:
                rows.append(json.loads(line))
                if limit and len(rows) >= limit:
                    break
        if limit:
            pixels = pixels[:limit]
        assert len(pixels) == len(rows), f"{npy}: {len(pixels)} pixel rows, {len(rows)} jsonl rows"
        return Split(pixels, rows, video)

    def __len__(self):
        return len(self.rows)

    def frames(self, idx):
        """idx -> (pixels float [B,F,3,64,64], frame_mask float [B,F]); F = 1 for images, max num_frames for clips."""
        idx = np.asarray(idx)
        if not self.video:
            px = normalize(torch.from_numpy(np.ascontiguousarray(self.pixels[idx])))[:, None]
            return px, torch.ones(len(idx), 1)
        nf = np.array([self.rows[i]["num_frames"] for i in idx])
        Fm = int(nf.max())
        px = normalize(torch.from_numpy(np.ascontiguousarray(self.pixels[idx, :Fm])))
        mask = torch.from_numpy((np.arange(Fm)[None, :] < nf[:, None]).astype(np.float32))
        return px, mask


def segments_for(row, vocab: Vocab, n_qa, rng, caption=True):
    """A row's training segments: list of (tokens, first_target_index)."""
    segs = []
    if caption:
        segs.append(([BOS] + vocab.encode(row["caption"]) + [EOS], 1))
    qa = row["qa"]
    if n_qa and qa:
        pick = rng.choice(len(qa), size=min(n_qa, len(qa)), replace=False) if rng is not None else range(min(n_qa, len(qa)))
        for j in pick:
            q = [BOS] + vocab.encode(qa[j]["question"]) + [SEP]
            segs.append((q + vocab.encode(qa[j]["answer"]) + [EOS], len(q)))
    return segs


def pack(rows_segments, loss_on_prompt=False):
    """Pack each row's segments into one sequence.

    rows_segments: per row a list of (tokens, first_target) -> dict of tensors:
      input_ids [B,T], position_ids [B,T], targets [B,T] (-100 = no loss), bias [B,1,T,T] (block-causal, additive),
      kind [B,T] (0 caption token, 1 answer token, -1 none) for per-task losses.
    """
    seqs = []
    for segs in rows_segments:
        inp, pos, tgt, seg, kind = [], [], [], [], []
        for s, (toks, first) in enumerate(segs):
            n = len(toks) - 1
            inp += toks[:-1]
            pos += list(range(n))
            k = 0 if first == 1 else 1
            for t in range(n):  # predicting toks[t+1] from toks[:t+1]
                on = t + 1 >= (1 if loss_on_prompt else first)
                tgt.append(toks[t + 1] if on else -100)
                kind.append(k if t + 1 >= first else -1)
            seg += [s] * n
        seqs.append((inp, pos, tgt, seg, kind))
    B = len(seqs)
    T = max(len(s[0]) for s in seqs)
    input_ids = torch.full((B, T), PAD, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    targets = torch.full((B, T), -100, dtype=torch.long)
    kind = torch.full((B, T), -1, dtype=torch.long)
    segid = torch.full((B, T), -1, dtype=torch.long)
    for b, (inp, pos, tgt, seg, knd) in enumerate(seqs):
        n = len(inp)
        input_ids[b, :n] = torch.tensor(inp)
        position_ids[b, :n] = torch.tensor(pos)
        targets[b, :n] = torch.tensor(tgt)
        kind[b, :n] = torch.tensor(knd)
        segid[b, :n] = torch.tensor(seg)
    t = torch.arange(T)
    allowed = (segid[:, :, None] == segid[:, None, :]) & (t[None, :, None] >= t[None, None, :]) & (segid[:, None, :] >= 0)
    allowed |= torch.eye(T, dtype=torch.bool)[None]  # padding positions attend to themselves (no NaN; no loss)
    bias = torch.where(allowed, 0.0, -1e9).unsqueeze(1)
    return {"input_ids": input_ids, "position_ids": position_ids, "targets": targets, "bias": bias, "kind": kind}


def left_pad(prompts):
    """list of token lists -> input_ids [B,T], attention_mask [B,T], position_ids [B,T] (left padded)."""
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), PAD, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        mask[b, T - len(p):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, pos


# ----------------------------------------------------------------------------- vision pre-training labels (stage 0)

SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
COLORS = ["red", "green", "blue", "yellow", "purple", "cyan"]
SIZES = ["small", "large"]
GRID = 3  # the scenes' 3x3 grid


def patch_labels(row, frame=0, side=8):
    """Per-patch targets for the vision pre-training, from a row's scene (docs/data.md).

    Returns int64 [2, 3, side*side]: [0] "cell" labels (every patch whose centre lies in grid cell (r, c) carries
    the (shape, color, size) of the object of that cell), [1] "cover" labels (the object whose bounding box
    contains the patch centre); class 0 = empty, else 1 + index in SHAPES / COLORS / SIZES. For clips the
    object's position in frame `frame` (its path) defines its cell and box. Rows without a scene: all -100
    (ignored)."""
    out = np.zeros((2, 3, side * side), np.int64)
    sc = row.get("scene")
    if sc is None:
        out[:] = -100
        return out
    W, H = sc["width"], sc["height"]
    c = (np.arange(side) + 0.5) / side                     # patch centres, as a fraction of the side
    cell_of = np.minimum((c * GRID).astype(int), GRID - 1)  # grid cell of each patch row / column
    for o in sc["objects"]:
        if "path" in o:
            x, y = o["path"][min(frame, len(o["path"]) - 1)]
            r, cc = min(int(GRID * y / H), GRID - 1), min(int(GRID * x / W), GRID - 1)
        else:
            x, y, r, cc = o["x"], o["y"], o["row"], o["col"]
        lab = (1 + SHAPES.index(o["shape"]), 1 + COLORS.index(o["color"]), 1 + SIZES.index(o.get("size", "large")))
        cell = (cell_of[:, None] == r) & (cell_of[None, :] == cc)                     # [side,side] rows x cols
        cover = ((np.abs(c[:, None] * H - y) <= o["r"]) & (np.abs(c[None, :] * W - x) <= o["r"]))
        for k in range(3):
            out[0, k][cell.reshape(-1)] = lab[k]
            out[1, k][cover.reshape(-1)] = lab[k]
    return out


DIRECTIONS = ["up", "down", "left", "right"]


# ----------------------------------------------------------------------------- stage 2's cell labels
# Training-only heads on the memory tokens of the grid-cell queries (heads.CELL_HEADS) learn, per frame and cell, a
# label of the object whose centre lies in that cell: labels [n_frames, grid*grid], 0 for an empty cell, -100 for
# frames past a clip's end (ignored).

def object_cells(row, n_frames, grid, label):
    """label(k, object) of the scene's k-th object in the cell of its centre on each frame (images: one frame; clips:
    the object's path), 0 elsewhere: int64 [n_frames, grid*grid]; frames past the clip's end -100."""
    out = np.full((n_frames, grid * grid), -100, np.int64)
    sc = row["scene"]
    W, H = sc["width"], sc["height"]
    for f in range(min(n_frames, row.get("num_frames", 1))):
        out[f] = 0
        for k, o in enumerate(sc["objects"]):
            x, y = o["path"][min(f, len(o["path"]) - 1)] if "path" in o else (o["x"], o["y"])
            r, c = min(int(grid * y / H), grid - 1), min(int(grid * x / W), grid - 1)
            out[f, r * grid + c] = label(k, o)
    return out


def cell_directions(row, n_frames, grid=GRID):
    """Clips: the direction of motion of each cell's object, 1 + index in DIRECTIONS (the motion head)."""
    return object_cells(row, n_frames, grid, lambda k, o: 1 + DIRECTIONS.index(o["direction"]))


def cell_order(row, n_frames, grid=GRID):
    """Clips: 1 + the place in the caption of each cell's object (the order head). The caption names the objects left
    to right by their first-frame position, the order of the scene's objects."""
    return object_cells(row, n_frames, grid, lambda k, o: 1 + k)


OBJECT_CLASSES = 1 + len(SHAPES) * len(COLORS)


def cell_objects(row, n_frames, grid=GRID):
    """Images and clips: each cell's object, 1 + shape * len(COLORS) + color (the object head). It keeps what an
    object is in the memory token of its own cell, where the other heads ask the mixer to compare objects: without
    it, a caption's colors and shapes change places between objects."""
    label = lambda k, o: 1 + SHAPES.index(o["shape"]) * len(COLORS) + COLORS.index(o["color"])
    return object_cells(row, n_frames, grid, label)


# Caption place of an image object (the group head): 0 empty cell, 1 alone, then first / later member of a group of
# two (2 / 3) or three (4 / 5).
GROUP_CLASSES = 6


def cell_groups(row, n_frames=1, grid=GRID):
    """Images: the place of each cell's object in the caption, classes as GROUP_CLASSES above. Objects with the same
    (size, color, shape) form one group, said once where its first member comes in reading order (docs/data.md,
    Captions; the scene lists objects in reading order): to caption a scene the model must compare its objects."""
    key = lambda o: (o["size"], o["color"], o["shape"])
    objs = row["scene"]["objects"]
    place = []
    for k, o in enumerate(objs):
        n = sum(key(p) == key(o) for p in objs)
        later = any(key(p) == key(o) for p in objs[:k])
        place.append(1 if n == 1 else 2 * (n - 1) + int(later))
    return object_cells(row, n_frames, grid, lambda k, o: place[k])
