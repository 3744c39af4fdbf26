//! Operations cobb runs on Burn's CPU backend (flex) as one kernel with its own backward
//! pass instead of Burn's generic composition, where they are measurably faster
//! (`cobb-bench ops`, docs/benchmarks.md):
//!
//! - `silu(x) = x * sigmoid(x)` is, in Burn, a sigmoid and a multiply: on flex a
//!   single-threaded scalar `expf` loop and, in the backward pass, a recomputed sigmoid and
//!   three more element-wise passes (about a fifth of an EfficientNet step). Here it is one
//!   parallel, vectorised pass forward and one backward.
//! - Depthwise convolution (groups = channels): Burn's backward computes the input gradient as
//!   a grouped transposed convolution and the weight gradient through copied views. Here both
//!   are direct loops over each channel's plane, in parallel over planes, with a fixed
//!   summation order (bit-reproducible). The forward pass is cobb's too, on a zero-padded copy
//!   of each plane so that every tap is a contiguous multiply-add.
//! - The loops are compiled for AVX2 and FMA as well as for the baseline and chosen at run
//!   time ([`vectorised`]): the release binary targets plain x86-64.
//!
//! Burn 0.22 tensors carry no backend type: [`silu`] and [`depthwise_conv2d`] look at the
//! tensor's device and take the flex kernel (with or without autodiff), or Burn's own ops on
//! any other device (CUDA, where Burn's fusion and autotune do this work). Tests compare the
//! kernels with Burn's ops, forward and backward.

use burn::backend::ops::ModuleOps;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;
use burn_autodiff::Autodiff;
use burn_autodiff::NodeId;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, binary, unary};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

/// Flex with autodiff (no gradient checkpointing: what `Device::flex().autodiff()` is).
pub(super) type AdFlex = Autodiff<Flex>;
pub(super) type AdTensor = <AdFlex as burn::backend::BackendTypes>::FloatTensorPrimitive;

/// Whether a tensor on `device` lives on flex, with or without autodiff.
pub(super) fn on_flex(device: &Device) -> bool {
    device.clone().inner() == Device::flex()
}

/// `x * sigmoid(x)`: cobb's kernel on flex, Burn's composition elsewhere.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() != DType::F32 {
        return burn::tensor::activation::silu(x);
    }
    if !on_flex(&x.device()) {
        return burn::tensor::activation::silu(x);
    }
    let converted = if x.is_autodiff() {
        x.clone().try_into_primitive::<AdFlex>().map(|p| Tensor::from_primitive::<AdFlex>(autodiff_silu(p)))
    } else {
        x.clone().try_into_primitive::<Flex>().map(|p| Tensor::from_primitive::<Flex>(flex_silu(p)))
    };
    converted.unwrap_or_else(|_| burn::tensor::activation::silu(x))
}

/// Depthwise convolution: `x` `[N, C, H, W]`, `weight` `[C, 1, K, K]` (a `Conv2d` with
/// `groups = C`), no bias. On flex cobb's forward kernel (stride 1 or 2) and, with autodiff,
/// cobb's gradient kernels; Burn's grouped convolution anywhere else.
pub fn depthwise_conv2d(x: Tensor<4>, weight: Tensor<4>, geometry: Geometry) -> Tensor<4> {
    let channels = weight.dims()[0];
    let composed = |x: Tensor<4>, weight: Tensor<4>| {
        let options = geometry.options(channels);
        burn::tensor::module::conv2d(x, weight, None, options)
    };
    let op = FlexOp { forward: depthwise_forward, input_grad: depthwise_x_backward, weight_grad: depthwise_weight_backward };
    op.apply(x, weight, geometry, composed)
}

/// An operation of an input and a weight that cobb runs on flex as one kernel forward and two
/// backward (input and weight gradient), for a geometry `G`.
#[derive(Debug, Clone, Copy)]
pub(super) struct FlexOp<G> {
    pub forward: fn(FlexTensor, FlexTensor, G) -> FlexTensor,
    /// `(x, weight, output gradient, geometry)` -> the gradient of `x`.
    pub input_grad: fn(FlexTensor, FlexTensor, FlexTensor, G) -> FlexTensor,
    /// `(x, weight, output gradient, geometry)` -> the gradient of `weight`.
    pub weight_grad: fn(FlexTensor, FlexTensor, FlexTensor, G) -> FlexTensor,
}

