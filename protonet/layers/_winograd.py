"""Winograd's F(2x2, 3x3) and F(2x2, 5x5) for stride-1 convolutions: small GEMMs on transformed tiles.

Each 2x2 output tile is ``A^T [U . V] A`` with ``U = G g G^T`` (an r x r kernel as a x a,
a = r + 1) and ``V = B^T d B`` (the tile's a x a input patch): summed over input channels,
the a*a entries of ``U . V`` are a*a GEMMs ``M[e] = U[e] @ V[e]`` of (out channels, in
channels) by (in channels, tiles). Per 4 outputs that is 16 multiply-adds where im2col's
GEMM spends 36 (3x3), or 36 where it spends 100 (5x5). The transforms are compiled
(ckernels.winograd_*); the tiles go through in blocks of whole tile rows, small enough that
the transformed input and the products stay in the cache between the transform, the GEMMs
and the inverse transform (an un-blocked version streamed four times the input and output
through memory and lost to im2col on this kind of machine).

All three passes of a training step use it:
  forward          y = A^T [U . V(x)] A (+ bias)
  backward-data    dx = the same with the kernel transposed and turned half a circle, pad r-1-p
  weight gradient  dU[e] = sum over tiles of (A dy A^T)[e] @ V(x)[e]^T, dg = G^T dU G
Its sums run in another order than im2col's GEMM (the transforms add and subtract inputs
before multiplying), so results differ from Caffe's in the last bits: about 1e-6 relative
in float32 for 3x3 and a few times that for 5x5 (its transforms scale by up to 5), inside
the tolerance of every real-Caffe fixture.
"""
import os
from fractions import Fraction

import numpy as np

from .. import blas as _blas, ckernels
from ._scratch import scratch


def _polymul(p, q):
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


class Matrices:
    """B^T, G and A^T of F(2, r) by Toom-Cook at ``points`` and infinity (exact, then float64).

    Correlation is the transpose of polynomial multiplication: evaluating the kernel at the
    points (G, with the Lagrange denominators), the input through the transposed
    interpolation (B^T: the coefficients of prod_{j != i} (x - p_j), and of prod (x - p_j)
    for infinity) and the output through the transposed evaluation (A^T).
    """

    def __init__(self, r, points):
        self.r, self.a = r, r + 1
        pts = [Fraction(p) for p in points]
        assert len(pts) == self.a - 1
        g, bt = [], []
        for i, p in enumerate(pts):
            norm, poly = Fraction(1), [Fraction(1)]
            for j, q in enumerate(pts):
                if j != i:
                    norm *= p - q
                    poly = _polymul(poly, [-q, Fraction(1)])
            g.append([p ** k / norm for k in range(r)])
            bt.append(poly + [Fraction(0)] * (self.a - len(poly)))
        g.append([Fraction(0)] * (r - 1) + [Fraction(1)])
        poly = [Fraction(1)]
        for q in pts:
            poly = _polymul(poly, [-q, Fraction(1)])
        bt.append(poly)
        at = [[p ** k for p in pts] + [Fraction(int(k == 1))] for k in range(2)]
        self.bt = np.array(bt, np.float64)
        self.g = np.array(g, np.float64)
        self.at = np.array(at, np.float64)


# interpolation points: 0, +-1 (and +-2 for 5x5), whose transforms are small integers
MATRICES = {3: Matrices(3, (0, 1, -1)), 5: Matrices(5, (0, 1, -1, 2, -2))}


