/* CPU kernels for the passes around the GEMMs: im2col, col2im, MAX and AVE pooling, LRN and
   Winograd's transforms.

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

/* ---- Winograd F(2x2, 3x3): the transforms around its 16 GEMMs -----------------------------

   A stride-1 3x3 convolution computed tile by tile: each 2x2 output tile is A^T [U . V] A with
   U = G g G^T (the 3x3 kernel g, 4x4) and V = B^T d B (the tile's 4x4 input patch d), so the
   16 entries of U . V, summed over channels, are 16 GEMMs of 2.25x fewer multiply-adds than
   im2col's. Layouts: U (16, K, C); V and M (16, channels, tiles) for a block of whole tile
   rows [r0, r1), tile row R = n * TH + ti, tile t = (R - r0) * TW + tj. Work splits over
   channels [c0, c1) (or output channels [k0, k1)), so threads never write the same bytes. */

#define WINO_BLOCK 64

#define WINOGRAD(T, SUFFIX)                                                                       \
/* u = G w G^T: w (K, C, 3, 3) -> u (16, K, C); flip: u (16, C, K) of w[k, c, 2-i, 2-j], the   \
   kernel a convolution's backward-data runs (the transposed kernel, turned half a circle).     \
   Over u's entries [o0, o1) of a plane, WINO_BLOCK at a time: gathered into planes first, so   \
   the arithmetic runs on contiguous rows */                                                    \
