"""Training-only heads: small linear heads that give parts of the model a direct training signal, with their labels
and losses. None of them is part of EVLM, saved in a checkpoint or exported; they add no inference cost.

    PatchHeads  stage 0   on ViT taps          each patch's (shape, color, size): of its grid cell's object and of the
                                               object covering it (the stand-in for a pretrained vision encoder)
    BowHead     stage 2   on the last ViT tap  which caption words occur (bag of words), when "bow_coef" is set
    CellHeads   stage 2   on memory tokens     per grid cell: motion, order, group and object (CELL_HEADS), each when
                                               its "{name}_coef" is set

Labels come from the scene descriptions of the training rows (model/data.py).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import (COLORS, DIRECTIONS, GROUP_CLASSES, OBJECT_CLASSES, SHAPES, SIZES, cell_directions, cell_groups,
                  cell_objects, cell_order, patch_labels)

N_CLS = (1 + len(SHAPES), 1 + len(COLORS), 1 + len(SIZES))  # per-patch label classes (0 = empty)

# Stage 2's cell heads: name -> (rows they read: "img" and / or "vid", classes, labels(row, frames, grid)
# [frames, grid*grid], see data.object_cells); each is on when its config "{name}_coef" is not 0
CELL_HEADS = {
    "motion": (("vid",), 1 + len(DIRECTIONS), cell_directions),
    "order": (("vid",), 3, cell_order),
    "group": (("img",), GROUP_CLASSES, cell_groups),
    "object": (("img", "vid"), OBJECT_CLASSES, cell_objects),
}


def grid_targets(split, idx):
    """Pixels of the rows idx (clips: every valid frame, flattened) and their per-patch labels [N,2,3,P]."""
    px, fm = split.frames(idx)
    keep = fm.reshape(-1) > 0
    labels = [patch_labels(split.rows[i], f) for i in idx for f in range(px.shape[1])]
    labels = torch.from_numpy(np.stack(labels))[keep]
    return px.reshape(-1, *px.shape[2:])[keep], labels


class PatchHeads(nn.Module):
    """Stage 0: a linear head per tapped layer in `taps` (indices into the model's taps) labels every patch with the
    (shape, color, size) of the object in its grid cell ("cell") and of the object covering it ("cover")."""

    def __init__(self, vit_dim, taps):
        super().__init__()
        self.taps = list(taps)
        self.heads = nn.ModuleList([nn.Linear(vit_dim, 2 * sum(N_CLS)) for _ in self.taps])

    def loss(self, taps, labels, cover_coef):
        """taps [N,L,P,Dv], labels [N,2,3,P] (-100: no label) -> (summed cross-entropy, accuracies on object patches:
        per head the cell labels' shape, color, size)."""
        loss, acc = 0.0, []
        for head, t in zip(self.heads, self.taps):
            out = head(taps[:, t]).view(len(taps), -1, 2, sum(N_CLS))    # [N,P,2 (cell, cover),classes]
            o = 0
            for k, n in enumerate(N_CLS):
                for j, w in ((0, 1.0), (1, cover_coef)):
                    logits, tgt = out[:, :, j, o:o + n], labels[:, j, k]
                    loss = loss + w * F.cross_entropy(logits.reshape(-1, n), tgt.reshape(-1), ignore_index=-100)
                    if j == 0:
                        obj = tgt > 0
                        acc.append((logits.argmax(-1) == tgt)[obj].float().mean().item())
                o += n
        return loss, acc


class BowHead(nn.Linear):
    """Stage 2 (optional): the visual features of an image predict which caption words occur (multi-hot, BCE). It gives
    a from-scratch ViT a direct signal that does not pass through the zero-initialised gates; without it the visual
    tokens collapse to image-independent vectors."""

    def __init__(self, vit_dim, vocab_size):
        super().__init__(vit_dim, vocab_size)

    def loss(self, last_tap, captions, vocab, device):
        """last_tap [B,P,Dv] (the ViT's last tap), captions: B strings -> binary cross-entropy."""
        words = torch.zeros(len(captions), self.out_features)
        for r, caption in enumerate(captions):
            words[r, vocab.encode(caption)] = 1.0
        logit = self(last_tap).max(dim=1).values                     # [B,V]: max over patches
        return F.binary_cross_entropy_with_logits(logit, words.to(device))


class CellHeads(nn.Module):
    """Stage 2: linear heads (CELL_HEADS) on the memory tokens of the grid-cell queries, one per tap in `taps`. They give
    the memory mixer a direct signal for what captions need and the caption loss teaches slowly: comparing a clip's
    frames (motion), its objects' first-frame positions (order) and an image's objects with each other (group:
    identical objects are said once, as a group), while each cell's token keeps what its own object is (object)."""

    def __init__(self, names, d_visual, taps, grid):
        super().__init__()
        self.taps, self.grid = list(taps), grid
        self.heads = nn.ModuleDict({name: nn.ModuleList([nn.Linear(d_visual, CELL_HEADS[name][1]) for _ in self.taps])
                                    for name in names})

    def losses(self, kind, rows, memory_tokens, n_frames, n_query, device):
        """The losses of the heads that read `kind` rows ("img" or "vid"): {name: mean over the taps' heads}.
        rows: the batch's rows; memory_tokens: per tap [B,F*Q,D] (EVLM.encode's aux["memory_tokens"])."""
        out = {}
        g2 = self.grid * self.grid
        for name, heads in self.heads.items():
            kinds, _, labels = CELL_HEADS[name]
            if kind not in kinds:
                continue
            tgt = torch.from_numpy(np.stack([labels(row, n_frames, self.grid) for row in rows]))
            tgt = tgt.to(device).flatten()  # [B*F*g*g], the same for every tap's head
            loss = 0.0
            for head, tap in zip(heads, self.taps):
                cells = memory_tokens[tap].view(len(rows), n_frames, n_query, -1)[:, :, :g2]  # [B,F,g*g,D]
                loss = loss + F.cross_entropy(head(cells).flatten(0, 2), tgt, ignore_index=-100) / len(heads)
            out[name] = loss
        return out
