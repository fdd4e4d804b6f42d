"""The convolutional and attention architectures, and `build_model`, the registry of all four
(design.md §2). The scale rule and the ensemble base are in engine/ensemble.py, the MLP and its packed
fast path in engine/mlp.py.

Architectures:
  mlp     see engine/mlp.py.
  cnn     the reference CNN: conv3×3 C→N, φ, avgpool2, conv3×3 N→2N, φ, avgpool2, dense→8N, φ, readout.
  resnet  μP ResNet-18-style: a 3×3 stem to N channels, then `depth` pre-activation basic blocks in
          up to 4 stages of widths N, 2N, 4N, 8N (two blocks a stage; depth=8 is ResNet-18's layout),
          stride 2 and a 1×1 projection when a stage starts, global average pool, readout.
          It is norm-free: BatchNorm's batch statistics and running buffers do not batch cleanly
          under vmap and mix samples within a batch, so the default (and only) variant drops
          normalization; each residual branch is scaled by 1/sqrt(depth) so that activations stay O(1)
          at any depth without it.
  vit     small patch ViT: patches of `patch`² pixels embedded to N, learned positions, `depth`
          pre-LN blocks (parameter-free LayerNorm) with μP attention — scores q·k / d_head, not
          / sqrt(d_head) — and an MLP N→2N→N, branches scaled by 1/sqrt(depth), mean-pool, readout.
These three are written for one member and batched by EnsembleModel (torch.func.vmap).

Compacted ensembles (`select_members`) compute bit for bit what the full ones did, at widths that fill
whole SIMD blocks (multiples of 16; a width-3 CNN's channels round by their place in oneDNN's blocks)
and, for the ViT, with at least two members (`min_members`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ConfigError, ModelConfig
from engine.ensemble import EnsembleModel, Params, activation, conv, dense, readout
from engine.mlp import MLP

# ----------------------------------------------------------------------------- CNN


class CNN(EnsembleModel):
    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        super().__init__(model, input_shape, n_outputs)
        if len(self.input_shape) != 3:
            raise ConfigError("model.arch", f"cnn needs image inputs (C, H, W) (got shape {self.input_shape})")
        c, hgt, wid = self.input_shape
        if hgt < 4 or wid < 4:
            raise ConfigError("data.image_size", f"cnn pools twice by 2: images must be at least 4×4 (got {hgt}×{wid})")
        n = model.width
        flat = 2 * n * (hgt // 4) * (wid // 4)
        self.specs = {
            "conv1": ((n, c, 3, 3), "w"), "conv1_b": ((n,), "b"),
            "conv2": ((2 * n, n, 3, 3), "w"), "conv2_b": ((2 * n,), "b"),
            "dense": ((8 * n, flat), "w"), "dense_b": ((8 * n,), "b"),
            "readout": ((self.n_outputs, 8 * n), "w"), "readout_b": ((self.n_outputs,), "b"),
        }  # fmt: skip

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        h1 = conv(x, p["conv1"], p["conv1_b"])  # (B, N, H, W)
        a = F.avg_pool2d(activation(self.act, h1), 2)
        h2 = conv(a, p["conv2"], p["conv2_b"])  # (B, 2N, H/2, W/2)
        a = F.avg_pool2d(activation(self.act, h2), 2).flatten(1)  # (B, 2N·H/4·W/4)
        h3 = dense(a, p["dense"], p["dense_b"])  # (B, 8N)
        feats = activation(self.act, h3)
        g = readout(feats, p["readout"], p["readout_b"])  # (B, C)
        return g, feats, [h1, h2, h3]


# ----------------------------------------------------------------------------- ResNet


class ResNet(EnsembleModel):
    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        super().__init__(model, input_shape, n_outputs)
        if len(self.input_shape) != 3:
            raise ConfigError("model.arch", f"resnet needs image inputs (C, H, W) (got shape {self.input_shape})")
        c = self.input_shape[0]
        n = model.width
        self.specs["stem"] = ((n, c, 3, 3), "w")
        self.specs["stem_b"] = ((n,), "b")
        self.blocks: list[tuple[str, int, bool]] = []  # (prefix, stride, has projection)
        c_in = n
        for i in range(model.depth):
            stage = min(i // 2, 3)
            c_out = n * 2**stage
            first = i % 2 == 0 and stage > 0 and i // 2 <= 3
            stride = 2 if first else 1
            pre = f"block{i + 1}"
            self.specs[f"{pre}.conv1"] = ((c_out, c_in, 3, 3), "w")
            self.specs[f"{pre}.conv1_b"] = ((c_out,), "b")
            self.specs[f"{pre}.conv2"] = ((c_out, c_out, 3, 3), "w")
            self.specs[f"{pre}.conv2_b"] = ((c_out,), "b")
            proj = stride != 1 or c_in != c_out
            if proj:
                self.specs[f"{pre}.proj"] = ((c_out, c_in, 1, 1), "w")
                self.specs[f"{pre}.proj_b"] = ((c_out,), "b")
            self.blocks.append((pre, stride, proj))
            c_in = c_out
        self.specs["readout"] = ((self.n_outputs, c_in), "w")
        self.specs["readout_b"] = ((self.n_outputs,), "b")

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        branch_scale = 1.0 / math.sqrt(self.config.depth)
        h = conv(x, p["stem"], p["stem_b"])  # (B, N, H, W)
        hs = [h]
        for pre, stride, proj in self.blocks:
            u = conv(activation(self.act, h), p[f"{pre}.conv1"], p[f"{pre}.conv1_b"], stride)
            u = conv(activation(self.act, u), p[f"{pre}.conv2"], p[f"{pre}.conv2_b"])
            skip = conv(h, p[f"{pre}.proj"], p[f"{pre}.proj_b"], stride) if proj else h
            h = skip + branch_scale * u  # (B, C_stage, H_s, W_s)
            hs.append(h)
        feats = activation(self.act, h).mean(dim=(-2, -1))  # (B, 8N) global average pool
        g = readout(feats, p["readout"], p["readout_b"])  # (B, C)
        return g, feats, hs


# ----------------------------------------------------------------------------- ViT


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:])  # parameter-free: nothing to batch, nothing to scale


class ViT(EnsembleModel):
    def __init__(self, model: ModelConfig, input_shape: Sequence[int], n_outputs: int):
        super().__init__(model, input_shape, n_outputs)
        # vmap of the token matmuls over a single member takes another kernel path, which rounds
        # differently: a compacted ViT ensemble keeps a frozen dead member beside a lone survivor
        self.min_members = 2
        if len(self.input_shape) != 3:
            raise ConfigError("model.arch", f"vit needs image inputs (C, H, W) (got shape {self.input_shape})")
        c, hgt, wid = self.input_shape
        ps = model.patch
        if hgt % ps or wid % ps:
            raise ConfigError("model.patch", f"must divide the image size {hgt}×{wid} (got {ps})")
        n = model.width
        self.tokens = (hgt // ps) * (wid // ps)
        self.specs["embed"] = ((n, c * ps * ps), "w")
        self.specs["embed_b"] = ((n,), "b")
        self.specs["pos"] = ((self.tokens, n), "e")
        for i in range(model.depth):
            pre = f"block{i + 1}"
            self.specs[f"{pre}.qkv"] = ((3 * n, n), "w")
            self.specs[f"{pre}.qkv_b"] = ((3 * n,), "b")
            self.specs[f"{pre}.proj"] = ((n, n), "w")
            self.specs[f"{pre}.proj_b"] = ((n,), "b")
            self.specs[f"{pre}.fc1"] = ((2 * n, n), "w")
            self.specs[f"{pre}.fc1_b"] = ((2 * n,), "b")
            self.specs[f"{pre}.fc2"] = ((n, 2 * n), "w")
            self.specs[f"{pre}.fc2_b"] = ((n,), "b")
        self.specs["readout"] = ((self.n_outputs, n), "w")
        self.specs["readout_b"] = ((self.n_outputs,), "b")

    def forward_one(self, p: Params, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        cfg = self.config
        n, heads, ps = cfg.width, cfg.heads, cfg.patch
        d = n // heads
        bsz = x.shape[0]
        patches = F.unfold(x, kernel_size=ps, stride=ps).transpose(1, 2)  # (B, T, C·p²)
        h = dense(patches, p["embed"], p["embed_b"]) + p["pos"]  # (B, T, N)
        hs = [h]
        branch_scale = 1.0 / math.sqrt(cfg.depth)
        for i in range(cfg.depth):
            pre = f"block{i + 1}"
            qkv = dense(_layer_norm(h), p[f"{pre}.qkv"], p[f"{pre}.qkv_b"])  # (B, T, 3N)
            q, k, v = qkv.view(bsz, -1, 3, heads, d).permute(2, 0, 3, 1, 4)  # each (B, H, T, d)
            scores = q @ k.transpose(-1, -2) / d  # μP: 1/d_head keeps updates O(1) as d grows
            att = torch.softmax(scores, dim=-1) @ v  # (B, H, T, d)
            att = att.transpose(1, 2).reshape(bsz, -1, n)
            # not branch_scale * dense(...): (s·y)/√N rounds differently from s·(y/√N), and stored
            # runs were computed this way
            h = h + branch_scale * (att @ p[f"{pre}.proj"].T + p[f"{pre}.proj_b"]) / math.sqrt(n)
            u = dense(_layer_norm(h), p[f"{pre}.fc1"], p[f"{pre}.fc1_b"])  # (B, T, 2N)
            u = dense(activation(self.act, u), p[f"{pre}.fc2"], p[f"{pre}.fc2_b"])  # (B, T, N)
            h = h + branch_scale * u
            hs.append(h)
        feats = _layer_norm(h).mean(dim=1)  # (B, N)
        g = readout(feats, p["readout"], p["readout_b"])  # (B, C)
        return g, feats, hs


_ARCHS: dict[str, type[EnsembleModel]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet, "vit": ViT}


def build_model(model: ModelConfig, input_shape: Sequence[int], n_outputs: int) -> EnsembleModel:
    """The functional μP-γ network for this config (design.md §2), parameters stacked per member."""
    if model.arch not in _ARCHS:
        raise ConfigError("model.arch", f"must be one of {', '.join(_ARCHS)} (got {model.arch!r})")
    return _ARCHS[model.arch](model, input_shape, n_outputs)