impl<G: Copy + Send + Sync + std::fmt::Debug + 'static> FlexOp<G> {
    /// `op(x, weight)`: the kernels on flex, with autodiff as one tracked operation whose
    /// backward pass runs the two gradient kernels; `other` on any other device (or when a
    /// tensor is not a flex primitive).
    pub fn apply(self, x: Tensor<4>, weight: Tensor<4>, geometry: G, other: impl FnOnce(Tensor<4>, Tensor<4>) -> Tensor<4>) -> Tensor<4> {
        if !on_flex(&x.device()) || !on_flex(&weight.device()) {
            return other(x, weight);
        }
        if x.is_autodiff() {
            match (x.clone().try_into_primitive::<AdFlex>(), weight.clone().try_into_primitive::<AdFlex>()) {
                (Ok(xp), Ok(wp)) => Tensor::from_primitive::<AdFlex>(self.tracked(xp, wp, geometry)),
                _ => other(x, weight),
            }
        } else {
            match (x.clone().try_into_primitive::<Flex>(), weight.clone().try_into_primitive::<Flex>()) {
                (Ok(xp), Ok(wp)) => Tensor::from_primitive::<Flex>((self.forward)(xp, wp, geometry)),
                _ => other(x, weight),
            }
        }
    }

    fn tracked(self, x: AdTensor, weight: AdTensor, geometry: G) -> AdTensor {
        #[derive(Debug)]
        struct Tracked<G>(FlexOp<G>);

        impl<G: Copy + Send + Sync + std::fmt::Debug + 'static> Backward<Flex, 2> for Tracked<G> {
            /// The input's and the weight's nodes, and the geometry.
            type State = (NodeId, NodeId, G);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let (x, weight, geometry) = ops.state;
                let x: FlexTensor = checkpointer.retrieve_node_output(x);
                let weight: FlexTensor = checkpointer.retrieve_node_output(weight);
                let (x_for_weight, weight_for_x) = (x.clone(), weight.clone());
                let op = self.0;
                binary::<Flex, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    move |grad| (op.input_grad)(x, weight_for_x, grad, geometry),
                    move |grad| (op.weight_grad)(x_for_weight, weight, grad, geometry),
                );
            }
        }

        match Tracked(self)
            .prepare::<burn_autodiff::checkpoint::strategy::NoCheckpointing>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), geometry);
                let ((xp, _gx), (wp, _gw)) = (x.into_parts(), weight.into_parts());
                prep.finish(state, (self.forward)(xp, wp, geometry))
            }
            OpsKind::UnTracked(prep) => {
                let ((xp, _gx), (wp, _gw)) = (x.into_parts(), weight.into_parts());
                prep.finish((self.forward)(xp, wp, geometry))
            }
        }
    }
}

/// The depthwise convolution on flex: per plane, in parallel over planes. Each plane is first
/// copied into a zero-padded buffer (for stride 2, split into its even and odd columns), so
/// that every kernel tap is a contiguous multiply-add along an output row, vectorised with
/// AVX2 and FMA where the CPU has them. Burn's own forward walks stride-2 rows one element at
/// a time and short rows with 4-lane vectors: it was about a third of an EfficientNet-B0
/// evaluation (perf, docs/benchmarks.md).
fn depthwise_forward(x: FlexTensor, weight: FlexTensor, geometry: Geometry) -> FlexTensor {
    let Some(planes) = Planes::of(&x, &weight, geometry).filter(|p| p.geometry.stride <= 2 && p.k <= 7) else {
        let options = geometry.options(weight.layout().shape()[0]);
        return Flex::conv2d(x, weight, None, options);
    };
    let (xv, wv) = (f32_values(&x), f32_values(&weight));
    let (out_len, in_len) = (planes.out_h * planes.out_w, planes.h * planes.w);
    let mut out = vec![0.0f32; planes.n * planes.c * out_len];
    let per_task = (CHUNK / in_len.max(1)).max(1);
    thread_local! {
        /// Each thread's padded plane, and the (height, width, padding, stride) it was laid
        /// out for.
        static SCRATCH: std::cell::RefCell<(Vec<f32>, [usize; 4])> = const { std::cell::RefCell::new((Vec::new(), [0; 4])) };
    }
    let layout = [planes.h, planes.w, geometry.padding, geometry.stride];
    out.par_chunks_mut(per_task * out_len).enumerate().for_each(|(task, out)| {
        SCRATCH.with_borrow_mut(|(scratch, laid_out)| {
            // Every plane of this geometry writes the same interior positions, so the padding
            // stays zero between planes (and calls): clear the buffer only for another one.
            if *laid_out != layout {
                scratch.clear();
                *laid_out = layout;
            }
            for (k, out) in out.chunks_mut(out_len).enumerate() {
                let plane = task * per_task + k;
                let input = planes.input(&xv, plane);
                let kernel = planes.kernel(&wv, plane % planes.c);
                vectorised(DepthwisePlane { planes: &planes, input, kernel, out, scratch: &mut *scratch });
            }
        })
    });
    f32_tensor(out, Shape::new([planes.n, planes.c, planes.out_h, planes.out_w]))
}

