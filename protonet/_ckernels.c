/* CPU kernels for the passes around the GEMMs: im2col, col2im, MAX and AVE pooling, LRN,
   Winograd's transforms, and a convolution's bias with the in-place ReLU after it.

   A plain C library (no Python API), loaded with ctypes by protonet/ckernels.py; ctypes drops
   the GIL around each call, so Python threads may run disjoint image ranges [n0, n1) at once.
   Every sum keeps Caffe's order (no -ffast-math: float additions are not reassociated), so the
   results are the NumPy path's, bit for bit where that path sums in Caffe's order too.

   Layouts: images (N, C, H, W); the column buffer (C, KH, KW, N, OH, OW), i.e. Caffe's column
   matrix (C*KH*KW) x (N*OH*OW) with the batch folded into the columns. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

/* the outputs o in [0, out) whose input position o * stride + off lies in [0, size) */
static void in_range(i64 off, i64 stride, i64 size, i64 out, i64 *lo, i64 *hi)
{
    i64 a = 0, b;
    if (off < 0)
        a = (-off + stride - 1) / stride;
    if (size - 1 - off < 0)
        b = 0;
    else
        b = (size - 1 - off) / stride + 1;
    if (b > out)
        b = out;
    if (a > b)
        a = b;
    *lo = a;
    *hi = b;
}


/* one output row of an im2col tap: zeros where the tap reads padding, else the image row
   (short rows, so plain loops the compiler vectorizes instead of a memcpy call per row) */
#define ROW_COPY(T, SUFFIX)                                                                       \
static inline void im2col_row_##SUFFIX(T *restrict d, const T *restrict row, i64 wlo, i64 whi,    \
                                       i64 OW, i64 SW)                                            \
{                                                                                                 \
    for (i64 ow = 0; ow < wlo; ++ow)                                                              \
        d[ow] = 0;                                                                                \
    if (SW == 1)                                                                                  \
        for (i64 ow = wlo; ow < whi; ++ow)                                                        \
            d[ow] = row[ow];                                                                      \
    else if (SW == 2)                                                                             \
        for (i64 ow = wlo; ow < whi; ++ow)                                                        \
            d[ow] = row[2 * ow];                                                                  \
    else                                                                                          \
        for (i64 ow = wlo; ow < whi; ++ow)                                                        \
            d[ow] = row[ow * SW];                                                                 \
    for (i64 ow = whi; ow < OW; ++ow)                                                             \
        d[ow] = 0;                                                                                \
}                                                                                                 \
                                                                                                  \
static inline void col2im_row_##SUFFIX(T *restrict row, const T *restrict s, i64 wlo, i64 whi,    \
                                       i64 SW)                                                    \
{                                                                                                 \
    if (SW == 1)                                                                                  \
        for (i64 ow = wlo; ow < whi; ++ow)                                                        \
            row[ow] += s[ow];                                                                     \
    else if (SW == 2)                                                                             \
        for (i64 ow = wlo; ow < whi; ++ow)                                                        \
            row[2 * ow] += s[ow];                                                                 \
    else                                                                                          \
        for (i64 ow = wlo; ow < whi; ++ow)                                                        \
            row[ow * SW] += s[ow];                                                                \
}

ROW_COPY(float, f32)
ROW_COPY(double, f64)


#define IM2COL(T, SUFFIX)                                                                         \
void im2col_##SUFFIX(const T *img, T *col, i64 N, i64 C, i64 H, i64 W, i64 KH, i64 KW,           \
                     i64 PH, i64 PW, i64 SH, i64 SW, i64 DH, i64 DW, i64 OH, i64 OW,             \
                     i64 n0, i64 n1)                                                              \
{                                                                                                 \
    const i64 P = OH * OW;                                                                        \
    for (i64 c = 0; c < C; ++c)                                                                   \
        for (i64 i = 0; i < KH; ++i)                                                              \
            for (i64 j = 0; j < KW; ++j) {                                                        \
                T *tap = col + ((c * KH + i) * KW + j) * N * P;                                   \
                i64 hlo, hhi, wlo, whi;                                                           \
                in_range(i * DH - PH, SH, H, OH, &hlo, &hhi);                                     \
                in_range(j * DW - PW, SW, W, OW, &wlo, &whi);                                     \
                for (i64 n = n0; n < n1; ++n) {                                                   \
                    const T *plane = img + (n * C + c) * H * W;                                   \
                    T *dst = tap + n * P;                                                         \
                    if (hlo > 0)                                                                  \
                        memset(dst, 0, (size_t)(hlo * OW) * sizeof(T));                           \
                    for (i64 oh = hlo; oh < hhi; ++oh) {                                          \
                        const T *row = plane + (oh * SH - PH + i * DH) * W + (j * DW - PW);       \
                        im2col_row_##SUFFIX(dst + oh * OW, row, wlo, whi, OW, SW);                \
                    }                                                                             \
                    if (hhi < OH)                                                                 \
                        memset(dst + hhi * OW, 0, (size_t)((OH - hhi) * OW) * sizeof(T));         \
                }                                                                                 \
            }                                                                                     \
}

/* img[n0:n1] = the sum over taps of the columns that read each pixel, taps in increasing
   order per pixel (Caffe's col2im order) */
#define COL2IM(T, SUFFIX)                                                                         \
void col2im_##SUFFIX(const T *col, T *img, i64 N, i64 C, i64 H, i64 W, i64 KH, i64 KW,           \
                     i64 PH, i64 PW, i64 SH, i64 SW, i64 DH, i64 DW, i64 OH, i64 OW,             \
                     i64 n0, i64 n1)                                                              \
{                                                                                                 \
    const i64 P = OH * OW;                                                                        \
    /* each tap's output ranges inside the image, the divisions done once */                     \
    i64 *hr = (i64 *)malloc((size_t)(2 * (KH + KW)) * sizeof(i64)), *wr = hr + 2 * KH;            \
    if (!hr)                                                                                      \
        return;                                                                                   \
    for (i64 i = 0; i < KH; ++i)                                                                  \
        in_range(i * DH - PH, SH, H, OH, hr + 2 * i, hr + 2 * i + 1);                             \
    for (i64 j = 0; j < KW; ++j)                                                                  \
        in_range(j * DW - PW, SW, W, OW, wr + 2 * j, wr + 2 * j + 1);                             \
    for (i64 n = n0; n < n1; ++n)                                                                 \
        for (i64 c = 0; c < C; ++c) {                                                             \
            T *plane = img + (n * C + c) * H * W;                                                 \
            memset(plane, 0, (size_t)(H * W) * sizeof(T));                                        \
            for (i64 i = 0; i < KH; ++i)                                                          \
                for (i64 j = 0; j < KW; ++j) {                                                    \
                    const T *src = col + (((c * KH + i) * KW + j) * N + n) * P;                   \
                    const i64 hlo = hr[2 * i], hhi = hr[2 * i + 1];                               \
                    const i64 wlo = wr[2 * j], whi = wr[2 * j + 1];                               \
                    for (i64 oh = hlo; oh < hhi; ++oh) {                                          \
                        T *row = plane + (oh * SH - PH + i * DH) * W + (j * DW - PW);             \
                        col2im_row_##SUFFIX(row, src + oh * OW, wlo, whi, SW);                    \
                    }                                                                             \
                }                                                                                 \
        }                                                                                         \
    free(hr);                                                                                     \
}


