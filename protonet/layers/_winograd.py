"""Winograd's F(2x2, 3x3) for stride-1 3x3 convolutions: 16 GEMMs instead of one 2.25x bigger.

Each 2x2 output tile is ``A^T [U . V] A`` with ``U = G g G^T`` (a 3x3 kernel as 4x4) and
``V = B^T d B`` (the tile's 4x4 input patch): summed over input channels, the 16 entries of
``U . V`` are 16 GEMMs ``M[e] = U[e] @ V[e]`` of (out channels, in channels) by (in channels,
tiles), 16 multiply-adds per 4 outputs where im2col's GEMM spends 36. The transforms are
compiled (ckernels.winograd_*); the tiles go through in blocks of whole tile rows, small
enough that the transformed input and the products stay in the cache between the transform,
the GEMMs and the inverse transform (an un-blocked version streamed four times the input
and output through memory and lost to im2col on this kind of machine).

All three passes of a training step use it:
  forward          y = A^T [U . V(x)] A (+ bias)
  backward-data    dx = the same with the kernel transposed and turned half a circle, pad 2 - p
  weight gradient  dU[e] = sum over tiles of (A dy A^T)[e] @ V(x)[e]^T, dg = G^T dU G
Its sums run in another order than im2col's GEMM (the transforms add and subtract inputs
before multiplying), so its results differ from Caffe's in the last bits: about 1e-6
relative in float32, inside the tolerance of every real-Caffe fixture.
"""
import os

import numpy as np

from .. import blas as _blas, ckernels
from ._scratch import scratch