/// The sums over a depthwise kernel's taps at output columns `x..x + N` of one output row,
/// kept in registers (N = 8 fills an AVX2 vector): `rows` are the k padded input rows under
/// the kernel, `start(j)` the offset of tap column j in them.
#[inline(always)]
fn taps<const FMA: bool, const N: usize>(rows: &[&[f32]], weights: &[f32], start: impl Fn(usize) -> usize, x: usize) -> [f32; N] {
    let k = rows.len();
    let mut acc = [0.0f32; N];
    for (i, row) in rows.iter().enumerate() {
        for j in 0..k {
            let w = weights[i * k + j];
            let src: &[f32; N] = row[start(j) + x..][..N].try_into().expect("N columns");
            for l in 0..N {
                acc[l] = madd::<FMA>(w, src[l], acc[l]);
            }
        }
    }
    acc
}

/// One output row of a depthwise convolution in blocks of N columns (`out.len() >= N`); the
/// last block overlaps the one before when the width is not a multiple of N (it recomputes
/// the same sums).
#[inline(always)]
fn blocks<const FMA: bool, const N: usize>(rows: &[&[f32]], weights: &[f32], start: impl Fn(usize) -> usize + Copy, out: &mut [f32]) {
    let width = out.len();
    let mut x = 0;
    loop {
        let at = x.min(width - N);
        out[at..at + N].copy_from_slice(&taps::<FMA, N>(rows, weights, start, at));
        if at == width - N {
            break;
        }
        x += N;
    }
}

/// One plane of [`depthwise_forward`].
struct DepthwisePlane<'a> {
    planes: &'a Planes,
    input: &'a [f32],
    kernel: &'a [f32],
    out: &'a mut [f32],
    scratch: &'a mut Vec<f32>,
}

impl Kernel for DepthwisePlane<'_> {
    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let Planes { h, w, k, out_h, out_w, geometry, .. } = *self.planes;
        let Geometry { stride, padding } = geometry;
        let (ph, pw) = (h + 2 * padding, w + 2 * padding);
        // Padded rows; for stride 2 the even columns then the odd ones, each `half` wide.
        let half = pw.div_ceil(2);
        let row_len = if stride == 1 { pw } else { 2 * half };
        // An empty buffer (another geometry before) is laid out with zero padding; otherwise
        // only the interior is rewritten.
        if self.scratch.len() != ph * row_len {
            self.scratch.clear();
            self.scratch.resize(ph * row_len, 0.0);
        }
        for (y, line) in self.input.chunks(w).enumerate() {
            let row = &mut self.scratch[(y + padding) * row_len..][..row_len];
            if stride == 1 {
                row[padding..padding + w].copy_from_slice(line);
            } else {
                for (x, &v) in line.iter().enumerate() {
                    let col = x + padding;
                    row[(col % 2) * half + col / 2] = v;
                }
            }
        }
        let padded = &self.scratch[..];
        // Output column x reads padded column x * stride + j: in the stride-2 layout, column
        // x + j / 2 of the even (j even) or odd (j odd) half.
        let start = |j: usize| if stride == 1 { j } else { (j % 2) * half + j / 2 };
        let weights = self.kernel;
        let mut rows: [&[f32]; 7] = [&[]; 7];
        for (y, out) in self.out.chunks_mut(out_w).enumerate().take(out_h) {
            for (i, row) in rows.iter_mut().enumerate().take(k) {
                *row = &padded[(y * stride + i) * row_len..][..row_len];
            }
            let rows = &rows[..k];
            if out_w >= 8 {
                blocks::<FMA, 8>(rows, weights, start, out);
            } else if out_w >= 4 {
                // EfficientNet's last stages are 7 pixels wide: two overlapping blocks of 4.
                blocks::<FMA, 4>(rows, weights, start, out);
            } else {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = taps::<FMA, 1>(rows, weights, start, x)[0];
                }
            }
        }
    }
}