void wino_weights_##SUFFIX(const T *w, T *u, i64 K, i64 C, i64 flip, i64 o0, i64 o1)             \
{                                                                                                 \
    const i64 KC = K * C;                                                                         \
    const T h = (T)0.5;                                                                           \
    T a[9][WINO_BLOCK], t[12][WINO_BLOCK];                                                        \
    for (i64 b0 = o0; b0 < o1; b0 += WINO_BLOCK) {                                                \
        const i64 n = o1 - b0 < WINO_BLOCK ? o1 - b0 : WINO_BLOCK;                                \
        for (i64 j = 0; j < n; ++j) {                                                             \
            const i64 o = b0 + j;                                                                 \
            const T *g = w + (flip ? (o % K) * C + o / K : o) * 9;                                \
            for (int q = 0; q < 9; ++q)                                                           \
                a[q][j] = flip ? g[8 - q] : g[q];                                                 \
        }                                                                                         \
        /* G down the columns: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 */            \
        for (int c = 0; c < 3; ++c)                                                               \
            for (i64 j = 0; j < n; ++j) {                                                         \
                T g0 = a[c][j], g1 = a[3 + c][j], g2 = a[6 + c][j];                               \
                t[c][j] = g0;                                                                     \
                t[3 + c][j] = (g0 + g1 + g2) * h;                                                 \
                t[6 + c][j] = (g0 - g1 + g2) * h;                                                 \
                t[9 + c][j] = g2;                                                                 \
            }                                                                                     \
        /* and G^T along the rows */                                                             \
        for (int r = 0; r < 4; ++r) {                                                             \
            T *u0 = u + (4 * r) * KC + b0, *u1 = u0 + KC, *u2 = u1 + KC, *u3 = u2 + KC;           \
            const T *t0 = t[3 * r], *t1 = t[3 * r + 1], *t2 = t[3 * r + 2];                       \
            for (i64 j = 0; j < n; ++j) {                                                         \
                u0[j] = t0[j];                                                                    \
                u1[j] = (t0[j] + t1[j] + t2[j]) * h;                                              \
                u2[j] = (t0[j] - t1[j] + t2[j]) * h;                                              \
                u3[j] = t2[j];                                                                    \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* dw (K, C, 3, 3) = (or +=) G^T du G, du (16, K, C): the kernel's gradient from U's, over      \
   entries [o0, o1) of a (K, C) plane */                                                        \
void wino_weights_grad_##SUFFIX(const T *du, T *dw, i64 K, i64 C, i64 accumulate, i64 o0, i64 o1) \
{                                                                                                 \
    const i64 KC = K * C;                                                                         \
    const T h = (T)0.5;                                                                           \
    T r[12][WINO_BLOCK], v[9][WINO_BLOCK];                                                        \
    for (i64 b0 = o0; b0 < o1; b0 += WINO_BLOCK) {                                                \
        const i64 n = o1 - b0 < WINO_BLOCK ? o1 - b0 : WINO_BLOCK;                                \
        /* G^T down the columns: rows m0 + (m1 + m2) / 2, (m1 - m2) / 2, (m1 + m2) / 2 + m3 */   \
        for (int q = 0; q < 4; ++q) {                                                             \
            const T *m0 = du + q * KC + b0, *m1 = m0 + 4 * KC, *m2 = m1 + 4 * KC, *m3 = m2 + 4 * KC; \
            for (i64 j = 0; j < n; ++j) {                                                         \
                r[q][j] = m0[j] + (m1[j] + m2[j]) * h;                                            \
                r[4 + q][j] = (m1[j] - m2[j]) * h;                                                \
                r[8 + q][j] = (m1[j] + m2[j]) * h + m3[j];                                        \
            }                                                                                     \
        }                                                                                         \
        /* and G along the rows */                                                               \
        for (int i = 0; i < 3; ++i) {                                                             \
            const T *x0 = r[4 * i], *x1 = r[4 * i + 1], *x2 = r[4 * i + 2], *x3 = r[4 * i + 3];   \
            for (i64 j = 0; j < n; ++j) {                                                         \
                v[3 * i][j] = x0[j] + (x1[j] + x2[j]) * h;                                        \
                v[3 * i + 1][j] = (x1[j] - x2[j]) * h;                                            \
                v[3 * i + 2][j] = (x1[j] + x2[j]) * h + x3[j];                                    \
            }                                                                                     \
        }                                                                                         \
        for (i64 j = 0; j < n; ++j) {                                                             \
            T *out = dw + (b0 + j) * 9;                                                           \
            for (int q = 0; q < 9; ++q)                                                           \
                out[q] = accumulate ? out[q] + v[q][j] : v[q][j];                                 \
        }                                                                                         \
    }                                                                                             \
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
}                                                                                                 \
                                                                                                  \
/* v (16, C, tiles) = B^T d B for the tiles of rows [r0, r1) of x (N, C, H, W), padded by PH, PW */ \
void wino_input_##SUFFIX(const T *x, T *v, i64 C, i64 H, i64 W, i64 PH, i64 PW, i64 TH, i64 TW,  \
                         i64 r0, i64 r1, i64 c0, i64 c1)                                          \
{                                                                                                 \
    const i64 tb = (r1 - r0) * TW, CT = C * tb, L = TW + 1;                                       \
    T *buf = (T *)malloc((size_t)(8 * L) * sizeof(T));                                            \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *e[4], *o[4];                                                                               \
    for (int i = 0; i < 4; ++i) {                                                                 \
        e[i] = buf + 2 * i * L;                                                                   \
        o[i] = buf + (2 * i + 1) * L;                                                             \
    }                                                                                             \
    for (i64 c = c0; c < c1; ++c)                                                                 \
        for (i64 R = r0; R < r1; ++R) {                                                           \
            const i64 n = R / TH, ti = R % TH;                                                    \
            const T *plane = x + (n * C + c) * H * W;                                             \
            for (int i = 0; i < 4; ++i) {                                                         \
                const i64 y = 2 * ti - PH + i;                                                    \
                wino_split_##SUFFIX(y >= 0 && y < H ? plane + y * W : NULL, W, PW, L, e[i], o[i]); \
            }                                                                                     \
            /* B^T down the columns: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3 */                  \
            for (int s = 0; s < 2; ++s) {                                                         \
                T *d0 = s ? o[0] : e[0], *d1 = s ? o[1] : e[1];                                   \
                T *d2 = s ? o[2] : e[2], *d3 = s ? o[3] : e[3];                                   \
                for (i64 j = 0; j < L; ++j) {                                                     \
                    T a = d0[j], b = d1[j], cc = d2[j], dd = d3[j];                               \
                    d0[j] = a - cc;                                                               \
                    d1[j] = b + cc;                                                               \
                    d2[j] = cc - b;                                                               \
                    d3[j] = b - dd;                                                               \
                }                                                                                 \
            }                                                                                     \
            /* and B along the rows: columns (e[j], o[j], e[j+1], o[j+1]) of each row */         \
            T *vt = v + c * tb + (R - r0) * TW;                                                   \
            for (int k = 0; k < 4; ++k) {                                                         \
                const T *ek = e[k], *ok = o[k];                                                   \
                T *v0 = vt + (4 * k) * CT, *v1 = v0 + CT, *v2 = v1 + CT, *v3 = v2 + CT;           \
                for (i64 j = 0; j < TW; ++j) {                                                    \
                    v0[j] = ek[j] - ek[j + 1];                                                    \
                    v1[j] = ok[j] + ek[j + 1];                                                    \
                    v2[j] = ek[j + 1] - ok[j];                                                    \
                    v3[j] = ok[j] - ok[j + 1];                                                    \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    free(buf);                                                                                    \
}                                                                                                 \
                                                                                                  \
/* y (N, K, Ho, Wo) = A^T m A (+ bias[k]) for the tiles of rows [r0, r1), m (16, K, tiles) */   \
void wino_output_##SUFFIX(const T *m, T *y, const T *bias, i64 K, i64 Ho, i64 Wo, i64 TH, i64 TW, \
                          i64 r0, i64 r1, i64 k0, i64 k1)                                         \
{                                                                                                 \
    const i64 tb = (r1 - r0) * TW, KT = K * tb;                                                   \
    T *buf = (T *)malloc((size_t)(4 * TW) * sizeof(T));                                           \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *y00 = buf, *y01 = buf + TW, *y10 = buf + 2 * TW, *y11 = buf + 3 * TW;                       \
    for (i64 k = k0; k < k1; ++k) {                                                               \
        const T b = bias ? bias[k] : (T)0;                                                        \
        for (i64 R = r0; R < r1; ++R) {                                                           \
            const i64 n = R / TH, ti = R % TH;                                                    \
            const T *mt = m + k * tb + (R - r0) * TW;                                             \
            for (i64 j = 0; j < TW; ++j) {                                                        \
                T p0[4], p1[4];                                                                   \
                for (int q = 0; q < 4; ++q) {                                                     \
                    T a0 = mt[q * KT + j], a1 = mt[(4 + q) * KT + j];                             \
                    T a2 = mt[(8 + q) * KT + j], a3 = mt[(12 + q) * KT + j];                      \
                    p0[q] = a0 + a1 + a2;                                                         \
                    p1[q] = a1 - a2 - a3;                                                         \
                }                                                                                 \
                T v00 = p0[0] + p0[1] + p0[2], v01 = p0[1] - p0[2] - p0[3];                       \
                T v10 = p1[0] + p1[1] + p1[2], v11 = p1[1] - p1[2] - p1[3];                       \
                if (bias) {                                                                       \
                    v00 += b; v01 += b; v10 += b; v11 += b;                                       \
                }                                                                                 \
                y00[j] = v00; y01[j] = v01; y10[j] = v10; y11[j] = v11;                           \
            }                                                                                     \
            const i64 pairs = Wo / 2;                                                             \
            for (int r = 0; r < 2 && 2 * ti + r < Ho; ++r) {                                      \
                T *row = y + ((n * K + k) * Ho + 2 * ti + r) * Wo;                                \
                const T *ev = r ? y10 : y00, *od = r ? y11 : y01;                                 \
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
/* m (16, K, tiles) = A dy A^T for the tiles of rows [r0, r1) of dy (N, K, Ho, Wo), zeros past  \
   its edge: a top diff as the output transform's adjoint (for the kernel's gradient) */        \
void wino_grad_##SUFFIX(const T *dy, T *m, i64 K, i64 Ho, i64 Wo, i64 TH, i64 TW, i64 r0, i64 r1, \
                        i64 k0, i64 k1)                                                           \
{                                                                                                 \
    const i64 tb = (r1 - r0) * TW, KT = K * tb;                                                   \
    T *buf = (T *)malloc((size_t)(4 * TW) * sizeof(T));                                           \
    if (!buf)                                                                                     \
        return;                                                                                   \
    T *e0 = buf, *o0 = buf + TW, *e1 = buf + 2 * TW, *o1 = buf + 3 * TW;                           \
    for (i64 k = k0; k < k1; ++k)                                                                 \
        for (i64 R = r0; R < r1; ++R) {                                                           \
            const i64 n = R / TH, ti = R % TH;                                                    \
            const T *plane = dy + (n * K + k) * Ho * Wo;                                          \
            wino_split_##SUFFIX(plane + 2 * ti * Wo, Wo, 0, TW, e0, o0);                          \
            wino_split_##SUFFIX(2 * ti + 1 < Ho ? plane + (2 * ti + 1) * Wo : NULL, Wo, 0, TW, e1, o1); \
            T *mt = m + k * tb + (R - r0) * TW;                                                   \
            for (int s = 0; s < 4; ++s) {                                                         \
                /* A down the columns: rows g0, g0 + g1, g0 - g1, -g1 */                         \
                T *q0 = mt + (4 * s) * KT, *q1 = q0 + KT, *q2 = q1 + KT, *q3 = q2 + KT;          \
                for (i64 j = 0; j < TW; ++j) {                                                    \
                    T a, b;                                                                       \
                    if (s == 0) { a = e0[j]; b = o0[j]; }                                         \
                    else if (s == 1) { a = e0[j] + e1[j]; b = o0[j] + o1[j]; }                    \
                    else if (s == 2) { a = e0[j] - e1[j]; b = o0[j] - o1[j]; }                    \
                    else { a = -e1[j]; b = -o1[j]; }                                              \
                    /* and A^T along the rows: (a, a + b, a - b, -b) */                          \
                    q0[j] = a;                                                                    \
                    q1[j] = a + b;                                                                \
                    q2[j] = a - b;                                                                \
                    q3[j] = -b;                                                                   \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    free(buf);                                                                                    \
}

WINOGRAD(float, f32)
WINOGRAD(double, f64)

/* the library's interface version: ckernels.py refuses a stale build */
int protonet_ckernels_version(void) { return 4; }