class Winograd:
    # per block of tile rows: about this much transformed input and product (per pass)
    BLOCK_BYTES = 4 << 20
    # the weight gradient adds each block's 16 products into dU: bigger blocks, fewer adds
    GRAD_BLOCK_BYTES = 16 << 20
    # Where it wins, measured per pass against im2col on single layers (2-core AMD host,
    # OpenBLAS): channels per group, in and out, at least MIN_CHANNELS (at 32 or 64 its
    # 16 GEMMs are too shallow to run near the GEMM rate, and the transforms cost what they
    # save), and at least MIN_TILES 2x2 tiles over the batch (GoogLeNet's 7x7 maps at batch
    # 4 have 64, a third of them padding). The weight gradient, whose 16 GEMMs only sum
    # over tiles into a (K, C) matrix, needs GRAD_MIN_CHANNELS; below that the layer takes
    # its weight gradient from im2col (forward 0.64-0.72x, weight gradient 1.0-1.26x at 96).
    MIN_CHANNELS = 96
    MIN_TILES = 128
    GRAD_MIN_CHANNELS = 128
    # PROTONET_WINOGRAD=0 keeps every layer on im2col (tests switch it here too).
    ENABLED = os.environ.get("PROTONET_WINOGRAD", "1").strip().lower() not in ("0", "no", "off", "false")

    @classmethod
    def maybe(cls, layer):
        if (not cls.ENABLED or layer.xp is not np or layer.reverse or layer.num_spatial != 2
                or tuple(layer.kernel) != (3, 3) or any(s != 1 for s in layer.stride)
                or any(d != 1 for d in layer.dilation) or any(p > 2 for p in layer.pad)
                or layer._box is not None or not ckernels.handles(layer.dtype)
                or _blas.get(layer.dtype) is None
                or min(layer.channels, layer.num_output) // layer.group < cls.MIN_CHANNELS
                or layer.num * -(-layer.col_spatial[0] // 2) * -(-layer.col_spatial[1] // 2) < cls.MIN_TILES):
            return None
        return cls(layer)

    def __init__(self, layer):
        self.layer, self.dtype = layer, layer.dtype
        self.blas = _blas.get(layer.dtype)
        self.num, self.groups = layer.num, layer.group
        self.c, self.k = layer.channels, layer.num_output
        self.h, self.w = layer.img_spatial
        self.oh, self.ow = layer.col_spatial
        self.pad = tuple(layer.pad)
        # whether backward takes the weight gradient here (else the layer's im2col does)
        self.weight_grad = min(self.c, self.k) // self.groups >= self.GRAD_MIN_CHANNELS

    @staticmethod
    def _tiles(out_h, out_w):
        return -(-out_h // 2), -(-out_w // 2)

    def _blocks(self, tiles, channels, budget):
        """[r0, r1) ranges of the batch's tile rows, each about ``budget`` bytes of transforms."""
        th, tw = tiles
        rows = self.num * th
        per_row = 16 * channels * tw * self.dtype.itemsize
        step = max(1, min(rows, budget // per_row))
        return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]

    def _convolve(self, x, y, u, cin, cout, pad, bias):
        """y = x (*) the kernel whose transform is ``u``: per group ``u[g]`` (16, cout/G, cin/G)."""
        G = self.groups
        ci, co = cin // G, cout // G
        tiles = self._tiles(*y.shape[2:])
        for r0, r1 in self._blocks(tiles, cin + cout, self.BLOCK_BYTES):
            tb = (r1 - r0) * tiles[1]
            v = scratch("wino.v", np, self.dtype, (16, cin, tb))
            ckernels.winograd_input(x, v, pad, tiles, (r0, r1))
            m = scratch("wino.m", np, self.dtype, (16, cout, tb))
            for g in range(G):
                np.matmul(u[g], v[:, g * ci:(g + 1) * ci], out=m[:, g * co:(g + 1) * co])
            ckernels.winograd_output(m, y, bias, tiles, (r0, r1))

    def forward(self, x, top):
        layer, G = self.layer, self.groups
        kg = self.k // G
        u = scratch("wino.u", np, self.dtype, (16, self.k, self.c // G))
        ckernels.winograd_weights(layer.blobs[0].data, u)
        x = x.reshape(self.num, self.c, self.h, self.w)
        y = top.reshape(self.num, self.k, self.oh, self.ow)
        bias = layer.blobs[1].data if layer.bias_term else None
        self._convolve(x, y, [u[:, g * kg:(g + 1) * kg] for g in range(G)], self.c, self.k, self.pad, bias)

    def backward(self, top_diff, x, weight_blob, need_weight, bottom_diff):
        """The weight gradient (when ``need_weight``) and bottom_diff (when not None)."""
        G = self.groups
        cg, kg = self.c // G, self.k // G
        dy = top_diff.reshape(self.num, self.k, self.oh, self.ow)
        x = x.reshape(self.num, self.c, self.h, self.w)
        if need_weight:
            tiles = self._tiles(self.oh, self.ow)
            du = scratch("wino.du", np, self.dtype, (16, self.k, cg))
            for r0, r1 in self._blocks(tiles, self.c + self.k, self.GRAD_BLOCK_BYTES):
                tb = (r1 - r0) * tiles[1]
                v = scratch("wino.v", np, self.dtype, (16, self.c, tb))
                ckernels.winograd_input(x, v, self.pad, tiles, (r0, r1))
                mg = scratch("wino.m", np, self.dtype, (16, self.k, tb))
                ckernels.winograd_grad(dy, mg, tiles, (r0, r1))
                beta = 0.0 if r0 == 0 else 1.0
                for g in range(G):
                    for e in range(16):
                        self.blas.gemm(mg[e, g * kg:(g + 1) * kg], v[e, g * cg:(g + 1) * cg].T,
                                       du[e, g * kg:(g + 1) * kg], beta=beta)
            diff, overwrite = weight_blob.grad_target()
            ckernels.winograd_weights_grad(du, diff, accumulate=not overwrite)
        if bottom_diff is None:
            return
        # backward-data: a convolution of dy, pad 2 - p, by the transposed kernel turned around
        uf = scratch("wino.u", np, self.dtype, (16, cg, self.k))
        ckernels.winograd_weights(weight_blob.data, uf, flip=True)
        dx = bottom_diff.reshape(self.num, self.c, self.h, self.w)
        pad = tuple(2 - p for p in self.pad)
        self._convolve(dy, dx, [uf[:, :, g * kg:(g + 1) * kg] for g in range(G)], self.k, self.c, pad, None)