fn autodiff_silu(x: AdTensor) -> AdTensor {
    #[derive(Debug)]
    struct Silu;

    impl Backward<Flex, 1> for Silu {
        /// The input's node: the backward pass recomputes the sigmoid from it.
        type State = NodeId;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let input: FlexTensor = checkpointer.retrieve_node_output(ops.state);
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| flex_silu_backward(input, grad));
        }
    }

    match Silu.prepare::<burn_autodiff::checkpoint::strategy::NoCheckpointing>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            let (primitive, _guard) = x.into_parts();
            prep.finish(state, flex_silu(primitive))
        }
        OpsKind::UnTracked(prep) => {
            let (primitive, _guard) = x.into_parts();
            prep.finish(flex_silu(primitive))
        }
    }
}

fn flex_silu(x: FlexTensor) -> FlexTensor {
    struct Silu<'a>(&'a mut [f32], &'a [f32]);
    impl Kernel for Silu<'_> {
        #[inline(always)]
        fn run<const FMA: bool>(self) {
            for (o, &v) in self.0.iter_mut().zip(self.1) {
                *o = v * sigmoid(v);
            }
        }
    }
    let values = f32_values(&x);
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(CHUNK).zip(values.par_chunks(CHUNK)).for_each(|(out, x)| vectorised(Silu(out, x)));
    f32_tensor(out, x.layout().shape().clone())
}

/// `grad * s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
fn flex_silu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let (input, g) = (f32_values(&x), f32_values(&grad));
    let mut out = vec![0.0f32; input.len()];
    struct SiluBackward<'a>(&'a mut [f32], &'a [f32], &'a [f32]);
    impl Kernel for SiluBackward<'_> {
        #[inline(always)]
        fn run<const FMA: bool>(self) {
            for ((o, &x), &g) in self.0.iter_mut().zip(self.1).zip(self.2) {
                let s = sigmoid(x);
                *o = g * s * (1.0 + x * (1.0 - s));
            }
        }
    }
    out.par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((out, x), g)| vectorised(SiluBackward(out, x, g)));
    f32_tensor(out, x.layout().shape().clone())
}

/// The input gradient. At stride 1 it is itself a depthwise convolution: the output gradient,
/// padded by `k - 1 - padding`, convolved with each kernel turned by 180 degrees, so it runs
/// on [`depthwise_forward`]'s register-blocked kernel instead of one short multiply-add per
/// tap and row.
fn depthwise_x_backward(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, geometry: Geometry) -> FlexTensor {
    let Some(planes) = Planes::of(&x, &weight, geometry) else {
        let options = geometry.options(weight.layout().shape()[0]);
        return Flex::conv2d_x_backward(x, weight, grad, options);
    };
    if geometry.stride == 1 && geometry.padding < planes.k {
        let mut turned = f32_values(&weight).into_owned();
        // Reversing a kernel's k*k taps in row-major order flips both of its axes.
        turned.chunks_mut(planes.k * planes.k).for_each(<[f32]>::reverse);
        let turned = f32_tensor(turned, weight.layout().shape().clone());
        return depthwise_forward(grad, turned, Geometry { stride: 1, padding: planes.k - 1 - geometry.padding });
    }
    let (weight, grad) = (f32_values(&weight), f32_values(&grad));
    let mut dx = vec![0.0f32; planes.n * planes.c * planes.h * planes.w];
    dx.par_chunks_mut(planes.h * planes.w).enumerate().for_each(|(plane, dx)| {
        planes.input_grad(planes.output(&grad, plane), planes.kernel(&weight, plane % planes.c), dx);
    });
    f32_tensor(dx, Shape::new([planes.n, planes.c, planes.h, planes.w]))
}

