"""Jigsaw puzzles (Noroozi & Favaro 2016), the context-free network as the PyTorch ports write
it (bbrattoli/JigsawPuzzlePytorch `Network.py`): the nine tiles of every puzzle through the
shared trunk as one batch, each tile's last map pooled to `pool5 × pool5` (`pool5_op`: max or
mean) and flattened, a shared `fc6` (ReLU, dropout), the nine `fc6` outputs concatenated in
slot order, `fc7` (ReLU, dropout), `fc8` to the P permutations, cross-entropy in fp32.

Mirrors selfsup's `crates/jigsaw/src/method.rs` (`Jigsaw::step`, `logits_t`),
`crates/jigsaw/src/puzzle.rs` (`make_puzzles`), `crates/jigsaw/src/permutations.rs` (the
greedy maximal-Hamming set) and `crates/data/src/patches.rs` (`normalize_each`). The batch is
what selfsup's loader threads deliver: `(B, C, crop, crop)` crops in [0, 1] (random grayscale,
resize and centre crop are loader work, drawn once here). Cutting the puzzles is in-step work
in selfsup and stays in the step here, vectorised over the batch: one tile per 3×3 cell at a
jittered position, resized to `tile_resize`, shifted by a per-tile, per-channel colour jitter,
normalised on its own, put in the slots of a random permutation of the set (slot t holds tile
perm[t]); the label is the permutation's index. The permutation set is built once at start-up.

Differences from selfsup's step: none in the math. Random draws come from torch's generator
(selfsup draws them from a ChaCha stream on the host), and selfsup cuts and normalises the
tiles image by image, this step all at once.
"""
import itertools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import common

TILES = 9


def permutation_set(count, seed=0, selection="max_mean"):
    """Algorithm 1 of the paper (as `select_permutations.py`): from a random one of the 9!
    permutations, greedily add the remaining one with the largest mean (or, `max_min`, the
    largest smallest) Hamming distance to those chosen; `(count, 9)` int64."""
    rest = np.array(list(itertools.permutations(range(TILES))), dtype=np.uint8)
    max_min = selection == "max_min"
    score = np.full(len(rest), np.iinfo(np.int32).max if max_min else 0, dtype=np.int32)
    taken = np.zeros(len(rest), dtype=bool)
    j = np.random.default_rng(seed).integers(len(rest))
    chosen = []
    for _ in range(count):
        taken[j] = True
        chosen.append(rest[j])
        d = (rest != rest[j]).sum(1, dtype=np.int32)
        score = np.minimum(score, d) if max_min else score + d
        j = int(np.argmax(np.where(taken, -1, score)))
    return torch.from_numpy(np.stack(chosen).astype(np.int64))


class Jigsaw(nn.Module):
    def __init__(self, cfg, fmt):
        super().__init__()
        mc = cfg.get("method_config") or {}
        self.permutations = mc.get("permutations", 1000)
        self.tile = mc.get("tile", 64)
        self.tile_resize = mc.get("tile_resize", 75)
        self.random_position = mc.get("random_position", True)
        self.rgb_jitter = mc.get("rgb_jitter", 2)
        self.normalize_tiles = mc.get("normalize_tiles", True)
        self.pool5 = mc.get("pool5", 3)
        self.pool5_op = mc.get("pool5_op", "max")
        fc6, fc7 = mc.get("fc6", 1024), mc.get("fc7", 4096)
        dropout = mc.get("dropout", 0.5)
        self.fmt = fmt
        self.perms = permutation_set(self.permutations, mc.get("permutation_seed", 0),
                                     mc.get("permutation_selection", "max_mean"))
        self.encoder, c = common.encoder(cfg["encoder"])
        self.fc6 = nn.Sequential(nn.Linear(c * self.pool5 ** 2, fc6), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Linear(TILES * fc6, fc7), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc8 = nn.Linear(fc7, self.permutations)

    def puzzles(self, x):
        """Tiles `(B·9, C, T, T)` in slot order and labels `(B,)` from crops `(B, C, S, S)`."""
        b, c, s, _ = x.shape
        cell = s // 3
        gap = cell - self.tile
        jitter = gap // 2 if self.random_position else 0
        extent = 3 * self.tile + 2 * gap + 2 * jitter
        top = (3 * cell - extent) // 2 + jitter
        labels = torch.randint(self.permutations, (b,))
        slots = self.perms[labels]  # (B, 9): the cell each slot holds
        ys = top + slots.div(3, rounding_mode="floor") * cell
        xs = top + slots.remainder(3) * cell
        if jitter:
            ys = ys + torch.randint(-jitter, jitter + 1, (b, TILES))
            xs = xs + torch.randint(-jitter, jitter + 1, (b, TILES))
        tiles = common.cut(x, ys, xs, self.tile).flatten(0, 1)
        side = self.tile_resize or self.tile
        if side != self.tile:
            tiles = F.interpolate(tiles, size=(side, side), mode="bilinear", align_corners=False)
        if self.rgb_jitter:
            j = self.rgb_jitter
            shift = torch.randint(-j, j, (b * TILES, c, 1, 1)).float() / 255
            tiles = (tiles + shift).clamp_(0, 1)
        if self.normalize_tiles:
            std, mean = torch.std_mean(tiles, (2, 3), keepdim=True)
            tiles = (tiles - mean) / torch.where(std != 0, std, 1.0)
        return tiles.contiguous(memory_format=self.fmt), labels

    def loss(self, x):
        tiles, labels = self.puzzles(x)
        h = self.encoder(tiles)
        if self.pool5_op == "mean":
            h = F.adaptive_avg_pool2d(h, self.pool5)
        else:
            h = F.adaptive_max_pool2d(h, self.pool5)
        h = self.fc6(h.flatten(1))
        h = self.fc7(h.reshape(-1, TILES * h.shape[1]))
        return F.cross_entropy(self.fc8(h).float(), labels)


def build(cfg, ctx):
    mc = cfg.get("method_config") or {}
    n = cfg["train"]["batch_size"]
    crop = mc.get("crop", 255)
    return common.Step(cfg, ctx, Jigsaw(cfg, ctx.fmt), (common.images(ctx, n, 3, crop),))
