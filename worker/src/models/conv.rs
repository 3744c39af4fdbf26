//! cobb's dense 2-D convolution on flex (one group, no bias, dilation 1, f32): the layers of a
//! ResNet and EfficientNet's stem and head.
//!
//! Burn 0.22's flex convolution converts the whole input to NHWC on one thread, builds each
//! im2col tile in a fresh buffer, multiplies into another fresh buffer and scatters that
//! result into the NCHW output one element at a time across channel rows: on ResNet-18 at
//! 224 px the copies and the scatter took about as much time as a third of the arithmetic
//! (perf, docs/benchmarks.md). Here the input is read in place (NCHW), each parallel task
//! (one image) unfolds a tile of output pixels at a time into a buffer it keeps, and the
//! matrix product writes straight into the output rows (`gemm` with the output's row stride).
//! A 1x1 convolution with stride 1 needs no unfolding at all: the input rows are the matrix.
//!
//! The backward pass uses the same unfolding: the weight gradient is, per image and tile, the
//! output gradient `[o, pixels]` times the unfolded tile transposed, summed over images (one
//! accumulator per parallel task); the input gradient is the transposed weight times the
//! output gradient, folded back onto the input plane (the unfolding's adjoint). Burn's own
//! gradients (`conv2d_x_backward`, `conv2d_weight_backward`) go through the same NHWC copies
//! as its forward, and measured slower on a 3x3 convolution (`cobb-bench ops`); a 1x1 stride-1
//! convolution keeps Burn's gradients (two plain matrix products), which measured faster.
//! Any other case (bias, groups, dilation, another dtype or device) is Burn's convolution.

use burn::backend::ops::ModuleOps;
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;
use std::ops::Range;

use super::backend::{FlexOp, Geometry, f32_tensor, f32_values};

/// A `Conv2d` layer's forward pass: cobb's kernel for a square kernel with one group, no
/// bias, dilation 1 and equal padding on every side; the layer's own `forward` otherwise.
pub fn forward(layer: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    use burn::nn::PaddingConfig2d;
    let padding = match layer.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == left && top == bottom && top == right => Some(top),
        PaddingConfig2d::Valid => Some(0),
        _ => None,
    };
    let [kh, kw] = layer.kernel_size;
    match padding {
        Some(padding)
            if layer.groups == 1 && layer.bias.is_none() && layer.dilation == [1, 1] && kh == kw && layer.stride[0] == layer.stride[1] =>
        {
            conv2d(x, layer.weight.val(), Geometry { stride: layer.stride[0], padding })
        }
        _ => layer.forward(x),
    }
}

/// `conv2d(x, weight)` with one group and no bias: cobb's kernel on flex (with or without
/// autodiff), Burn's convolution anywhere else.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, geometry: Geometry) -> Tensor<4> {
    let burns = |x: Tensor<4>, weight: Tensor<4>| burn::tensor::module::conv2d(x, weight, None, geometry.options(1));
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return burns(x, weight);
    }
    let op = FlexOp { forward: flex_conv2d, input_grad: flex_conv2d_x_backward, weight_grad: flex_conv2d_weight_backward };
    op.apply(x, weight, geometry, burns)
}

/// The shapes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    out_h: usize,
    out_w: usize,
    geometry: Geometry,
}