fn depthwise_weight_backward(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, geometry: Geometry) -> FlexTensor {
    let Some(planes) = Planes::of(&x, &weight, geometry) else {
        let options = geometry.options(weight.layout().shape()[0]);
        return Flex::conv2d_weight_backward(x, weight, grad, options);
    };
    let (x, grad) = (f32_values(&x), f32_values(&grad));
    let taps = planes.k * planes.k;
    let mut dw = vec![0.0f32; planes.c * taps];
    let padded = planes.geometry.stride == 1 && matches!(planes.k, 3 | 5);
    dw.par_chunks_mut(taps).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(x_pad, g_pad), (channel, dw)| {
            for sample in 0..planes.n {
                let plane = sample * planes.c + channel;
                let (x, grad) = (planes.input(&x, plane), planes.output(&grad, plane));
                if padded {
                    planes.weight_grad_padded(x, grad, dw, x_pad, g_pad);
                } else {
                    planes.weight_grad(x, grad, dw);
                }
            }
        },
    );
    f32_tensor(dw, Shape::new([planes.c, 1, planes.k, planes.k]))
}

/// Stride and symmetric padding of a square-kernel convolution (depthwise here, dense in
/// super::conv); dilation 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub stride: usize,
    pub padding: usize,
}

impl Geometry {
    /// Burn's options for the same convolution in `groups` groups.
    pub(super) fn options(self, groups: usize) -> ConvOptions<2> {
        ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], groups)
    }

    /// Output length along an axis of `input` elements for kernel size `k`.
    pub(super) fn out_len(self, input: usize, k: usize) -> usize {
        (input + 2 * self.padding - k) / self.stride + 1
    }

    /// The outputs `o` whose tap `t` reads an input inside `0..input`: `o * stride + t -
    /// padding` in range.
    fn span(self, t: usize, input: usize, outputs: usize) -> std::ops::Range<usize> {
        let (s, p) = (self.stride, self.padding);
        let lo = if t >= p { 0 } else { (p - t).div_ceil(s) };
        let hi = if input + p > t { ((input + p - t - 1) / s + 1).min(outputs) } else { 0 };
        lo..hi.max(lo)
    }
}

/// The geometry of one depthwise convolution on flex, for the per-plane loops.
#[derive(Debug, Clone, Copy)]
struct Planes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    out_h: usize,
    out_w: usize,
    geometry: Geometry,
}

impl Planes {
    /// `None` (Burn's generic path) unless f32 with a `[C, 1, K, K]` weight matching `x`.
    fn of(x: &FlexTensor, weight: &FlexTensor, geometry: Geometry) -> Option<Self> {
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || xs.num_dims() != 4 || ws.num_dims() != 4 {
            return None;
        }
        let (n, c, h, w, k) = (xs[0], xs[1], xs[2], xs[3], ws[2]);
        if ws[0] != c
            || ws[1] != 1
            || ws[3] != k
            || k == 0
            || geometry.stride == 0
            || h + 2 * geometry.padding < k
            || w + 2 * geometry.padding < k
        {
            return None;
        }
        Some(Self { n, c, h, w, k, out_h: geometry.out_len(h, k), out_w: geometry.out_len(w, k), geometry })
    }

