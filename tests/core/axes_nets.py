"""Small hand-built transformer and channels-last nets for the axes tests (no downloads).

``TinyViT`` is a ViT in miniature: a patch embedding (a 4×4 convolution, stride 4, on a
16×16 image: a 4×4 grid), ``flatten(2).transpose(1, 2)``, a class token concatenated in
front (17 tokens), two blocks of attention and MLP, and a head on the class token. Its
attention stacks q, k and v as ``(3, B, heads, N, d)``: a node whose batch is not first.

``TinyConvNeXt`` has a channels-last block (``permute(0, 2, 3, 1)``, ``LayerNorm``,
``Linear``, ``permute(0, 3, 1, 2)``) and scales by ``gamma.reshape(1, -1, 1, 1)``: a node
that does not depend on the input.

``OddPermute`` permutes a convolution's output by ``(0, 3, 2, 1)``: ambiguous axes.

``TokenNet`` is tokens without attention (each token sees its own patch only): feature 0 of
``embed`` is the sum of the red channel over the token's patch, so what excites it, and
where, is known by construction.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE = 16
PATCH = 4
GRID = IMAGE // PATCH


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 6, hidden: int = 10, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 1 + GRID * GRID, dim))
        self.blocks = nn.Sequential(Block(dim, hidden), Block(dim, hidden))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class TinyConvNeXt(nn.Module):
    def __init__(self, dim: int = 5, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, dim, PATCH, stride=PATCH)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        y = y.permute(0, 3, 1, 2)
        x = x + y.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.head(x.mean(dim=(2, 3)))


class OddPermute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 4, PATCH, stride=PATCH)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 3, 2, 1)  # (B, W, H, C): neither CHW nor HWC
        return self.head(y.mean(dim=(1, 2)))


class TokenNet(nn.Module):
    """Patch tokens and a class token; ``embed`` feature 0 sums the red of each patch."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, PATCH, stride=PATCH, bias=False)
        self.cls_token = nn.Parameter(torch.full((1, 1, dim), 1000.0))
        self.embed = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, 2)
        with torch.no_grad():
            self.patch.weight.zero_()
            self.patch.weight[0, 0] = 1.0  # feature 0: sum of red over the patch
            self.patch.weight[1, 1] = 1.0  # feature 1: sum of green
            self.patch.weight[2, 2] = 1.0  # feature 2: sum of blue
            self.embed.weight.copy_(torch.eye(dim))
            self.head.weight.zero_()
            self.head.weight[0, 0] = 1.0  # class 0 scores the red over the grid
            self.head.weight[1, 1] = 1.0
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.embed(x)
        return self.head(x[:, 1:].mean(dim=1))


def tiny_vit() -> nn.Module:
    return TinyViT()


def tiny_convnext() -> nn.Module:
    return TinyConvNeXt()


def odd_permute() -> nn.Module:
    return OddPermute()


def token_net() -> nn.Module:
    return TokenNet()