/* one tap's pass over an output row of MAX pooling: t = max(t, src[ow * SW]) keeping the
   first strictly larger value, pick = tap where it was larger; restrict and a constant
   stride let the compiler vectorize it */
#define MAX_ROW(T, SUFFIX)                                                                        \
static inline void max_row_pick_##SUFFIX(T *restrict t, int32_t *restrict pick,                  \
                                         const T *restrict src, i64 lo, i64 hi, i64 SW,          \
                                         int32_t tap)                                             \
{                                                                                                 \
    if (SW == 1) {                                                                                \
        for (i64 ow = lo; ow < hi; ++ow) {                                                        \
            T v = src[ow];                                                                        \
            int32_t gt = -(int32_t)(v > t[ow]);   /* all ones where larger: no branch */          \
            t[ow] = v > t[ow] ? v : t[ow];                                                        \
            pick[ow] = (tap & gt) | (pick[ow] & ~gt);                                             \
        }                                                                                         \
    } else if (SW == 2) {                                                                         \
        for (i64 ow = lo; ow < hi; ++ow) {                                                        \
            T v = src[2 * ow];                                                                    \
            int32_t gt = -(int32_t)(v > t[ow]);   /* all ones where larger: no branch */          \
            t[ow] = v > t[ow] ? v : t[ow];                                                        \
            pick[ow] = (tap & gt) | (pick[ow] & ~gt);                                             \
        }                                                                                         \
    } else {                                                                                      \
        for (i64 ow = lo; ow < hi; ++ow) {                                                        \
            T v = src[ow * SW];                                                                   \
            int32_t gt = -(int32_t)(v > t[ow]);   /* all ones where larger: no branch */          \
            t[ow] = v > t[ow] ? v : t[ow];                                                        \
            pick[ow] = (tap & gt) | (pick[ow] & ~gt);                                             \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static inline void max_row_##SUFFIX(T *restrict t, const T *restrict src, i64 lo, i64 hi,       \
                                    i64 SW)                                                       \
{                                                                                                 \
    if (SW == 1) {                                                                                \
        for (i64 ow = lo; ow < hi; ++ow)                                                          \
            t[ow] = src[ow] > t[ow] ? src[ow] : t[ow];                                            \
    } else if (SW == 2) {                                                                         \
        for (i64 ow = lo; ow < hi; ++ow)                                                          \
            t[ow] = src[2 * ow] > t[ow] ? src[2 * ow] : t[ow];                                    \
    } else {                                                                                      \
        for (i64 ow = lo; ow < hi; ++ow)                                                          \
            t[ow] = src[ow * SW] > t[ow] ? src[ow * SW] : t[ow];                                  \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static inline void add_row_##SUFFIX(T *restrict t, const T *restrict src, i64 lo, i64 hi, i64 SW) \
{                                                                                                 \
    if (SW == 1) {                                                                                \
        for (i64 ow = lo; ow < hi; ++ow)                                                          \
            t[ow] += src[ow];                                                                     \
    } else {                                                                                      \
        for (i64 ow = lo; ow < hi; ++ow)                                                          \
            t[ow] += src[ow * SW];                                                                \
    }                                                                                             \
}

MAX_ROW(float, f32)
MAX_ROW(double, f64)

/* MAX pooling over planes [p0, p1) of (planes, H, W): Caffe's scan from -FLT_MAX keeping the
   first strictly larger value (NaN never wins); choice (may be NULL) = tap + 1 of the winner
   counted from the unclamped window start (tap = row * KW + col), 0 when nothing won.
   Each output row is built tap by tap, taps in row-major order: per output the same scan as
   Caffe's, but the inner loop runs over the row's outputs, branch-free (it vectorizes). */
#define MAXPOOL(T, SUFFIX, I, ISUFFIX)                                                            \
void maxpool_fwd_##SUFFIX##_##ISUFFIX(const T *x, T *top, I *choice, i64 H, i64 W,               \
                                      i64 KH, i64 KW, i64 SH, i64 SW, i64 PH, i64 PW,            \
                                      i64 OH, i64 OW, i64 p0, i64 p1)                             \
{                                                                                                 \
    int32_t *pick = (int32_t *)malloc((size_t)OW * sizeof(int32_t));                              \
    i64 *range = (i64 *)malloc((size_t)(2 * KW) * sizeof(i64));                                   \
    if (!pick || !range) {                                                                        \
        free(pick);                                                                               \
        free(range);                                                                              \
        return;                                                                                   \
    }                                                                                             \
    /* the outputs each column tap reaches inside the image (divisions once, not per row) */     \
    for (i64 j = 0; j < KW; ++j)                                                                  \
        in_range(j - PW, SW, W, OW, range + 2 * j, range + 2 * j + 1);                            \
    for (i64 p = p0; p < p1; ++p) {                                                               \
        const T *plane = x + p * H * W;                                                           \
        for (i64 oh = 0; oh < OH; ++oh) {                                                         \
            i64 hs = oh * SH - PH, h0 = hs < 0 ? 0 : hs, h1 = hs + KH < H ? hs + KH : H;          \
            T *t = top + (p * OH + oh) * OW;                                                      \
            for (i64 ow = 0; ow < OW; ++ow)                                                       \
                t[ow] = (T)-FLT_MAX;                                                              \
            if (choice)                                                                           \
                memset(pick, 0, (size_t)OW * sizeof(int32_t));                                    \
            for (i64 h = h0; h < h1; ++h) {                                                       \
                const T *row = plane + h * W;                                                     \
                for (i64 j = 0; j < KW; ++j) {                                                    \
                    i64 lo = range[2 * j], hi = range[2 * j + 1];                                 \
                    const T *src = row + (j - PW);                                                \
                    if (choice)                                                                   \
                        max_row_pick_##SUFFIX(t, pick, src, lo, hi, SW,                           \
                                              (int32_t)((h - hs) * KW + j + 1));                  \
                    else                                                                          \
                        max_row_##SUFFIX(t, src, lo, hi, SW);                                     \
                }                                                                                 \
            }                                                                                     \
            if (choice) {                                                                         \
                I *ch = choice + (p * OH + oh) * OW;                                              \
                for (i64 ow = 0; ow < OW; ++ow)                                                   \
                    ch[ow] = (I)pick[ow];                                                         \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    free(pick);                                                                                   \
    free(range);                                                                                  \
}                                                                                                 \
                                                                                                  \
/* dx[p0:p1] = each top diff added to the cell its window chose, outputs in order */             \
void maxpool_bwd_##SUFFIX##_##ISUFFIX(const T *top_diff, const I *choice, T *dx, i64 H, i64 W,   \
                                      i64 KH, i64 KW, i64 SH, i64 SW, i64 PH, i64 PW, i64 OH,    \
                                      i64 OW, i64 p0, i64 p1)                                     \
{                                                                                                 \
    /* tap + 1 -> offset from the window start (no division per output) */                       \
    i64 *offset = (i64 *)malloc((size_t)(KH * KW + 1) * sizeof(i64));                             \
    if (!offset)                                                                                  \
        return;                                                                                   \
    offset[0] = 0;                                                                                \
    for (i64 k = 0; k < KH * KW; ++k)                                                             \
        offset[k + 1] = (k / KW) * W + k % KW;                                                    \
    for (i64 p = p0; p < p1; ++p) {                                                               \
        T *plane = dx + p * H * W;                                                                \
        const T *g = top_diff + p * OH * OW;                                                      \
        const I *ch = choice + p * OH * OW;                                                       \
        memset(plane, 0, (size_t)(H * W) * sizeof(T));                                            \
        for (i64 oh = 0; oh < OH; ++oh) {                                                         \
            T *base = plane + (oh * SH - PH) * W - PW;                                            \
            for (i64 ow = 0; ow < OW; ++ow) {                                                     \
                I k = ch[oh * OW + ow];                                                           \
                if (k)                                                                            \
                    base[ow * SW + offset[k]] += g[oh * OW + ow];                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    free(offset);                                                                                 \
}

/* AVE pooling: the window's sum in row-major order, divided by the window clipped to the
   padded image (padding cells count, cells past it do not), as Caffe; built row by row like
   MAX. The backward adds each output's share to its cells, outputs in order (Caffe's). */
#define AVEPOOL(T, SUFFIX)                                                                        \
void avepool_fwd_##SUFFIX(const T *x, T *top, i64 H, i64 W, i64 KH, i64 KW, i64 SH, i64 SW,      \
                          i64 PH, i64 PW, i64 OH, i64 OW, i64 p0, i64 p1)                         \
{                                                                                                 \
    i64 *range = (i64 *)malloc((size_t)(2 * KW) * sizeof(i64));                                   \
    if (!range)                                                                                   \
        return;                                                                                   \
    for (i64 j = 0; j < KW; ++j)                                                                  \
        in_range(j - PW, SW, W, OW, range + 2 * j, range + 2 * j + 1);                            \
    for (i64 p = p0; p < p1; ++p) {                                                               \
        const T *plane = x + p * H * W;                                                           \
        for (i64 oh = 0; oh < OH; ++oh) {                                                         \
            i64 hs = oh * SH - PH, he = hs + KH < H + PH ? hs + KH : H + PH;                      \
            i64 h0 = hs < 0 ? 0 : hs, h1 = he < H ? he : H;                                       \
            T *t = top + (p * OH + oh) * OW;                                                      \
            for (i64 ow = 0; ow < OW; ++ow)                                                       \
                t[ow] = 0;                                                                        \
            for (i64 h = h0; h < h1; ++h) {                                                       \
                const T *row = plane + h * W;                                                     \
                for (i64 j = 0; j < KW; ++j) {                                                    \
                    const T *src = row + (j - PW);                                                \
                    i64 lo = range[2 * j], hi = range[2 * j + 1];                                 \
                    add_row_##SUFFIX(t, src, lo, hi, SW);                                         \
                }                                                                                 \
            }                                                                                     \
            for (i64 ow = 0; ow < OW; ++ow) {                                                     \
                i64 ws = ow * SW - PW, we = ws + KW < W + PW ? ws + KW : W + PW;                  \
                t[ow] /= (T)((he - hs) * (we - ws));                                              \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    free(range);                                                                                  \
}                                                                                                 \
                                                                                                  \
void avepool_bwd_##SUFFIX(const T *top_diff, T *dx, i64 H, i64 W, i64 KH, i64 KW, i64 SH,        \
                          i64 SW, i64 PH, i64 PW, i64 OH, i64 OW, i64 p0, i64 p1)                 \
{                                                                                                 \
    for (i64 p = p0; p < p1; ++p) {                                                               \
        T *plane = dx + p * H * W;                                                                \
        const T *g = top_diff + p * OH * OW;                                                      \
        memset(plane, 0, (size_t)(H * W) * sizeof(T));                                            \
        for (i64 oh = 0; oh < OH; ++oh) {                                                         \
            i64 hs = oh * SH - PH, he = hs + KH < H + PH ? hs + KH : H + PH;                      \
            i64 h0 = hs < 0 ? 0 : hs, h1 = he < H ? he : H;                                       \
            for (i64 ow = 0; ow < OW; ++ow) {                                                     \
                i64 ws = ow * SW - PW, we = ws + KW < W + PW ? ws + KW : W + PW;                  \
                i64 w0 = ws < 0 ? 0 : ws, w1 = we < W ? we : W;                                   \
                T v = g[oh * OW + ow] / (T)((he - hs) * (we - ws));                               \
                for (i64 h = h0; h < h1; ++h)                                                     \
                    for (i64 w = w0; w < w1; ++w)                                                 \
                        plane[h * W + w] += v;                                                    \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}

IM2COL(float, f32)
IM2COL(double, f64)
COL2IM(float, f32)
COL2IM(double, f64)
MAXPOOL(float, f32, int8_t, i8)
MAXPOOL(float, f32, int16_t, i16)
MAXPOOL(float, f32, int32_t, i32)
MAXPOOL(double, f64, int8_t, i8)
MAXPOOL(double, f64, int16_t, i16)
MAXPOOL(double, f64, int32_t, i32)
AVEPOOL(float, f32)
AVEPOOL(double, f64)

/* LRN across channels on (N, C, HW): units [u0, u1) of (image, block of LRN_BLOCK positions),
   all channels of a unit at a time. The window sum adds the squares (forward) or ratios
   (backward) of channels c - half .. c + half in that order, one ring of `size` planes each
   computed once: the NumPy path's values and order (its zero padding adds nothing).
   scale = k + alpha/size * sum x^2; scale_pow = scale^-beta; top = x * scale_pow.
   dx = dy * scale_pow + coef * x * sum(dy * y / scale), coef = -2 alpha beta / size. */
#define LRN_BLOCK 256

/* scale_pow = scale^-beta and top = x * scale_pow over n values; beta 0.75 (every
   AlexNet-family LRN) as r sqrt(r), r = 1/sqrt(scale), in double and rounded once: within an
   ulp of powf, and it vectorizes */
#define SCALE_POW(T, SUFFIX, POW)                                                                 \
static void lrn_scale_pow_##SUFFIX(const T *restrict x, const T *restrict scale,                  \
                                   T *restrict scale_pow, T *restrict top, i64 n, T neg_beta)     \
{                                                                                                 \
    if (sizeof(T) == sizeof(float) && neg_beta == (T)-0.75)                                       \
        for (i64 i = 0; i < n; ++i) {                                                             \
            double r = 1.0 / sqrt((double)scale[i]);                                              \
            T p = (T)(r * sqrt(r));                                                               \
            scale_pow[i] = p;                                                                     \
            top[i] = x[i] * p;                                                                    \
        }                                                                                         \
    else                                                                                          \
        for (i64 i = 0; i < n; ++i) {                                                             \
            T p = POW(scale[i], neg_beta);                                                        \
            scale_pow[i] = p;                                                                     \
            top[i] = x[i] * p;                                                                    \
        }                                                                                         \
}

SCALE_POW(float, f32, powf)
SCALE_POW(double, f64, pow)

/* s[0:len] = the ring's planes lo .. hi added in that order (the first copied, not added to 0) */
#define RING_SUM(T, SUFFIX)                                                                       \
static inline void ring_sum_##SUFFIX(T *restrict s, const T *restrict ring, i64 lo, i64 hi,       \
                                     i64 size, i64 len)                                           \
{                                                                                                 \
    memcpy(s, ring + (lo % size) * LRN_BLOCK, (size_t)len * sizeof(T));                           \
    for (i64 cc = lo + 1; cc <= hi; ++cc) {                                                       \
        const T *r = ring + (cc % size) * LRN_BLOCK;                                              \
        for (i64 i = 0; i < len; ++i)                                                             \
            s[i] += r[i];                                                                         \
    }                                                                                             \
}

RING_SUM(float, f32)
RING_SUM(double, f64)

#define LRN(T, SUFFIX, POW)                                                                       \
void lrn_fwd_##SUFFIX(const T *x, T *scale, T *scale_pow, T *top, i64 C, i64 HW, i64 size,       \
                      T alpha_over_size, T k, T neg_beta, i64 u0, i64 u1)                         \
{                                                                                                 \
    const i64 blocks = (HW + LRN_BLOCK - 1) / LRN_BLOCK, half = (size - 1) / 2;                   \
    T *ring = (T *)malloc((size_t)(size * LRN_BLOCK) * sizeof(T));                                \
    T s[LRN_BLOCK];                                                                               \
    if (!ring)                                                                                    \
        return;                                                                                   \
    for (i64 u = u0; u < u1; ++u) {                                                               \
        const i64 n = u / blocks, b0 = (u % blocks) * LRN_BLOCK;                                  \
        const i64 len = HW - b0 < LRN_BLOCK ? HW - b0 : LRN_BLOCK;                                \
        const i64 base = n * C * HW + b0;                                                         \
        for (i64 c = 0; c < half && c < C; ++c) {                                                 \
            const T *xc = x + base + c * HW;                                                      \
            T *r = ring + (c % size) * LRN_BLOCK;                                                 \
            for (i64 i = 0; i < len; ++i)                                                         \
                r[i] = xc[i] * xc[i];                                                             \
        }                                                                                         \
        for (i64 c = 0; c < C; ++c) {                                                             \
            if (c + half < C) {                                                                   \
                const T *xc = x + base + (c + half) * HW;                                         \
                T *r = ring + ((c + half) % size) * LRN_BLOCK;                                    \
                for (i64 i = 0; i < len; ++i)                                                     \
                    r[i] = xc[i] * xc[i];                                                         \
            }                                                                                     \
            const i64 lo = c - half < 0 ? 0 : c - half, hi = c + half < C ? c + half : C - 1;     \
            ring_sum_##SUFFIX(s, ring, lo, hi, size, len);                                        \
            const i64 o = base + c * HW;                                                          \
            for (i64 i = 0; i < len; ++i) {                                                       \
                T v = s[i] * alpha_over_size;                                                     \
                v += k;                                                                           \
                scale[o + i] = v;                                                                 \
            }                                                                                     \
            lrn_scale_pow_##SUFFIX(x + o, scale + o, scale_pow + o, top + o, len, neg_beta);      \
        }                                                                                         \
    }                                                                                             \
    free(ring);                                                                                   \
}                                                                                                 \
                                                                                                  \
void lrn_bwd_##SUFFIX(const T *x, const T *y, const T *dy, const T *scale, const T *scale_pow,   \
                      T *dx, i64 C, i64 HW, i64 size, T coef, i64 u0, i64 u1)                     \
{                                                                                                 \
    const i64 blocks = (HW + LRN_BLOCK - 1) / LRN_BLOCK, half = (size - 1) / 2;                   \
    T *ring = (T *)malloc((size_t)(size * LRN_BLOCK) * sizeof(T));                                \
    T s[LRN_BLOCK];                                                                               \
    if (!ring)                                                                                    \
        return;                                                                                   \
    for (i64 u = u0; u < u1; ++u) {                                                               \
        const i64 n = u / blocks, b0 = (u % blocks) * LRN_BLOCK;                                  \
        const i64 len = HW - b0 < LRN_BLOCK ? HW - b0 : LRN_BLOCK;                                \
        const i64 base = n * C * HW + b0;                                                         \
        /* dx may be dy: each ratio is taken before dx overwrites that channel */                 \
        for (i64 c = -half; c < C; ++c) {                                                         \
            const i64 cn = c + half;                                                              \
            if (cn < C) {                                                                         \
                const i64 o = base + cn * HW;                                                     \
                T *r = ring + (cn % size) * LRN_BLOCK;                                            \
                for (i64 i = 0; i < len; ++i) {                                                   \
                    T v = dy[o + i] * y[o + i];                                                   \
                    r[i] = v / scale[o + i];                                                      \
                }                                                                                 \
            }                                                                                     \
            if (c < 0)                                                                            \
                continue;                                                                         \
            const i64 lo = c - half < 0 ? 0 : c - half, hi = c + half < C ? c + half : C - 1;     \
            ring_sum_##SUFFIX(s, ring, lo, hi, size, len);                                        \
            const i64 o = base + c * HW;                                                          \
            for (i64 i = 0; i < len; ++i) {                                                       \
                T a = s[i] * x[o + i];                                                            \
                a *= coef;                                                                        \
                dx[o + i] = a + dy[o + i] * scale_pow[o + i];                                     \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    free(ring);                                                                                   \
}

LRN(float, f32, powf)
LRN(double, f64, pow)

/* LRN within channel on planes [p0, p1) of H x W: the zero-padded size x size box sum, taken
   as the NumPy path takes it (along H, then along W, each window's terms in order), so
   scale = 1 + alpha/size^2 * box(x^2) and the backward's box(dy * y / scale) are its values. */
#define BOX(T, SUFFIX)                                                                            \
static void box_sum_##SUFFIX(const T *restrict a, T *restrict rows, T *restrict out, i64 H,       \
                             i64 W, i64 half)                                                     \
{                                                                                                 \
    for (i64 h = 0; h < H; ++h) {                                                                 \
        const i64 lo = h - half < 0 ? 0 : h - half, hi = h + half < H ? h + half : H - 1;         \
        T *r = rows + h * W;                                                                      \
        memcpy(r, a + lo * W, (size_t)W * sizeof(T));                                             \
        for (i64 k = lo + 1; k <= hi; ++k) {                                                      \
            const T *src = a + k * W;                                                             \
            for (i64 w = 0; w < W; ++w)                                                           \
                r[w] += src[w];                                                                   \
        }                                                                                         \
    }                                                                                             \
    for (i64 h = 0; h < H; ++h) {                                                                 \
        const T *r = rows + h * W;                                                                \
        T *o = out + h * W;                                                                       \
        for (i64 w = 0; w < W; ++w) {                                                             \
            const i64 lo = w - half < 0 ? 0 : w - half, hi = w + half < W ? w + half : W - 1;     \
            T v = r[lo];                                                                          \
            for (i64 k = lo + 1; k <= hi; ++k)                                                    \
                v += r[k];                                                                        \
            o[w] = v;                                                                             \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
void lrn_within_fwd_##SUFFIX(const T *x, T *scale, T *scale_pow, T *top, i64 H, i64 W, i64 size, \
                             T alpha_over_area, T neg_beta, i64 p0, i64 p1)                       \
{                                                                                                 \
    const i64 HW = H * W;                                                                         \
    T *buf = (T *)malloc((size_t)(2 * HW) * sizeof(T));                                           \
    if (!buf)                                                                                     \
        return;                                                                                   \
    for (i64 p = p0; p < p1; ++p) {                                                               \
        const T *xp = x + p * HW;                                                                 \
        T *sc = scale + p * HW, *sp = scale_pow + p * HW, *tp = top + p * HW;                     \
        for (i64 i = 0; i < HW; ++i)                                                              \
            buf[i] = xp[i] * xp[i];                                                               \
        box_sum_##SUFFIX(buf, buf + HW, sc, H, W, (size - 1) / 2);                                \
        for (i64 i = 0; i < HW; ++i) {                                                            \
            T v = sc[i] * alpha_over_area;                                                        \
            v += (T)1;                                                                            \
            sc[i] = v;                                                                            \
        }                                                                                         \
        lrn_scale_pow_##SUFFIX(xp, sc, sp, tp, HW, neg_beta);                                     \
    }                                                                                             \
    free(buf);                                                                                    \
}                                                                                                 \
                                                                                                  \
void lrn_within_bwd_##SUFFIX(const T *x, const T *y, const T *dy, const T *scale,                \
                             const T *scale_pow, T *dx, i64 H, i64 W, i64 size, T coef, i64 p0,  \
                             i64 p1)                                                              \
{                                                                                                 \
    const i64 HW = H * W;                                                                         \
    T *buf = (T *)malloc((size_t)(3 * HW) * sizeof(T));                                           \
    if (!buf)                                                                                     \
        return;                                                                                   \
    for (i64 p = p0; p < p1; ++p) {                                                               \
        const i64 o = p * HW;                                                                     \
        for (i64 i = 0; i < HW; ++i) {                                                            \
            T v = dy[o + i] * y[o + i];                                                           \
            buf[i] = v / scale[o + i];                                                            \
        }                                                                                         \
        box_sum_##SUFFIX(buf, buf + HW, buf + 2 * HW, H, W, (size - 1) / 2);                      \
        const T *acc = buf + 2 * HW;                                                              \
        for (i64 i = 0; i < HW; ++i) {                                                            \
            T a = acc[i] * x[o + i];                                                              \
            a *= coef;                                                                            \
            dx[o + i] = a + dy[o + i] * scale_pow[o + i];                                         \
        }                                                                                         \
    }                                                                                             \
    free(buf);                                                                                    \
}

BOX(float, f32)
BOX(double, f64)

/* ---- Winograd F(2x2, r x r): the transforms around its GEMMs -----------------------------

   A stride-1 r x r convolution computed tile by tile: each 2x2 output tile is A^T [U . V] A
   with U = G g G^T (the kernel g, a x a, a = r + 1) and V = B^T d B (the tile's a x a input
   patch d), so the a*a entries of U . V, summed over channels, are a*a GEMMs with fewer
   multiply-adds than im2col's (16 for 36 at r = 3, 36 for 100 at r = 5). The matrices come
   from the caller (bt: a x a, g: a x r, at: 2 x a, row-major doubles; mostly 0 and +-1, so
   terms with a zero coefficient are skipped). Layouts: U (a*a, K, C); V and M (a*a, channels,
   tiles) for a block of whole tile rows [r0, r1), tile row R = n * TH + ti, tile
   t = (R - r0) * TW + tj. Work splits over channels [c0, c1) (or output channels, or kernel
   entries), so threads never write the same bytes. */

#define WINO_MAX_A 6
#define WINO_BLOCK 64

/* dst[j] = sum_i coef[i * stride] * src[i][j + off[i]] over j in [0, n), zero coefficients skipped */
#define WINO_COMBINE(T, SUFFIX)                                                                   \
static void wino_combine_##SUFFIX(T *restrict dst, T *const *src, const i64 *off, const double *coef, \
                                  i64 stride, int terms, i64 n)                                   \
{                                                                                                 \
    int first = 1;                                                                                \
    for (int i = 0; i < terms; ++i) {                                                             \
        const T c = (T)coef[i * stride];                                                          \
        if (c == 0)                                                                               \
            continue;                                                                             \
        const T *restrict s = src[i] + off[i];                                                    \
        if (first) {                                                                              \
            if (c == 1)                                                                           \
                for (i64 j = 0; j < n; ++j) dst[j] = s[j];                                        \
            else if (c == -1)                                                                     \
                for (i64 j = 0; j < n; ++j) dst[j] = -s[j];                                       \
            else                                                                                  \
                for (i64 j = 0; j < n; ++j) dst[j] = c * s[j];                                    \
            first = 0;                                                                            \
        } else if (c == 1) {                                                                      \
            for (i64 j = 0; j < n; ++j) dst[j] += s[j];                                           \
        } else if (c == -1) {                                                                     \
            for (i64 j = 0; j < n; ++j) dst[j] -= s[j];                                           \
        } else {                                                                                  \
            for (i64 j = 0; j < n; ++j) dst[j] += c * s[j];                                       \
        }                                                                                         \
    }                                                                                             \
    if (first)                                                                                    \
        for (i64 j = 0; j < n; ++j) dst[j] = 0;                                                   \
}

#define WINOGRAD(T, SUFFIX)                                                                       \
/* u = G w G^T: w (K, C, r, r) -> u (a*a, K, C); flip: u (a*a, C, K) of w[k, c, r-1-i, r-1-j],  \
   the kernel a convolution's backward-data runs (transposed, turned half a circle). Over u's   \
   entries [o0, o1) of a plane, WINO_BLOCK at a time, gathered into planes first so that the    \
   arithmetic runs along contiguous rows */                                                     \
void wino_weights_##SUFFIX(const T *w, T *u, const double *g, i64 a, i64 r, i64 K, i64 C, i64 flip, \
                           i64 o0, i64 o1)                                                        \
{                                                                                                 \
    const i64 KC = K * C, rr = r * r;                                                             \
    T *buf = (T *)malloc((size_t)((rr + a * r) * WINO_BLOCK) * sizeof(T));                       \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *src[WINO_MAX_A * WINO_MAX_A];                                                              \
    i64 off[WINO_MAX_A * WINO_MAX_A] = {0};                                                       \
    T *kern = buf, *half = buf + rr * WINO_BLOCK;   /* half: (a, r) planes, G g */                \
    for (i64 b0 = o0; b0 < o1; b0 += WINO_BLOCK) {                                                \
        const i64 n = o1 - b0 < WINO_BLOCK ? o1 - b0 : WINO_BLOCK;                                \
        for (i64 j = 0; j < n; ++j) {                                                             \
            const i64 o = b0 + j;                                                                 \
            const T *gk = w + (flip ? (o % K) * C + o / K : o) * rr;                              \
            for (i64 q = 0; q < rr; ++q)                                                          \
                kern[q * WINO_BLOCK + j] = flip ? gk[rr - 1 - q] : gk[q];                         \
        }                                                                                         \
        for (i64 i = 0; i < a; ++i)            /* G down the columns */                          \
            for (i64 c = 0; c < r; ++c) {                                                         \
                for (i64 t = 0; t < r; ++t)                                                       \
                    src[t] = kern + (t * r + c) * WINO_BLOCK;                                     \
                wino_combine_##SUFFIX(half + (i * r + c) * WINO_BLOCK, src, off, g + i * r, 1,    \
                                      (int)r, n);                                                 \
            }                                                                                     \
        for (i64 i = 0; i < a; ++i)            /* and G^T along the rows */                      \
            for (i64 q = 0; q < a; ++q) {                                                         \
                for (i64 t = 0; t < r; ++t)                                                       \
                    src[t] = half + (i * r + t) * WINO_BLOCK;                                     \
                wino_combine_##SUFFIX(u + (i * a + q) * KC + b0, src, off, g + q * r, 1, (int)r, n); \
            }                                                                                     \
    }                                                                                             \
    free(buf);                                                                                    \
}                                                                                                 \
                                                                                                  \
/* dw (K, C, r, r) = (or +=) G^T du G, du (a*a, K, C): the kernel's gradient from U's, over     \
   entries [o0, o1) of a (K, C) plane */                                                        \
void wino_weights_grad_##SUFFIX(const T *du, T *dw, const double *g, i64 a, i64 r, i64 K, i64 C,  \
                                i64 accumulate, i64 o0, i64 o1)                                   \
{                                                                                                 \
    const i64 KC = K * C, rr = r * r;                                                             \
    T *buf = (T *)malloc((size_t)((a * a + r * a + rr) * WINO_BLOCK) * sizeof(T));               \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *m = buf, *half = buf + a * a * WINO_BLOCK, *v = half + r * a * WINO_BLOCK;                 \
    T *src[WINO_MAX_A * WINO_MAX_A];                                                              \
    i64 off[WINO_MAX_A * WINO_MAX_A] = {0};                                                       \
    for (i64 b0 = o0; b0 < o1; b0 += WINO_BLOCK) {                                                \
        const i64 n = o1 - b0 < WINO_BLOCK ? o1 - b0 : WINO_BLOCK;                                \
        for (i64 x = 0; x < a * a; ++x)                                                           \
            memcpy(m + x * WINO_BLOCK, du + x * KC + b0, (size_t)n * sizeof(T));                  \
        for (i64 i = 0; i < r; ++i)            /* G^T down the columns */                        \
            for (i64 q = 0; q < a; ++q) {                                                         \
                for (i64 t = 0; t < a; ++t)                                                       \
                    src[t] = m + (t * a + q) * WINO_BLOCK;                                        \
                wino_combine_##SUFFIX(half + (i * a + q) * WINO_BLOCK, src, off, g + i, r,        \
                                      (int)a, n);                                                 \
            }                                                                                     \
        for (i64 i = 0; i < r; ++i)            /* and G along the rows */                        \
            for (i64 j = 0; j < r; ++j) {                                                         \
                for (i64 t = 0; t < a; ++t)                                                       \
                    src[t] = half + (i * a + t) * WINO_BLOCK;                                     \
                wino_combine_##SUFFIX(v + (i * r + j) * WINO_BLOCK, src, off, g + j, r, (int)a, n); \
            }                                                                                     \
        for (i64 j = 0; j < n; ++j) {                                                             \
            T *out = dw + (b0 + j) * rr;                                                          \
            for (i64 q = 0; q < rr; ++q)                                                          \
                out[q] = accumulate ? out[q] + v[q * WINO_BLOCK + j] : v[q * WINO_BLOCK + j];     \
        }                                                                                         \
    }                                                                                             \
    free(buf);                                                                                    \
}                                                                                                 \
                                                                                                  \
/* the even and odd columns of one row of the zero-padded image: e[j] = row[2j - PW],          \
   o[j] = row[2j + 1 - PW], j in [0, n); zeros outside the row (and for no row at all) */      \
static void wino_split_##SUFFIX(const T *row, i64 W, i64 PW, i64 n, T *restrict e, T *restrict o) \
{                                                                                                 \
    if (!row) {                                                                                   \
        for (i64 j = 0; j < n; ++j)                                                               \
            e[j] = o[j] = 0;                                                                      \
        return;                                                                                   \
    }                                                                                             \
    i64 lo = (PW + 1) / 2, hi = (W + PW) / 2; /* both columns inside: [lo, hi) */                \
    if (hi > n)                                                                                   \
        hi = n;                                                                                   \
    if (lo > hi)                                                                                  \
        lo = hi;                                                                                  \
    for (i64 j = 0; j < lo; ++j) {                                                                \
        i64 xe = 2 * j - PW;                                                                      \
        e[j] = xe >= 0 && xe < W ? row[xe] : 0;                                                   \
        o[j] = xe + 1 >= 0 && xe + 1 < W ? row[xe + 1] : 0;                                       \
    }                                                                                             \
    const T *base = row - PW;                                                                     \
    for (i64 j = lo; j < hi; ++j) {                                                               \
        e[j] = base[2 * j];                                                                       \
        o[j] = base[2 * j + 1];                                                                   \
    }                                                                                             \
    for (i64 j = hi; j < n; ++j) {                                                                \
        i64 xe = 2 * j - PW;                                                                      \
        e[j] = xe >= 0 && xe < W ? row[xe] : 0;                                                   \
        o[j] = xe + 1 >= 0 && xe + 1 < W ? row[xe + 1] : 0;                                       \
    }                                                                                             \
}

/* The tile transforms of F(2, 3) and F(2, 5), written out (protonet/layers/_winograd.py derives
   the same matrices from the interpolation points 0, +-1 (+-2) and infinity; its tests compare
   the results with im2col's). Each pass is one loop along a row of tiles, so it vectorizes:
   B^T down the columns of the A input rows (in place, on their even and odd halves), B along a
   row of tiles (tile j's columns are e[j], o[j], e[j+1], o[j+1], ...), A^T of the products and
   A of a top diff's 2x2 tiles. */
#define WINO_ROWS(T, SUFFIX)                                                                      \
/* B^T of one tile column or row, written once per size for both passes below */                \
static inline void wino_bt3_##SUFFIX(T x0, T x1, T x2, T x3, T *o)                                \
{                                                                                                 \
    o[0] = x2 - x0;                                                                               \
    o[1] = x1 + x2;                                                                               \
    o[2] = x2 - x1;                                                                               \
    o[3] = x3 - x1;                                                                               \
}                                                                                                 \
                                                                                                  \
static inline void wino_bt5_##SUFFIX(T x0, T x1, T x2, T x3, T x4, T x5, T *o)                    \
{                                                                                                 \
    const T four = 4, five = 5, two = 2;                                                          \
    o[0] = four * x0 - five * x2 + x4;                                                            \
    o[1] = -four * x1 - four * x2 + x3 + x4;                                                      \
    o[2] = four * x1 - four * x2 - x3 + x4;                                                       \
    o[3] = -two * x1 - x2 + two * x3 + x4;                                                        \
    o[4] = two * x1 - x2 - two * x3 + x4;                                                         \
    o[5] = four * x1 - five * x3 + x5;                                                            \
}                                                                                                 \
                                                                                                  \
/* B^T down the columns: d[0..A) in place */                                                    \
static void wino_bt_cols3_##SUFFIX(T *const *d, i64 n)                                            \
{                                                                                                 \
    T *restrict d0 = d[0], *restrict d1 = d[1], *restrict d2 = d[2], *restrict d3 = d[3];        \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        T o[4];                                                                                   \
        wino_bt3_##SUFFIX(d0[j], d1[j], d2[j], d3[j], o);                                         \
        d0[j] = o[0]; d1[j] = o[1]; d2[j] = o[2]; d3[j] = o[3];                                   \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void wino_bt_cols5_##SUFFIX(T *const *d, i64 n)                                            \
{                                                                                                 \
    T *restrict d0 = d[0], *restrict d1 = d[1], *restrict d2 = d[2];                              \
    T *restrict d3 = d[3], *restrict d4 = d[4], *restrict d5 = d[5];                              \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        T o[6];                                                                                   \
        wino_bt5_##SUFFIX(d0[j], d1[j], d2[j], d3[j], d4[j], d5[j], o);                           \
        d0[j] = o[0]; d1[j] = o[1]; d2[j] = o[2]; d3[j] = o[3]; d4[j] = o[4]; d5[j] = o[5];       \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* B along a row of tiles: v[q][j] = (B^T of tile j's columns e[j], o[j], e[j+1], ...)[q] */     \
static void wino_bt_row3_##SUFFIX(const T *restrict e, const T *restrict o, T *const *v, i64 n)   \
{                                                                                                 \
    T *restrict v0 = v[0], *restrict v1 = v[1], *restrict v2 = v[2], *restrict v3 = v[3];        \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        T t[4];                                                                                   \
        wino_bt3_##SUFFIX(e[j], o[j], e[j + 1], o[j + 1], t);                                     \
        v0[j] = t[0]; v1[j] = t[1]; v2[j] = t[2]; v3[j] = t[3];                                   \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void wino_bt_row5_##SUFFIX(const T *restrict e, const T *restrict o, T *const *v, i64 n)   \
{                                                                                                 \
    T *restrict v0 = v[0], *restrict v1 = v[1], *restrict v2 = v[2];                              \
    T *restrict v3 = v[3], *restrict v4 = v[4], *restrict v5 = v[5];                              \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        T t[6];                                                                                   \
        wino_bt5_##SUFFIX(e[j], o[j], e[j + 1], o[j + 1], e[j + 2], o[j + 2], t);                 \
        v0[j] = t[0]; v1[j] = t[1]; v2[j] = t[2]; v3[j] = t[3]; v4[j] = t[4]; v5[j] = t[5];       \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* out[j] (+)= the two rows of A^T applied to m[0..A) (rows of a tile column), j in [0, n) */   \
static void wino_at3_##SUFFIX(const T *const *m, T *restrict y0, T *restrict y1, i64 n)           \
{                                                                                                 \
    const T *restrict m0 = m[0], *restrict m1 = m[1], *restrict m2 = m[2], *restrict m3 = m[3];  \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        y0[j] = m0[j] + m1[j] + m2[j];                                                            \
        y1[j] = m1[j] - m2[j] + m3[j];                                                            \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void wino_at5_##SUFFIX(const T *const *m, T *restrict y0, T *restrict y1, i64 n)           \
{                                                                                                 \
    const T *restrict m0 = m[0], *restrict m1 = m[1], *restrict m2 = m[2];                        \
    const T *restrict m3 = m[3], *restrict m4 = m[4], *restrict m5 = m[5];                        \
    const T two = 2;                                                                              \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        y0[j] = m0[j] + m1[j] + m2[j] + m3[j] + m4[j];                                            \
        y1[j] = m1[j] - m2[j] + two * m3[j] - two * m4[j] + m5[j];                                \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* u[0..A) = A (g0, g1): a top diff column through A, the output transform's adjoint */         \
static void wino_a3_##SUFFIX(const T *restrict g0, const T *restrict g1, T *const *u, i64 n)      \
{                                                                                                 \
    T *restrict u0 = u[0], *restrict u1 = u[1], *restrict u2 = u[2], *restrict u3 = u[3];        \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        u0[j] = g0[j];                                                                            \
        u1[j] = g0[j] + g1[j];                                                                    \
        u2[j] = g0[j] - g1[j];                                                                    \
        u3[j] = g1[j];                                                                            \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
static void wino_a5_##SUFFIX(const T *restrict g0, const T *restrict g1, T *const *u, i64 n)      \
{                                                                                                 \
    T *restrict u0 = u[0], *restrict u1 = u[1], *restrict u2 = u[2];                              \
    T *restrict u3 = u[3], *restrict u4 = u[4], *restrict u5 = u[5];                              \
    const T two = 2;                                                                              \
    for (i64 j = 0; j < n; ++j) {                                                                 \
        u0[j] = g0[j];                                                                            \
        u1[j] = g0[j] + g1[j];                                                                    \
        u2[j] = g0[j] - g1[j];                                                                    \
        u3[j] = g0[j] + two * g1[j];                                                              \
        u4[j] = g0[j] - two * g1[j];                                                              \
        u5[j] = g1[j];                                                                            \
    }                                                                                             \
}

#define WINO_TILES(T, SUFFIX, R, A)                                                               \
/* v (A*A, C, tiles) = B^T d B for the tiles of rows [r0, r1) of x (N, C, H, W) padded by PH,  \
   PW: per tile row the even and odd columns of its A input rows, B^T down them, B along them */ \
void wino_input_##SUFFIX##_##R(const T *x, T *v, i64 C, i64 H, i64 W, i64 PH, i64 PW, i64 TH,     \
                               i64 TW, i64 r0, i64 r1, i64 c0, i64 c1)                            \
{                                                                                                 \
    const i64 tb = (r1 - r0) * TW, CT = C * tb, L = TW + A / 2 - 1;                               \
    T *buf = (T *)malloc((size_t)(2 * A * L) * sizeof(T));                                        \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *e[A], *o[A], *out[A];                                                                      \
    for (int i = 0; i < A; ++i) {                                                                 \
        e[i] = buf + (2 * i) * L;                                                                 \
        o[i] = e[i] + L;                                                                          \
    }                                                                                             \
    for (i64 c = c0; c < c1; ++c)                                                                 \
        for (i64 Rw = r0; Rw < r1; ++Rw) {                                                        \
            const i64 n = Rw / TH, ti = Rw % TH;                                                  \
            const T *plane = x + (n * C + c) * H * W;                                             \
            for (int i = 0; i < A; ++i) {                                                         \
                const i64 y = 2 * ti - PH + i;                                                    \
                wino_split_##SUFFIX(y >= 0 && y < H ? plane + y * W : NULL, W, PW, L, e[i], o[i]); \
            }                                                                                     \
            wino_bt_cols##R##_##SUFFIX(e, L);                                                     \
            wino_bt_cols##R##_##SUFFIX(o, L);                                                     \
            T *vt = v + c * tb + (Rw - r0) * TW;                                                  \
            for (int k = 0; k < A; ++k) {                                                         \
                for (int q = 0; q < A; ++q)                                                       \
                    out[q] = vt + (k * A + q) * CT;                                               \
                wino_bt_row##R##_##SUFFIX(e[k], o[k], out, TW);                                   \
            }                                                                                     \
        }                                                                                         \
    free(buf);                                                                                    \
}                                                                                                 \
                                                                                                  \
/* y (N, K, Ho, Wo) = A^T m A (+ bias[k]) for the tiles of rows [r0, r1), m (A*A, K, tiles) */  \
void wino_output_##SUFFIX##_##R(const T *m, T *y, const T *bias, i64 K, i64 Ho, i64 Wo, i64 TH,   \
                                i64 TW, i64 r0, i64 r1, i64 relu, i64 k0, i64 k1)                 \
{                                                                                                 \
    const i64 tb = (r1 - r0) * TW, KT = K * tb;                                                   \
    T *buf = (T *)malloc((size_t)((2 * A + 4) * TW) * sizeof(T));                                 \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *p = buf, *yv = buf + 2 * A * TW;     /* p: A^T down the columns, (2, A) rows; yv: 4 */   \
    const T *col[A];                                                                              \
    for (i64 k = k0; k < k1; ++k) {                                                               \
        for (i64 Rw = r0; Rw < r1; ++Rw) {                                                        \
            const i64 n = Rw / TH, ti = Rw % TH;                                                  \
            const T *mt = m + k * tb + (Rw - r0) * TW;                                            \
            for (int q = 0; q < A; ++q) {                                                         \
                for (int i = 0; i < A; ++i)                                                       \
                    col[i] = mt + (i * A + q) * KT;                                               \
                wino_at##R##_##SUFFIX(col, p + q * TW, p + (A + q) * TW, TW);                     \
            }                                                                                     \
            for (int r = 0; r < 2; ++r) {                                                         \
                for (int q = 0; q < A; ++q)                                                       \
                    col[q] = p + (r * A + q) * TW;                                                \
                wino_at##R##_##SUFFIX(col, yv + (2 * r) * TW, yv + (2 * r + 1) * TW, TW);         \
            }                                                                                     \
            if (bias) {                                                                           \
                const T b = bias[k];                                                              \
                for (i64 j = 0; j < 4 * TW; ++j)                                                  \
                    yv[j] += b;                                                                   \
            }                                                                                     \
            if (relu)                                                                             \
                for (i64 j = 0; j < 4 * TW; ++j)                                                  \
                    yv[j] = yv[j] < 0 ? (T)0 : yv[j];                                             \
            const i64 pairs = Wo / 2;                                                             \
            for (int r = 0; r < 2 && 2 * ti + r < Ho; ++r) {                                      \
                T *row = y + ((n * K + k) * Ho + 2 * ti + r) * Wo;                                \
                const T *ev = yv + (2 * r) * TW, *od = yv + (2 * r + 1) * TW;                     \
                for (i64 j = 0; j < pairs; ++j) {                                                 \
                    row[2 * j] = ev[j];                                                           \
                    row[2 * j + 1] = od[j];                                                       \
                }                                                                                 \
                if (Wo & 1)                                                                       \
                    row[Wo - 1] = ev[pairs];                                                      \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    free(buf);                                                                                    \
}                                                                                                 \
                                                                                                  \
/* m (A*A, K, tiles) = A dy A^T for the tiles of rows [r0, r1) of dy (N, K, Ho, Wo), zeros past \
   its edge: a top diff through the output transform's adjoint (for the kernel's gradient) */   \
void wino_grad_##SUFFIX##_##R(const T *dy, T *m, i64 K, i64 Ho, i64 Wo, i64 TH, i64 TW, i64 r0,   \
                              i64 r1, i64 k0, i64 k1)                                             \
{                                                                                                 \
    const i64 tb = (r1 - r0) * TW, KT = K * tb;                                                   \
    T *buf = (T *)malloc((size_t)((4 + 2 * A) * TW) * sizeof(T));                                 \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *ue[A], *uo[A], *out[A];              /* A down the even and the odd columns */           \
    for (int i = 0; i < A; ++i) {                                                                 \
        ue[i] = buf + (4 + 2 * i) * TW;                                                           \
        uo[i] = ue[i] + TW;                                                                       \
    }                                                                                             \
    for (i64 k = k0; k < k1; ++k)                                                                 \
        for (i64 Rw = r0; Rw < r1; ++Rw) {                                                        \
            const i64 n = Rw / TH, ti = Rw % TH;                                                  \
            const T *plane = dy + (n * K + k) * Ho * Wo;                                          \
            wino_split_##SUFFIX(plane + 2 * ti * Wo, Wo, 0, TW, buf, buf + TW);                   \
            wino_split_##SUFFIX(2 * ti + 1 < Ho ? plane + (2 * ti + 1) * Wo : NULL, Wo, 0, TW,    \
                                buf + 2 * TW, buf + 3 * TW);                                      \
            wino_a##R##_##SUFFIX(buf, buf + 2 * TW, ue, TW);                                      \
            wino_a##R##_##SUFFIX(buf + TW, buf + 3 * TW, uo, TW);                                 \
            T *mt = m + k * tb + (Rw - r0) * TW;                                                  \
            for (int i = 0; i < A; ++i) {        /* and A^T along the rows */                    \
                for (int q = 0; q < A; ++q)                                                       \
                    out[q] = mt + (i * A + q) * KT;                                               \
                wino_a##R##_##SUFFIX(ue[i], uo[i], out, TW);                                      \
            }                                                                                     \
        }                                                                                         \
    free(buf);                                                                                    \
}

WINO_COMBINE(float, f32)
WINO_COMBINE(double, f64)
WINO_ROWS(float, f32)
WINO_ROWS(double, f64)
WINOGRAD(float, f32)
WINOGRAD(double, f64)
WINO_TILES(float, f32, 3, 4)
WINO_TILES(float, f32, 5, 6)
WINO_TILES(double, f64, 3, 4)
WINO_TILES(double, f64, 5, 6)

/* one row of P: v = s + b (when has_bias), then max(v, 0) in ReLU's sense when relu (NaN stays
   NaN, -0.0 stays); v may be s itself (in place) */
#define BIAS_RELU_ROW(T, SUFFIX)                                                                  \
static inline void bias_relu_row_##SUFFIX(T *v, const T *s, T b, int has_bias, i64 relu, i64 P)  \
{                                                                                                 \
    if (has_bias && relu)                                                                         \
        for (i64 j = 0; j < P; ++j) {                                                             \
            const T t = s[j] + b;                                                                 \
            v[j] = t < 0 ? (T)0 : t;                                                              \
        }                                                                                         \
    else if (has_bias)                                                                            \
        for (i64 j = 0; j < P; ++j)                                                               \
            v[j] = s[j] + b;                                                                      \
    else if (relu)                                                                                \
        for (i64 j = 0; j < P; ++j)                                                               \
            v[j] = s[j] < 0 ? (T)0 : s[j];                                                        \
    else if (v != s)                                                                              \
        memcpy(v, s, (size_t)P * sizeof(T));                                                      \
}                                                                                                 \
                                                                                                  \
/* y (rows of P) += bias[row % K], then, when relu, y = max(y, 0): a convolution's bias and the  \
   in-place ReLU after it in one pass over the top */                                             \
void bias_relu_##SUFFIX(T *y, const T *bias, i64 P, i64 K, i64 relu, i64 lo, i64 hi)             \
{                                                                                                 \
    for (i64 row = lo; row < hi; ++row)                                                           \
        bias_relu_row_##SUFFIX(y + row * P, y + row * P, bias ? bias[row % K] : (T)0, bias != 0, \
                               relu, P);                                                          \
}                                                                                                 \
                                                                                                  \
/* y (N, K, P) rows [lo, hi) = src (K, N*P) regrouped (the batch's one GEMM product, channel     \
   rows), then the same bias and ReLU: the copy out of the product and bias_relu in one pass */  \
void ungroup_bias_relu_##SUFFIX(T *y, const T *src, const T *bias, i64 P, i64 K, i64 N,           \
                                i64 relu, i64 lo, i64 hi)                                         \
{                                                                                                 \
    for (i64 row = lo; row < hi; ++row) {                                                         \
        const i64 n = row / K, k = row % K;                                                       \
        bias_relu_row_##SUFFIX(y + row * P, src + (k * N + n) * P, bias ? bias[k] : (T)0,        \
                               bias != 0, relu, P);                                               \
    }                                                                                             \
}

BIAS_RELU_ROW(float, f32)
BIAS_RELU_ROW(double, f64)

/* the library's interface version: ckernels.py refuses a stale build */
int protonet_ckernels_version(void) { return 6; }