    fn input<'a>(&self, x: &'a [f32], plane: usize) -> &'a [f32] {
        &x[plane * self.h * self.w..][..self.h * self.w]
    }

    fn output<'a>(&self, y: &'a [f32], plane: usize) -> &'a [f32] {
        &y[plane * self.out_h * self.out_w..][..self.out_h * self.out_w]
    }

    fn kernel<'a>(&self, weight: &'a [f32], channel: usize) -> &'a [f32] {
        &weight[channel * self.k * self.k..][..self.k * self.k]
    }

    /// Calls `f(tap_row, tap_col, output_row, input_row, columns)` for every kernel tap and
    /// output row whose input row is inside the image; `columns` are the output columns whose
    /// input column is inside too. Input coordinates are `output * stride + tap - padding`.
    fn each_tap(&self, mut f: impl FnMut(usize, usize, usize, usize, std::ops::Range<usize>)) {
        let Geometry { stride, padding } = self.geometry;
        for i in 0..self.k {
            for out_row in self.geometry.span(i, self.h, self.out_h) {
                let in_row = out_row * stride + i - padding;
                for j in 0..self.k {
                    let cols = self.geometry.span(j, self.w, self.out_w);
                    if !cols.is_empty() {
                        f(i, j, out_row, in_row, cols);
                    }
                }
            }
        }
    }

    /// `dx += conv_transpose(grad, kernel)` for one plane.
    fn input_grad(&self, grad: &[f32], kernel: &[f32], dx: &mut [f32]) {
        let Geometry { stride, padding } = self.geometry;
        self.each_tap(|i, j, out_row, in_row, cols| {
            let weight = kernel[i * self.k + j];
            let grad = &grad[out_row * self.out_w..][cols.clone()];
            let dx = &mut dx[in_row * self.w..][..self.w];
            let first = cols.start * stride + j - padding;
            if stride == 1 {
                for (d, &g) in dx[first..first + cols.len()].iter_mut().zip(grad) {
                    *d += weight * g;
                }
            } else {
                for (d, &g) in dx[first..].iter_mut().step_by(stride).zip(grad) {
                    *d += weight * g;
                }
            }
        });
    }

    /// `dw[tap] += sum over outputs of grad * x` for one plane. Eight partial sums per tap,
    /// in a fixed order, so the loop vectorises and the result is the same on every run.
    fn weight_grad(&self, x: &[f32], grad: &[f32], dw: &mut [f32]) {
        let Geometry { stride, padding } = self.geometry;
        self.each_tap(|i, j, out_row, in_row, cols| {
            let grad = &grad[out_row * self.out_w..][cols.clone()];
            let x = &x[in_row * self.w..][..self.w];
            let first = cols.start * stride + j - padding;
            let sum = if stride == 1 {
                dot::<false>(grad, &x[first..first + cols.len()])
            } else {
                grad.iter().zip(x[first..].iter().step_by(stride)).map(|(g, v)| g * v).sum()
            };
            dw[i * self.k + j] += sum;
        });
    }

    /// [`Planes::weight_grad`] at stride 1 (for 3x3 and 5x5 kernels; the caller decides): the
    /// plane is copied into a zero-padded buffer `row = w + 2 * padding` wide, and the output
    /// gradient into one as wide (zeros past its last column). Then every tap `(i, j)` is one
    /// long dot product of the whole gradient buffer with the input buffer shifted by
    /// `i * row + j`, with no per-row bounds: the padding supplies the zeros and the extra
    /// gradient columns multiply by zero.
    fn weight_grad_padded(&self, x: &[f32], grad: &[f32], dw: &mut [f32], x_pad: &mut Vec<f32>, g_pad: &mut Vec<f32>) {
        let (p, k) = (self.geometry.padding, self.k);
        let row = self.w + 2 * p;
        // Reads reach `out_h * row + (k - 1) * (row + 1)`: (h + 2p) rows plus k - 1 elements.
        x_pad.clear();
        x_pad.resize((self.h + 2 * p) * row + k, 0.0);
        for (y, src) in x.chunks_exact(self.w).enumerate() {
            x_pad[(y + p) * row + p..][..self.w].copy_from_slice(src);
        }
        g_pad.clear();
        g_pad.resize(self.out_h * row, 0.0);
        for (y, src) in grad.chunks_exact(self.out_w).enumerate() {
            g_pad[y * row..][..self.out_w].copy_from_slice(src);
        }
        struct Taps<'a> {
            x: &'a [f32],
            g: &'a [f32],
            row: usize,
            k: usize,
            dw: &'a mut [f32],
        }
        impl Kernel for Taps<'_> {
            #[inline(always)]
            fn run<const FMA: bool>(self) {
                for (tap, dw) in self.dw.iter_mut().enumerate() {
                    let (i, j) = (tap / self.k, tap % self.k);
                    *dw += dot::<FMA>(self.g, &self.x[i * self.row + j..][..self.g.len()]);
                }
            }
        }
        vectorised(Taps { x: x_pad, g: g_pad, row, k, dw });
    }
}