class Winograd:
    # per block of tile rows: about this much transformed input and product (per pass);
    # big enough for wide GEMMs (AlexNet's conv2 at 4 MB: 1.3x slower than at 16)
    BLOCK_BYTES = 16 << 20
    # 5x5's weight gradient (36 GEMMs summed over the blocks, often over few channels) needs
    # wider blocks: AlexNet's conv2 at 32 MB 72 ms, at 16 MB 79, at 8 MB 95; 3x3's runs as
    # fast at 16 MB as at 32 (GoogLeNet's conv2/3x3 41.3 / 41.0 ms) and takes BLOCK_BYTES,
    # which keeps 12 MB less scratch on GoogLeNet
    GRAD_BLOCK_BYTES = 32 << 20
    # Where it wins, measured per pass against im2col on single layers (2-core AMD host,
    # OpenBLAS), by kernel size: a pass takes it when the layer has, for one of the pairs,
    # at least that many channels per group (in and out, the fewer of the two) and that many
    # 2x2 tiles over the batch. With fewer channels its GEMMs are too shallow to run near
    # the GEMM rate; with few tiles (GoogLeNet's 7x7 maps at batch 4: 64, a third of them
    # padding) the backward passes' GEMMs are small unless the channels are many. 3x3 at
    # 64 channels and 1024 tiles or more: 0.62-0.72x im2col's time in each pass; FCN-AlexNet's
    # conv3-5 (256-384 channels, 196 tiles): 0.66-0.80x; 5x5 (AlexNet's conv2, batch 8):
    # 0.81-0.88x. A pass that does not take it runs on the layer's im2col.
    RULES = {
        3: {"forward": ((64, 128), (32, 4096)), "data": ((64, 384), (256, 128), (32, 4096)),
            "weight": ((64, 384), (256, 128), (32, 4096))},
        5: {"forward": ((32, 128),), "data": ((32, 1536),), "weight": ((48, 1536),)},
    }
    # PROTONET_WINOGRAD=0 keeps every layer on im2col (tests switch it here too).
    ENABLED = os.environ.get("PROTONET_WINOGRAD", "1").strip().lower() not in ("0", "no", "off", "false")

    @classmethod
    def maybe(cls, layer):
        kernel = tuple(layer.kernel)
        if (not cls.ENABLED or layer.xp is not np or layer.reverse or layer.num_spatial != 2
                or kernel[0] != kernel[1] or kernel[0] not in MATRICES
                or any(s != 1 for s in layer.stride) or any(d != 1 for d in layer.dilation)
                or any(p > kernel[0] - 1 for p in layer.pad)
                or layer._box is not None or not ckernels.handles(layer.dtype)
                or _blas.get(layer.dtype) is None or not cls._takes(layer, "forward")):
            return None
        return cls(layer)

    @classmethod
    def _takes(cls, layer, what):
        channels = min(layer.channels, layer.num_output) // layer.group
        tiles = layer.num * -(-layer.col_spatial[0] // 2) * -(-layer.col_spatial[1] // 2)
        return any(channels >= c and tiles >= t for c, t in cls.RULES[layer.kernel[0]][what])

    def __init__(self, layer):
        self.layer, self.dtype = layer, layer.dtype
        self.m = MATRICES[layer.kernel[0]]
        self.blas = _blas.get(layer.dtype)
        self.num, self.groups = layer.num, layer.group
        self.c, self.k = layer.channels, layer.num_output
        self.h, self.w = layer.img_spatial
        self.oh, self.ow = layer.col_spatial
        self.pad = tuple(layer.pad)
        # whether backward takes the weight gradient and the bottom diff here (else the
        # layer's im2col does)
        self.weight_grad = self._takes(layer, "weight")
        self.data_grad = self._takes(layer, "data")

    @staticmethod
    def _tiles(out_h, out_w):
        return -(-out_h // 2), -(-out_w // 2)

    def _blocks(self, tiles, channels, budget):
        """[r0, r1) ranges of the batch's tile rows, each about ``budget`` bytes of transforms."""
        th, tw = tiles
        rows = self.num * th
        per_row = self.m.a ** 2 * channels * tw * self.dtype.itemsize
        step = max(1, min(rows, budget // per_row))
        return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]

    def _convolve(self, x, y, u, cin, cout, pad, bias, relu=False):
        """y = x (*) the kernel whose transform is ``u``: per group ``u[g]`` (a*a, cout/G, cin/G)."""
        G, m, aa = self.groups, self.m, self.m.a ** 2
        ci, co = cin // G, cout // G
        tiles = self._tiles(*y.shape[2:])
        for r0, r1 in self._blocks(tiles, cin + cout, self.BLOCK_BYTES):
            tb = (r1 - r0) * tiles[1]
            v = scratch("wino.v", np, self.dtype, (aa, cin, tb))
            ckernels.winograd_input(m, x, v, pad, tiles, (r0, r1))
            prod = scratch("wino.m", np, self.dtype, (aa, cout, tb))
            for g in range(G):
                np.matmul(u[g], v[:, g * ci:(g + 1) * ci], out=prod[:, g * co:(g + 1) * co])
            ckernels.winograd_output(m, prod, y, bias, tiles, (r0, r1), relu)

    def forward(self, x, top, relu=False):
        layer, G = self.layer, self.groups
        kg = self.k // G
        u = scratch("wino.u", np, self.dtype, (self.m.a ** 2, self.k, self.c // G))
        ckernels.winograd_weights(self.m, layer.blobs[0].data, u)
        x = x.reshape(self.num, self.c, self.h, self.w)
        y = top.reshape(self.num, self.k, self.oh, self.ow)
        bias = layer.blobs[1].data if layer.bias_term else None
        self._convolve(x, y, [u[:, g * kg:(g + 1) * kg] for g in range(G)], self.c, self.k, self.pad, bias,
                       relu)

    def backward(self, top_diff, x, weight_blob, need_weight, bottom_diff):
        """The weight gradient (when ``need_weight``) and bottom_diff (when not None)."""
        G, m, aa = self.groups, self.m, self.m.a ** 2
        cg, kg = self.c // G, self.k // G
        dy = top_diff.reshape(self.num, self.k, self.oh, self.ow)
        x = x.reshape(self.num, self.c, self.h, self.w)
        if need_weight:
            tiles = self._tiles(self.oh, self.ow)
            du = scratch("wino.du", np, self.dtype, (aa, self.k, cg))
            budget = self.GRAD_BLOCK_BYTES if self.m.r == 5 else self.BLOCK_BYTES
            for r0, r1 in self._blocks(tiles, self.c + self.k, budget):
                tb = (r1 - r0) * tiles[1]
                v = scratch("wino.v", np, self.dtype, (aa, self.c, tb))
                ckernels.winograd_input(m, x, v, self.pad, tiles, (r0, r1))
                mg = scratch("wino.m", np, self.dtype, (aa, self.k, tb))
                ckernels.winograd_grad(m, dy, mg, tiles, (r0, r1))
                beta = 0.0 if r0 == 0 else 1.0
                for g in range(G):
                    for e in range(aa):
                        self.blas.gemm(mg[e, g * kg:(g + 1) * kg], v[e, g * cg:(g + 1) * cg].T,
                                       du[e, g * kg:(g + 1) * kg], beta=beta)
            diff, overwrite = weight_blob.grad_target()
            ckernels.winograd_weights_grad(m, du, diff, accumulate=not overwrite)
        if bottom_diff is None:
            return
        # backward-data: a convolution of dy, pad r - 1 - p, by the transposed kernel turned around
        uf = scratch("wino.u", np, self.dtype, (aa, cg, self.k))
        ckernels.winograd_weights(m, weight_blob.data, uf, flip=True)
        dx = bottom_diff.reshape(self.num, self.c, self.h, self.w)
        pad = tuple(m.r - 1 - p for p in self.pad)
        self._convolve(dy, dx, [uf[:, :, g * kg:(g + 1) * kg] for g in range(G)], self.k, self.c, pad, None)