impl Shapes {
    fn of(x: &FlexTensor, weight: &FlexTensor, geometry: Geometry) -> Option<Self> {
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || xs.num_dims() != 4 || ws.num_dims() != 4 {
            return None;
        }
        let (n, c, h, w, o, kh, kw) = (xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3]);
        let Geometry { stride, padding } = geometry;
        if ws[1] != c || stride == 0 || kh == 0 || kw == 0 || h + 2 * padding < kh || w + 2 * padding < kw || n * c * h * w == 0 {
            return None;
        }
        let (out_h, out_w) = (geometry.out_len(h, kh), geometry.out_len(w, kw));
        Some(Self { n, c, h, w, o, kh, kw, out_h, out_w, geometry })
    }

    /// The shapes of a convolution whose gradients cobb computes (not a 1x1 stride-1 one,
    /// whose gradients stay Burn's), with an output gradient of the output's size.
    fn of_gradients(x: &FlexTensor, weight: &FlexTensor, grad: &FlexTensor, geometry: Geometry) -> Option<Self> {
        Self::of(x, weight, geometry)
            .filter(|s| !s.pointwise() && grad.dtype() == DType::F32 && grad.layout().shape().num_elements() == s.n * s.o * s.pixels())
    }

    fn pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Rows of the unfolded input: one per input channel and kernel tap.
    fn depth(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// A 1x1 convolution with stride 1 and no padding: the input plane is the matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.geometry.stride == 1 && self.geometry.padding == 0
    }

    /// Output pixels per matrix product: the unfolded tile (depth x pixels) stays near 1 MiB
    /// (256 Ki and 4 Mi floats were no faster on ResNet-18 at 224 px).
    fn tile(&self) -> usize {
        const TILE_FLOATS: usize = 1 << 18;
        (TILE_FLOATS / self.depth()).clamp(64, 2048).min(self.pixels())
    }

    /// Walks the unfolded rows of output pixels `first..first + len`: for each channel `c` and
    /// kernel tap `(i, j)` (unfolded row `(c * kh + i) * kw + j`) and each run of those pixels
    /// on one output row, calls `f(row, run, inside, at)`: `run` is the run's columns in the
    /// unfolded row, `inside` the part of it that reads the image (empty where the tap is in
    /// the padding) and `at` the image offset (`[C, H, W]`) that `inside.start` reads, the
    /// following ones `stride` apart.
    fn each_run(&self, first: usize, len: usize, mut f: impl FnMut(usize, Range<usize>, Range<usize>, usize)) {
        let Geometry { stride, padding } = self.geometry;
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = (c * self.kh + i) * self.kw + j;
                    // Output columns x with 0 <= x * stride + j - padding < w.
                    let lo = if j >= padding { 0 } else { (padding - j).div_ceil(stride) };
                    let hi = if self.w + padding > j { (self.w + padding - j - 1) / stride + 1 } else { 0 };
                    let mut done = 0;
                    while done < len {
                        let p = first + done;
                        let (y, x0) = (p / self.out_w, p % self.out_w);
                        let n = (self.out_w - x0).min(len - done);
                        let run = done..done + n;
                        done += n;
                        let in_y = (y * stride + i) as isize - padding as isize;
                        let (a, b) = (lo.clamp(x0, x0 + n), hi.clamp(x0, x0 + n));
                        if in_y < 0 || in_y >= self.h as isize || b <= a {
                            f(row, run.clone(), run.start..run.start, 0);
                            continue;
                        }
                        let at = (c * self.h + in_y as usize) * self.w + a * stride + j - padding;
                        f(row, run.clone(), run.start + a - x0..run.start + b - x0, at);
                    }
                }
            }
        }
    }

    /// Unfolds output pixels `first..first + cols.len() / depth` of `image` (`[C, H, W]`) into
    /// `cols` (`[depth, pixels]`, row-major): row `(c, i, j)` holds, for each pixel, the input
    /// value under kernel tap `(i, j)` of channel `c`, or 0 in the padding.
    fn unfold(&self, image: &[f32], first: usize, cols: &mut [f32]) {
        let (len, stride) = (cols.len() / self.depth(), self.geometry.stride);
        self.each_run(first, len, |row, run, inside, at| {
            let row = &mut cols[row * len..][..len];
            row[run.start..inside.start].fill(0.0);
            row[inside.end..run.end].fill(0.0);
            let dst = &mut row[inside];
            if stride == 1 {
                dst.copy_from_slice(&image[at..at + dst.len()]);
            } else {
                for (d, &v) in dst.iter_mut().zip(image[at..].iter().step_by(stride)) {
                    *d = v;
                }
            }
        });
    }

    /// The adjoint of [`Shapes::unfold`]: adds each value of `cols` (`[depth, pixels]` for
    /// output pixels `first..`) onto the input position it was read from in `image`
    /// (`[C, H, W]`); values that came from the padding are dropped.
    fn fold(&self, cols: &[f32], first: usize, image: &mut [f32]) {
        let (len, stride) = (cols.len() / self.depth(), self.geometry.stride);
        self.each_run(first, len, |row, _, inside, at| {
            let src = &cols[row * len..][inside];
            if stride == 1 {
                for (d, &v) in image[at..at + src.len()].iter_mut().zip(src) {
                    *d += v;
                }
            } else {
                for (d, &v) in image[at..].iter_mut().step_by(stride).zip(src) {
                    *d += v;
                }
            }
        });
    }
}