/// `a . b` with eight lanes of partial sums (fused multiply-adds with `FMA`, inside a
/// [`vectorised`] kernel).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..8 {
            lanes[l] = madd::<FMA>(x[l], y[l], lanes[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The elements of an f32 tensor `x` (`Planes::of` checked the type) in logical order, copied
/// only when `x` is a non-contiguous view.
pub(super) fn f32_values(x: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match stored_f32(x) {
        Some(values) => std::borrow::Cow::Borrowed(values),
        None => std::borrow::Cow::Owned(x.to_contiguous().storage::<f32>().to_vec()),
    }
}

/// Elements per parallel task: large enough that rayon's overhead vanishes, small enough
/// that both cores share a feature map.
pub(super) const CHUNK: usize = 16 * 1024;

/// The f32 elements of `x` in logical order when it is stored contiguously.
fn stored_f32(x: &FlexTensor) -> Option<&[f32]> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let (start, end) = x.layout().contiguous_offsets()?;
    Some(&x.storage::<f32>()[start..end])
}

pub(super) fn f32_tensor(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A loop compiled twice: for this CPU's AVX2 and FMA when it has them, and for the release
/// build's baseline (x86-64 with SSE2: LLVM vectorises 4 lanes wide and never fuses a multiply
/// and an add). `FMA` says which; [`madd`] is a fused multiply-add only where it is one
/// instruction. Implementations mark `run` `#[inline(always)]` so that its loops are compiled
/// inside the AVX2 function.
pub(super) trait Kernel {
    fn run<const FMA: bool>(self);
}

/// Runs `kernel` with AVX2 and FMA where the CPU has them (checked once), as the baseline
/// build otherwise.
pub(super) fn vectorised<K: Kernel>(kernel: K) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2_FMA: std::sync::LazyLock<bool> =
            std::sync::LazyLock::new(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
        #[target_feature(enable = "avx2,fma")]
        fn avx2_fma<K: Kernel>(kernel: K) {
            kernel.run::<true>()
        }
        if *AVX2_FMA {
            // SAFETY: the CPU has AVX2 and FMA (detected above).
            #[allow(unsafe_code)]
            unsafe {
                avx2_fma(kernel)
            };
            return;
        }
    }
    kernel.run::<false>()
}

/// `a * b + c`, fused where the kernel runs with FMA.
#[inline(always)]
pub(super) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `1 / (1 + e^-x)` with a branch-free exponential, so that the loops above vectorise.
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `e^x` to a few ulp for x in [-87, 88] (clamped outside), without a libm call: write
/// x = k ln2 + r with |r| <= ln2 / 2, take e^r from its degree-7 Taylor polynomial and 2^k
/// from the exponent bits. Rounding to k uses the 1.5 * 2^23 trick, which needs no `round`
/// instruction, and k's integer is read from the same sum's low bits: a float-to-integer
/// `as` cast (saturating, NaN to 0) would stop the loops around it from vectorising.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let k = shifted - SHIFT;
    let k_int = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    // ln 2 split in two so that k * ln 2 is exact enough.
    let r = (x - k * 0.693_145_75) - k * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(k_int.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn the_exponential_matches_the_standard_library() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            worst = worst.max(((exp(x) - x.exp()) / x.exp()).abs());
            x += 0.0137;
        }
        assert!(worst < 1e-6, "relative error {worst}");
        // Clamped, not NaN or infinite, far outside.
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(88.0).is_finite());
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The kernels are taken for tensors on flex, with and without autodiff (otherwise the
    /// comparisons below would compare Burn with itself).
    #[test]
    fn tensors_on_flex_take_cobbs_kernels() {
        let plain = Tensor::<2>::zeros([2, 2], &Device::flex());
        let tracked = Tensor::<2>::zeros([2, 2], &Device::flex().autodiff());
        assert!(on_flex(&plain.device()) && on_flex(&tracked.device()));
        assert!(plain.clone().try_into_primitive::<AdFlex>().is_err());
        assert!(plain.clone().try_into_primitive::<Flex>().is_ok());
        assert!(plain.autodiff().require_grad().try_into_primitive::<AdFlex>().is_ok());
        assert!(tracked.try_into_primitive::<AdFlex>().is_ok());
    }

    /// Outputs and input gradients of the fused SiLU equal Burn's composition, on a
    /// contiguous map and on a transposed (non-contiguous) view; without autodiff too.
    #[test]
    fn fused_silu_matches_burns_silu_forward_and_backward() {
        let device = Device::flex().autodiff();
        let base = Tensor::<4>::random([3, 5, 37, 41], Distribution::Normal(0.0, 4.0), &Device::flex());
        for x in [base.clone(), base.swap_dims(2, 3)] {
            let w = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let x = x.clone().autodiff().require_grad();
                let y = if fused { silu(x.clone()) } else { burn::tensor::activation::silu(x.clone()) };
                let grads = (y.clone() * w.clone()).sum().backward();
                (values(y.inner()), values(x.grad(&grads).expect("input gradient")))
            };
            let ((y1, g1), (y2, g2)) = (run(true), run(false));
            assert!(max_diff(&y1, &y2) < 1e-5, "forward {}", max_diff(&y1, &y2));
            assert!(max_diff(&g1, &g2) < 1e-5, "backward {}", max_diff(&g1, &g2));
        }
        let x = Tensor::<2>::random([7, 300], Distribution::Normal(0.0, 4.0), &Device::flex());
        let fused = values(silu(x.clone()));
        assert!(max_diff(&fused, &values(burn::tensor::activation::silu(x))) < 1e-5);
    }

    /// Outputs, input gradients and weight gradients of the depthwise kernels equal Burn's
    /// grouped convolution, for the kernel sizes, strides and paddings of EfficientNet, odd
    /// image sizes, and a non-contiguous input.
    #[test]
    fn depthwise_convolution_matches_burns_grouped_convolution() {
        let device = Device::flex().autodiff();
        for (k, stride, padding, h, w, transposed) in [
            (3, 1, 1, 9, 11, false),
            (5, 2, 2, 13, 10, false),
            (3, 2, 1, 8, 7, true),
            (5, 1, 2, 6, 6, false),
            (3, 2, 0, 9, 9, false),
            (5, 2, 2, 1, 2, false),
            (3, 1, 1, 1, 1, false),
            (3, 2, 1, 20, 37, false),
            (5, 2, 2, 33, 17, false),
            (5, 1, 2, 12, 16, false),
        ] {
            let geometry = Geometry { stride, padding };
            let mut x = Tensor::<4>::random([3, 4, h, w], Distribution::Normal(0.0, 1.0), &Device::flex());
            if transposed {
                x = x.swap_dims(2, 3);
            }
            let weight = Tensor::<4>::random([4, 1, k, k], Distribution::Normal(0.0, 1.0), &Device::flex());
            let run = |ours: bool| {
                let x = x.clone().autodiff().require_grad();
                let weight = weight.clone().autodiff().require_grad();
                let y = if ours {
                    depthwise_conv2d(x.clone(), weight.clone(), geometry)
                } else {
                    let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 4);
                    burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options)
                };
                (y, x, weight)
            };
            let (y1, x1, w1) = run(true);
            let (y2, x2, w2) = run(false);
            // Without autodiff too (evaluation and classification).
            let plain = depthwise_conv2d(x.clone(), weight.clone(), geometry);
            assert!(max_diff(&values(plain), &values(y2.clone().inner())) < 1e-5, "forward without autodiff");
            assert_eq!(y1.dims(), y2.dims(), "k{k} s{stride} p{padding}");
            let target = Tensor::<4>::random(y1.dims(), Distribution::Normal(0.0, 1.0), &device);
            let g1 = (y1.clone() * target.clone()).sum().backward();
            let g2 = (y2.clone() * target).sum().backward();
            let case = format!("k{k} s{stride} p{padding} {h}x{w}");
            assert!(max_diff(&values(y1.inner()), &values(y2.inner())) < 1e-5, "forward {case}");
            let (dx1, dx2) = (x1.grad(&g1).expect("dx"), x2.grad(&g2).expect("dx"));
            assert!(max_diff(&values(dx1), &values(dx2)) < 1e-5, "input gradient {case}");
            let (dw1, dw2) = (w1.grad(&g1).expect("dw"), w2.grad(&g2).expect("dw"));
            assert!(max_diff(&values(dw1), &values(dw2)) < 1e-4, "weight gradient {case}");
        }
    }
}