/// `dst[m, n] (+)= sum_k lhs[m, k] * rhs[k, n]` with the given (row, column) strides, on one
/// thread: `accumulate` adds to what `dst` holds, otherwise overwrites it.
///
/// # Safety
/// Every element addressed through the three pointers and their strides over `m x k`,
/// `k x n` and `m x n` must be inside its buffer, `dst`'s elements distinct and not
/// overlapping the other two.
#[allow(unsafe_code)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The weight's gradient: `dW [o, depth] = sum over images and tiles of grad [o, len] x
/// cols [depth, len]^T`, in parallel over images (one accumulator per task, summed at the end).
#[allow(unsafe_code)]
fn flex_conv2d_weight_backward(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, geometry: Geometry) -> FlexTensor {
    let Some(s) = Shapes::of_gradients(&x, &weight, &grad, geometry) else {
        return Flex::conv2d_weight_backward(x, weight, grad, geometry.options(1));
    };
    let (pixels, depth, tile) = (s.pixels(), s.depth(), s.tile());
    let (xv, gv) = (f32_values(&x), f32_values(&grad));
    let sum = xv
        .par_chunks(s.c * s.h * s.w)
        .zip(gv.par_chunks(s.o * pixels))
        .fold(
            || (vec![0.0f32; s.o * depth], Vec::new()),
            |(mut dw, mut cols): (Vec<f32>, Vec<f32>), (image, g)| {
                for first in (0..pixels).step_by(tile) {
                    let len = tile.min(pixels - first);
                    cols.resize(depth * len, 0.0);
                    s.unfold(image, first, &mut cols[..depth * len]);
                    // SAFETY: `dw` is `[o, depth]` row-major, this task's own; `g` is this
                    // image's `[o, pixels]` gradient, read at columns first..first + len; the
                    // unfolded tile `[depth, len]` is read transposed, as `[len, depth]` (row
                    // `p`, column `r` at `r * len + p`).
                    unsafe {
                        product(
                            (s.o, depth, len),
                            (dw.as_mut_ptr(), depth as isize, 1),
                            (g[first..].as_ptr(), pixels as isize, 1),
                            (cols.as_ptr(), 1, len as isize),
                            true,
                        );
                    }
                }
                (dw, cols)
            },
        )
        .map(|(dw, _)| dw)
        .reduce(
            || vec![0.0f32; s.o * depth],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    f32_tensor(sum, Shape::new([s.o, s.c, s.kh, s.kw]))
}

/// The input's gradient: per image and tile, `dcols [depth, len] = W^T [depth, o] x grad
/// [o, len]`, folded back onto the image, in parallel over images. A 1x1 stride-1
/// convolution's gradients stay Burn's (two plain matrix products, which measured faster
/// than these per-image ones: `cobb-bench ops`).
#[allow(unsafe_code)]
fn flex_conv2d_x_backward(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, geometry: Geometry) -> FlexTensor {
    let Some(s) = Shapes::of_gradients(&x, &weight, &grad, geometry) else {
        return Flex::conv2d_x_backward(x, weight, grad, geometry.options(1));
    };
    let (pixels, depth, tile) = (s.pixels(), s.depth(), s.tile());
    let (wv, gv) = (f32_values(&weight), f32_values(&grad));
    let mut dx = vec![0.0f32; s.n * s.c * s.h * s.w];
    dx.par_chunks_mut(s.c * s.h * s.w).zip(gv.par_chunks(s.o * pixels)).for_each_init(Vec::new, |cols: &mut Vec<f32>, (image, g)| {
        for first in (0..pixels).step_by(tile) {
            let len = tile.min(pixels - first);
            cols.resize(depth * len, 0.0);
            // SAFETY: `cols` is `[depth, len]`, this task's own; the weight `[o, depth]` is read
            // transposed, as `[depth, o]`; `g` is this image's `[o, pixels]` gradient, read at
            // columns first..first + len.
            unsafe {
                product(
                    (depth, len, s.o),
                    (cols.as_mut_ptr(), len as isize, 1),
                    (wv.as_ptr(), 1, depth as isize),
                    (g[first..].as_ptr(), pixels as isize, 1),
                    false,
                )
            };
            s.fold(&cols[..depth * len], first, image);
        }
    });
    f32_tensor(dx, Shape::new([s.n, s.c, s.h, s.w]))
}

/// The convolution on flex, in parallel over images: each task unfolds one image a tile of
/// output pixels at a time into a buffer it keeps and multiplies straight into that image's
/// output rows.
#[allow(unsafe_code)]
fn flex_conv2d(x: FlexTensor, weight: FlexTensor, geometry: Geometry) -> FlexTensor {
    let Some(s) = Shapes::of(&x, &weight, geometry) else {
        return Flex::conv2d(x, weight, None, geometry.options(1));
    };
    let (xv, wv) = (f32_values(&x), f32_values(&weight));
    let (pixels, depth, tile) = (s.pixels(), s.depth(), s.tile());
    let mut out = vec![0.0f32; s.n * s.o * pixels];
    out.par_chunks_mut(s.o * pixels).zip(xv.par_chunks(s.c * s.h * s.w)).for_each_init(Vec::new, |cols: &mut Vec<f32>, (dst, image)| {
        for first in (0..pixels).step_by(tile) {
            let len = tile.min(pixels - first);
            // The right-hand matrix `[depth, len]` and its row stride.
            let (rhs, rhs_rs) = if s.pointwise() {
                (image[first..].as_ptr(), pixels)
            } else {
                cols.resize(depth * len, 0.0);
                s.unfold(image, first, &mut cols[..depth * len]);
                (cols.as_ptr(), len)
            };
            // SAFETY: `dst` is this image's `[o, pixels]` output; the product writes rows
            // 0..o, columns first..first + len (row stride `pixels`), all inside it.
            // `weight` is `[o, depth]` row-major; `rhs` has `depth` rows of `len` readable
            // elements at stride `rhs_rs` (the unfolded tile, or the image's `[c, pixels]`
            // plane from column `first`). The three buffers do not overlap.
            unsafe {
                product(
                    (s.o, len, depth),
                    (dst.as_mut_ptr().add(first), pixels as isize, 1),
                    (wv.as_ptr(), depth as isize, 1),
                    (rhs, rhs_rs as isize, 1),
                    false,
                )
            };
        }
    });
    f32_tensor(out, Shape::new([s.n, s.o, s.out_h, s.out_w]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Shapes of every kind the models use: 3x3 stride 1 and 2, 7x7 stride 2 (the ResNet
    /// stem), 1x1 stride 1 (no unfolding) and 2 (ResNet's downsample), odd sizes, a tile
    /// boundary inside an output row, and one input channel.
    const CASES: [([usize; 4], usize, usize, usize, usize); 7] = [
        ([2, 5, 9, 11], 7, 3, 1, 1),
        ([2, 4, 10, 9], 6, 3, 2, 1),
        ([1, 1, 23, 19], 8, 7, 2, 3),
        ([3, 6, 7, 8], 5, 1, 1, 0),
        ([2, 6, 9, 9], 4, 1, 2, 0),
        ([1, 3, 40, 41], 4, 3, 1, 1),
        ([2, 3, 5, 5], 2, 5, 1, 0),
    ];

    #[test]
    fn the_kernel_matches_burns_convolution() {
        let device = Device::flex();
        for (shape, out, k, stride, padding) in CASES {
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<4>::random([out, shape[1], k, k], Distribution::Normal(0.0, 0.5), &device);
            let geometry = Geometry { stride, padding };
            let xp = x.clone().try_into_primitive::<Flex>().expect("on flex");
            let wp = w.clone().try_into_primitive::<Flex>().expect("on flex");
            assert!(Shapes::of(&xp, &wp, geometry).is_some(), "cobb's kernel takes {shape:?} k{k}");
            let ours = conv2d(x.clone(), w.clone(), geometry);
            let burns = burn::tensor::module::conv2d(x, w, None, geometry.options(1));
            assert_eq!(ours.dims(), burns.dims(), "{shape:?} k{k} s{stride} p{padding}");
            let diff = max_diff(&values(ours), &values(burns));
            assert!(diff < 1e-4, "{shape:?} k{k} s{stride} p{padding}: {diff}");
        }
    }

    #[test]
    fn the_gradients_match_burns() {
        for (shape, out, k, stride, padding) in CASES {
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex());
            let w = Tensor::<4>::random([out, shape[1], k, k], Distribution::Normal(0.0, 0.5), &Device::flex());
            let geometry = Geometry { stride, padding };
            let run = |ours: bool| {
                let (x, w) = (x.clone().autodiff().require_grad(), w.clone().autodiff().require_grad());
                let y = if ours {
                    conv2d(x.clone(), w.clone(), geometry)
                } else {
                    burn::tensor::module::conv2d(x.clone(), w.clone(), None, geometry.options(1))
                };
                let target = Tensor::<4>::ones(y.dims(), &y.device()) * 0.5;
                let grads = (y.clone() * y.clone() * target).sum().backward();
                (values(y.inner()), values(x.grad(&grads).expect("dx")), values(w.grad(&grads).expect("dw")))
            };
            let ((y1, dx1, dw1), (y2, dx2, dw2)) = (run(true), run(false));
            let case = format!("{shape:?} k{k} s{stride} p{padding}");
            assert!(max_diff(&y1, &y2) < 1e-4, "forward {case}");
            for (name, a, b) in [("input", dx1, dx2), ("weight", dw1, dw2)] {
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let diff = max_diff(&a, &b) / scale;
                assert!(diff < 1e-5, "{name} gradient {case}: {diff}");
            }
        }
    }
}
