//! The encoders' convolution: tch's `nn::Conv2D`, whose bias-free 3×3 and 5×5 stride-1 layers
//! take Winograd's minimal filtering F(2×2, r×r) or F(4×4, r×r) (Lavin & Gray, "Fast Algorithms
//! for Convolutional Neural Networks", CVPR 2016; `csrc/winograd.cpp`) on the CPU for the passes
//! where it is faster than libtorch's oneDNN kernels, and libtorch's convolution for every other
//! pass and layer.
//!
//! Winograd's algorithm turns an r×r convolution into (m + r - 1)² matrix products a tile of
//! m×m outputs: with tiles of 2×2, 2.25× (3×3) or 2.8× (5×5) fewer multiplications than the
//! direct convolution, with tiles of 4×4 ([`Plan::tile4`]) 4× or 6.25×; its transforms cost
//! passes over memory (fewer with the larger tiles), so it pays at small feature maps with many
//! channels, and for the backward pass to the weights, where oneDNN's direct kernels run
//! furthest from the machine (measured: `bench/conv_probe.py`, the `winograd_probe` example, and
//! `bench/README.md`, "Winograd at the small maps", "Winograd in tiles of 4×4"). [`plan`] picks
//! the passes and the tiles by the layer's shape, the same choice on every call: a run stays
//! reproducible. Its results agree with the direct convolution to float rounding (relative 1e-6
//! forward, 1e-5 for the weight gradient's long sums, 4e-5 for the 5×5 one; tiles of 4×4 within
//! 1.1e-5 of the float64 convolution at the large networks' widths), not bit for bit.
//!
//! Bias-free stride-1 1×1 layers (the NIN's) take the same path for the backward pass to the
//! weights, as one matrix product `dYᵀ X` over views of the activations (channels-last; NCHW:
//! per-image products summed), where MKL's GEMM outruns oneDNN's 1×1 kernel (`plan`).
//!
//! In bf16 (bf16 tensors, or the CPU's bf16 autocast) Winograd runs only on CPUs with
//! AVX512-BF16 and no AMX (AMD Zen 4), where oneDNN's direct bf16 kernels already run at the
//! machine's peak and only fewer multiplications gain ([`plan_bf16`]): the 3×3 layers from 128
//! channels at 16×16 and less in bf16 F(2×2, 3×3) (its rounding about 3× oneDNN's: the
//! transformed tiles and the products' sums are rounded to bf16), the 5×5 ones from 96 channels
//! in float F(4×4, 5×5) on the widened values, rounded once (as oneDNN's). With AMX, and on
//! other CPUs, bf16 stays libtorch's (the products below aside).
//!
//! Deterministic runs (`train.deterministic` switches oneDNN off for thread-count-independent
//! sums; the Winograd products are MKL's, whose sums are not) take none of these paths but the
//! smallest maps' dense products (below, on [`mm_det`]): their
//! convolutions run oneDNN's kernels on fixed pieces of the batch ([`conv_det`],
//! `csrc/conv_det.cpp`), and so do those of the layers outside the encoders, built as
//! [`Conv2d::head`], [`ConvTranspose2d`] or run by [`convolution`] (heads, decoders, the
//! discriminator), which otherwise run libtorch's. Left to libtorch: CUDA, strides,
//! dilations, groups and biases. On CPUs with AVX-512 [`plan`] takes, in tiles of 4×4, the 3×3
//! layers at maps of 16×16 and less from 128 channels and the 5×5 layers there from 96 (measured on
//! an AVX-512 Xeon without AMX); without AVX-512, in tiles of 4×4, the 3×3 layers at 4×4 to 32×32
//! from 64 channels and the 5×5 layers at 8×8 to 16×16 from 24, the cpu profiles' AlexNet of width
//! 24 included (measured on that Xeon with every kernel held to AVX2; no AVX2 machine has run tiles
//! of 4×4), and the backward pass to the weights of other large layers.
//! `SELFSUP_WINOGRAD=off` turns it off, `=all` takes it for every pass of every layer it can
//! take (for measuring), `=auto` is the default.
//!
//! On CPUs with AVX-512 the small maps also take another path: matrix products over im2col
//! columns ([`conv_gemm`], `csrc/conv_gemm.cpp`), every pass at 4×4 outputs from 256 channels
//! (in fp32 where Winograd does not take the layer first: at stride 2) and, in bf16
//! on AMX, the backward pass to the weights at 8×8 outputs from 128 channels, at 4×4 outputs
//! from 64, of the 1×1 stride-2 shortcuts and of the discriminator's 4×4 stride-2 layers from
//! 64 channels; a filter over the whole map (one output position) every pass ([`plan_gemm`]).
//! There oneDNN's kernels run far from the machine (1.8-4.4× slower than the products at
//! ResNet-18's `layer4` in bf16; by our reading they walk the whole filter bank image by image),
//! while one product over the batch's output positions reads it once.
//! Every output is still one sum, rounded once (bf16: fp32 accumulation, as oneDNN's), in another
//! order; under bf16 autocast the inputs are cast as autocast's convolution casts them.
//! Deterministic runs, NCHW activations, CUDA and other layers stay libtorch's;
//! `SELFSUP_CONV_GEMM=off` turns it off, `=all` takes every pass of every layer it can.
//!
//! The smallest maps take a third path, on every CPU: a 3×3 layer at a 2×2 map (or smaller)
//! and a 5×5 one at 4×4 (or smaller), with stride 1 and padding `(r - 1) / 2`, is one dense
//! linear map from the map's `H·W·C` inputs to its `H·W·K` outputs (every output sees every
//! input, or at 5×5 on 4×4 most of them), so the whole pass is one matrix product of the
//! channels-last activations `(N, H·W·C)` with a `(H·W·C, H·W·K)` matrix gathered from the
//! filters ([`conv_dense`], [`plan_dense`]): relative patch's 8-px patches through the
//! AlexNet-24 (conv2 to conv5). oneDNN's kernels run far from the machine at such maps (the
//! three 3×3 layers: 7.1 → 3.2 ms a step with AVX-512, 12.0 → 4.6 held to AVX2). NCHW
//! activations are copied into that order (since 2026-12-07; the copies are a few hundred KiB a
//! layer). In a deterministic run its products are [`mm_det`]'s, fixed blocks of the output's
//! columns a single-threaded MKL product each, in place of [`conv_det`]'s pieces, where
//! oneDNN's single-threaded kernels on 16 images of 2×2 maps ran slower than the products. It
//! leaves CUDA, and bf16 autocast on CPUs without AMX, to libtorch; `SELFSUP_CONV_GEMM=off`
//! turns it off too.
//!
//! The 4×4 convolution with stride 2 and padding 1 of DCGAN's discriminator (the context
//! encoder's adversary) is, on the space-to-depth form of its padded input, a valid 2×2
//! convolution of 4C channels: its backward pass to the weights, where oneDNN's kernel runs at
//! half the rate of its forward one, and from 16×16 inputs or 256 channels on (with AVX-512:
//! from 64 channels on) its forward pass take F(2×2, 2×2) there ([`conv_down`], [`plan_down`]).
//! In bf16 on a CPU with AVX512-BF16 and no AMX the passes run as one fused loop in bf16
//! (`csrc/winograd_fused.cpp`), the backward pass to the weights from 64 channels, the forward
//! pass from 16×16 inputs, and the backward pass to the input (four 2×2 correlations, one a
//! parity of the input's pixels) from 16×16 inputs and input channels in sixteens
//! ([`plan_down_bf16`]); with AMX, and without bf16 instructions, a bf16 step leaves the layer
//! to libtorch.
use std::os::raw::{c_char, c_int, c_void};
use std::sync::OnceLock;

use tch::{nn, Tensor};

extern "C" {
    fn selfsup_conv_winograd(
        x: *const c_void,
        w: *const c_void,
        bits: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_winograd_piece_bytes(bytes: i64) -> i64;
    fn selfsup_winograd_fused(enable: c_int) -> c_int;
    fn selfsup_conv_gemm(
        x: *const c_void,
        w: *const c_void,
        stride: i64,
        padding: i64,
        bits: c_int,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn selfsup_conv_det(
        x: *const c_void,
        w: *const c_void,
        b: *const c_void,
        stride: i64,
        padding: i64,
        dilation: i64,
        groups: i64,
        output_padding: i64,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_mm_det(
        x: *const c_void,
        w: *const c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn selfsup_bmm_det(
        x: *const c_void,
        w: *const c_void,
        out: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Sets how many bytes of transformed tiles one piece of a Winograd pass, or of im2col columns
/// one piece of a [`conv_gemm`] pass, may hold (default 64 MiB: a pass runs over the batch, or
/// the filter's rows, in pieces that fit, so its temporaries do not grow with the batch) when
/// `bytes` is given; returns the setting before.
pub fn piece_bytes(bytes: Option<i64>) -> i64 {
    // SAFETY: reads or swaps an atomic; no pointers.
    unsafe { selfsup_winograd_piece_bytes(bytes.filter(|&b| b > 0).unwrap_or(0)) }
}

/// Whether bf16 F(2×2, 3×3) and float F(4×4, 5×5) run each of their passes as one fused loop
/// over small groups of tiles (`csrc/winograd_fused.cpp`; on by default where the CPU has
/// AVX512-BF16, from 8×8 maps) rather than as separate transforms and matrix products: `Some(on)` switches it for the calling thread (the thread that runs a convolution,
/// and on the CPU its backward pass, picks the path), `None` asks; returns the setting now. For
/// the tests and probes that compare the two.
#[doc(hidden)]
pub fn fused_bf16(set: Option<bool>) -> bool {
    let arg = set.map_or(-1, c_int::from);
    // SAFETY: reads or stores the calling thread's flag; no pointers.
    unsafe { selfsup_winograd_fused(arg) == 1 }
}

/// The passes of one convolution that run by Winograd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// The forward pass.
    pub forward: bool,
    /// The backward pass to the input.
    pub input: bool,
    /// The backward pass to the weights.
    pub weight: bool,
    /// Winograd's output tiles of 4×4, F(4×4, r×r), instead of 2×2 (3×3 and 5×5 filters;
    /// ignored at the others and by [`conv_gemm`]): (r + 3)² products a tile of 16 outputs
    /// against F(2×2, r×r)'s (r + 1)² for 4, so 1.8× (3×3) and 2.25× (5×5) fewer products and
    /// transformed tiles, at a larger rounding error (the transforms' entries reach 21/4 and 1/90
    /// at 5×5).
    pub tile4: bool,
}

impl Plan {
    /// Every pass, in tiles of 2×2.
    pub const ALL: Plan = Plan { forward: true, input: true, weight: true, tile4: false };

    fn bits(self) -> c_int {
        c_int::from(self.forward)
            | c_int::from(self.input) << 1
            | c_int::from(self.weight) << 2
            | c_int::from(self.tile4) << 3
    }
}

/// What `SELFSUP_WINOGRAD` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// [`plan`]'s choice by shape (the default).
    Auto,
    /// Never.
    Off,
    /// Every pass of every layer it can take.
    All,
}

/// The mode of this process for Winograd: `SELFSUP_WINOGRAD` (`auto`, `off`, `all`), read
/// once; any other value is reported once and taken as `auto`.
pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| mode_from_env("SELFSUP_WINOGRAD"))
}

/// Whether a deterministic run's convolutions take [`conv_det`], and its products (the dense
/// convolutions', the fully connected layers') [`mm_det`] and [`bmm_det`]: `SELFSUP_CONV_DET`
/// (`auto`, the default, or `off`: libtorch's own kernels, for measuring), read once as [`mode`]
/// (`all` is `auto`).
pub fn det_mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| mode_from_env("SELFSUP_CONV_DET"))
}

/// Whether this is a deterministic CPU run (oneDNN off) whose convolutions and products take the
/// deterministic paths ([`det_mode`] not `off`): [`conv_det`]'s pieces, [`mm_det`]'s and
/// [`bmm_det`]'s blocks.
pub fn det_paths_on() -> bool {
    det_mode() != Mode::Off && !crate::determinism::mkldnn_enabled()
}

/// The mode of this process for the convolutions as matrix products ([`plan_gemm`]):
/// `SELFSUP_CONV_GEMM` (`auto`, `off`, `all`: every pass of every layer it can take), read
/// once as [`mode`].
pub fn gemm_mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| mode_from_env("SELFSUP_CONV_GEMM"))
}

fn mode_from_env(var: &str) -> Mode {
    match std::env::var(var).as_deref() {
        Err(_) | Ok("auto") | Ok("") => Mode::Auto,
        Ok("off") => Mode::Off,
        Ok("all") => Mode::All,
        Ok(other) => {
            tracing::warn!("{var}={other:?}: expected auto, off or all; taking auto");
            Mode::Auto
        }
    }
}

/// The passes of an `r×r` stride-1 convolution from `c` to `k` channels at `h × w` that run by
/// Winograd (r = 3, 5) or as matrix products (r = 1), on a CPU with AVX-512 (`avx512`) or
/// without.
///
/// With AVX-512: every pass, in tiles of 4×4 (F(4×4, r×r): [`Plan::tile4`]), of the 3×3 layers
/// at maps of 16×16 and less from 128 channels (ResNet-18's `layer2` to `layer4` with the CIFAR
/// stem, the NIN-192's blocks 3 and 4, the ImageNet AlexNet's conv3 to conv5 at 13×13) and of
/// the 5×5 layers there from 96 channels (the NIN-192's block 2), nothing else. Measured on 2
/// cores of an Intel Xeon (family 6, model 207; AVX-512 with BF16, no AMX), fp32 channels-last,
/// batch 128, four runs of `winograd_probe`, oneDNN / F(4×4) ms (`bench/README.md`, "Winograd
/// in tiles of 4×4"): 5×5 96→192 at 16×16 forward 78.5-104.4 / 39.3-56.5, to the input
/// 80.1-103.5 / 42.2-43.2, to the weights 86.5-106.1 / 48.7-50.5 (F(2×2) there: 67.1-91.4,
/// 79.4-107.2, 80.6-106.4, which left it to oneDNN before); 3×3 128→128 at 16×16 28.0-29.4 /
/// 17.8-28.1, 29.0-32.3 / 18.1-27.6, 30.0-31.7 / 20.1-28.9; 256→256 at 8×8 26.8-38.0 /
/// 13.4-18.6, 27.7-39.2 / 14.0-20.2, 29.8-43.6 / 15.2-21.1; 512→512 at 4×4 38.3-43.5 /
/// 13.3-19.3, 40.0-45.4 / 18.7-26.4, 41.3-55.6 / 18.1-26.4 (also ahead of [`plan_gemm`]'s
/// products there); 192→192 at 8×8 14.7-22.4 / 7.7-11.3, 15.2-21.2 / 8.3-12.2, 16.9-24.3 /
/// 9.2-12.6; one run at the AlexNet's 13×13 layers (tiles past the map's edge: 16×16 computed
/// for 13×13), 1.1-1.8× in every pass (384→384: 160.7 / 105.5, 164.0 / 120.0, 193.7 / 118.4).
/// Left to oneDNN there: 64 channels at 32×32 (on par: 30.3-37.4 / 28.5-30.0 forward,
/// 34.2-45.2 / 34.3-36.0 to the weights), the 5×5 layers under 96 channels (3 in: 1.4-4.3× slower; the
/// AlexNet-24's 24→64 at 16×16: the weight pass 1.9× slower), the 1×1 layers (on par or slower
/// at every NIN-192 1×1 layer but 192→160), and the layers under the `C·K·H·W` bound (the
/// AlexNet-24's 3×3 at 8×8 ran 1.0-1.4× faster by F(4×4); its cpu profiles were measured
/// without). F(4×4)'s rounding at the large widths, against the float64 convolution, stays
/// within 1.1e-5 of each pass's largest value (F(2×2) 5×5's: 1.2e-5; the test
/// `tiles_of_4x4_stay_near_the_float64_convolution_at_full_width`). On a CPU with AVX512-BF16
/// (Zen 4) the 5×5 layers' F(4×4) passes from 8×8 maps run fused (`csrc/winograd_fused.cpp`;
/// measured there through bf16's widened path, [`plan_bf16`]: 1.2-1.6× the unfused passes).
///
/// Without AVX-512: every pass, in tiles of 4×4, of the 3×3 layers at maps of 4×4 to 32×32
/// from 64 channels (ResNet-18's `layer1` to `layer4` with the CIFAR stem, the NIN-192's blocks 3
/// and 4, the AlexNet-24's conv3 to conv5 on 32-px images and 16-px tiles) and of the 5×5 layers
/// at 8×8 to 16×16 from 24 channels (the NIN-192's block 2, the AlexNet-24's conv2), whatever
/// `C·K·H·W`; of the other layers from 64 channels and `C·K·H·W` of 2²¹ the backward pass to the
/// weights alone, in tiles of 2×2 (3×3 and 5×5 at larger maps) or as a matrix product (1×1).
/// First measured on 2 cores of an AMD EPYC Zen 3 (AVX2), fp32 channels-last, batch 128, on
/// jemalloc, against libtorch 2.11's oneDNN (`cargo run --release -p selfsup-core --example
/// winograd_probe`, three runs; `bench/README.md`, "Winograd at the small maps" and "The
/// transforms as loops"), in tiles of 2×2: the backward pass to the weights, where oneDNN's
/// kernel runs at half the rate of its forward one, faster at every 3×3 layer of ResNet-18 and
/// the NIN-192 (64 to 512 channels, 32×32 to 4×4 maps: 1.2-3.1×) and at the 5×5 layer from 96
/// to 192 channels at 16×16 (1.4-2.0×); the forward pass and the backward pass to the input
/// faster at 3×3 from 128 channels at 16×16 and less (1.1-1.7×) and at that 5×5 layer
/// (1.3-1.9×), on par at 64 channels on 32×32; the AlexNet-24's layers 0.9-1.5×. Tiles of 4×4
/// were measured on no AVX2 machine: on 2 cores of an Intel Xeon (family 6, model 207) with
/// every kernel held to AVX2 (libtorch's `ATEN_CPU_CAPABILITY=avx2`, oneDNN's
/// `ONEDNN_MAX_CPU_ISA=AVX2`, MKL's `MKL_ENABLE_INSTRUCTIONS=AVX2`, the shim's loops built for
/// AVX2 alone; `bench/README.md`, "Tiles of 4×4 without AVX-512"), three runs, oneDNN / F(2×2) /
/// F(4×4) ms forward: 64→64 at 32×32 47.6-57.5 / 40.8-49.4 / 29.3-36.0, 128→128 at 16×16
/// 45.4-54.9 / 33.3-41.8 / 20.6-26.6, 512→512 at 4×4 49.6-53.6 / 28.6-31.8 / 18.8-21.8, 5×5
/// 96→192 at 16×16 179.5-201.2 / 85.0-95.7 / 45.6-52.0, the AlexNet-24's 96→96 at 8×8
/// 6.5-7.1 / 5.3-5.4 / 3.5-3.6 and 5×5 24→64 at 16×16 15.8-16.9 / 12.2-13.5 / 6.0-6.6; the other
/// two passes alike (F(4×4) 1.5-4.1× oneDNN's speed at every one of these layers). Two runs at
/// the 16-px tiles' maps: 3×3 at 4×4 1.1-1.4× in every pass, 5×5 24→64 at 8×8 1.5-2.0× forward,
/// 1.25× to the input, 1.03× to the weights. The 3×3 layers at 32×32 with more than 64 channels
/// are taken by extrapolation (no network here has one). Left out: the 3×3 layers at 2×2
/// (relative-patch's 8-px patches: F(4×4) up to 3× slower) and the 5×5 ones at 4×4 (slower to the
/// input), which [`plan_dense`] takes instead; left to oneDNN: layers under 64 channels (3×3) or
/// 24 (5×5: the NINs' 5×5 first layers, 3 channels in,
/// where tiles of 4×4 are 1.9-2.4× slower forward and to the weights; the cpu profiles' NIN-16
/// and NIN-32).
///
/// 1×1 layers by the same rule, measured in the same probe: MKL's matrix product for the
/// backward pass to the weights beats oneDNN's 1×1 kernel at every NIN-192 1×1 layer (192→160
/// and 160→96 at 32×32, 192→192 at 16×16 and 8×8: 1.0-2.9× over three runs; at 128 channels on
/// 16×16, which the rule takes and no network here has, faster in one run of three); its
/// forward and backward to the input are on par or slower (oneDNN's 1×1 forward is a GEMM
/// itself), and at the cpu profiles' widths (16, 32) all three are slower.
pub fn plan(r: i64, c: i64, k: i64, h: i64, w: i64, avx512: bool) -> Plan {
    let channels = c.min(k);
    let tile4 = Plan { forward: true, input: true, weight: true, tile4: true };
    if !avx512 {
        // Tiles of 4×4 whatever `C·K·H·W`: from 4×4 maps (3×3) and 8×8 (5×5) up.
        let take = match r {
            3 => channels >= 64 && (16..=1024).contains(&(h * w)),
            5 => channels >= 24 && (64..=256).contains(&(h * w)),
            _ => false,
        };
        if take {
            return tile4;
        }
    }
    if channels < 64 || c * k * h * w < 1 << 21 {
        return Plan::default();
    }
    if avx512 {
        let take = h * w <= 256 && (r == 3 && channels >= 128 || r == 5 && channels >= 96);
        return if take { tile4 } else { Plan::default() };
    }
    Plan { weight: true, ..Plan::default() }
}

/// The passes of a bias-free stride-1 `r×r` convolution from `c` to `k` channels at `h × w` in
/// bfloat16 (bf16 tensors, or the CPU's bf16 autocast) on a CPU with AVX512-BF16 and no AMX
/// ([`Arith::Bf16Avx512`]) that run by Winograd: in bf16, F(2×2, 3×3) (with [`Plan::tile4`]
/// off), or in float on the values widened from bf16, F(4×4, r×r), the output rounded once to
/// bf16 (`tile4` on; `csrc/winograd.cpp`). There the passes of bf16 F(2×2, 3×3) and of
/// F(4×4, 5×5) run fused from 8×8 maps on (`csrc/winograd_fused.cpp`: each group of tiles
/// transformed, multiplied by `vdpbf16ps` or FMA and transformed back in cache), the others as
/// separate transforms and matrix products.
///
/// There oneDNN's direct bf16 kernels run at the machine's peak (2 cores of an AMD EPYC Zen 4,
/// family 25, model 17: about 470 GFLOP/s forward at ResNet-18's 3×3 layers, against 360 for
/// libtorch's bf16 matrix products), so only fewer multiplications gain, and unfused only where
/// the transforms' traffic is small beside the products. Measured there, batch 128,
/// channels-last, oneDNN / fused / unfused ms, forward, to the input, to the weights
/// (`winograd_probe -- 2 bf16`, three runs, which moved with the machine's state, both sides
/// alike; `bench/README.md`, "Fused Winograd on Zen 4"):
/// - 3×3 fused, from 64 channels at 8×8 to 32×32: 64→64 at 32×32 20.8-21.1 / 14.0-16.1 /
///   24.7-25.7, 20.9-23.7 / 13.8-17.3 / 24.7-27.6, 26.9-32.8 / 18.5-19.1 / 33.8-36.7; 128→128
///   at 16×16 19.9-20.5 / 11.9-12.9 / 17.7-18.4, 20.0-21.2 / 11.7-13.2, 22.0-23.0 / 15.1-15.6;
///   256→256 at 8×8 18.4-18.5 / 11.6-12.2, 18.3-19.0 / 11.9-13.2, 21.9-22.2 / 16.8-20.0 /
///   17.7-18.7; 192→192 at 8×8 10.3-10.7 / 6.7-8.7, 10.4-11.3 / 6.8-8.8, 12.3-14.0 / 9.0-11.3;
///   the AlexNet-24's 8×8 layers (64→96, 96→96, 96→64) 1.05-1.4× in every pass, the ImageNet
///   AlexNet's 13×13 layers 1.4-1.6× forward. The weight pass fused needs input channels in
///   multiples of 16 (else as below: unfused from 128 channels under 16×16, oneDNN's
///   otherwise). Its rounding: the forward pass's relative RMS error
///   against the float64 convolution of the same bf16 values 4.2-4.5e-3 (unfused 5.0-5.4e-3,
///   oneDNN 1.7e-3; the test `bf16_winograd_stays_within_a_few_roundings_of_float64` bounds
///   both);
/// - 3×3 at 4×4 (the fused pass slower: each group of tiles streams all the filters' values):
///   unfused from 128 channels, oneDNN / unfused 512→512 forward 16.1-18.6 / 14.8-22.2 (the machine's states),
///   the weights 24.4-33.2 / 16.9-26.4 (to the input 16.2-17.3 / 17.5-24.1: left); under 128
///   channels left (1.1-2× slower);
/// - 5×5 from 96 channels in float F(4×4) on the widened values, the casts included, fused from
///   8×8 maps: the NIN-192's 96→192 at 16×16 57.3-57.7 / 34.4-35.6 / 49.0-55.2, 57.0-60.5 /
///   35.2-35.9 / 54.1-57.7, 67.6-68.4 / 40.4 / 49.3-56.0 (float's rounding, then bf16's once:
///   oneDNN's error to the fifth digit). bf16 F(2×2, 5×5) came out at 3.5e-2 and is not run;
///   5×5 under 96 channels (the first layer, 3 in; the AlexNet-24's 24→64) ran 1.5-7× slower
///   widened.
///
/// Only this kind was measured: another CPU with AVX512-BF16 and no AMX (a Xeon whose AMX is
/// not exposed) takes the same plan unmeasured.
pub fn plan_bf16(r: i64, c: i64, k: i64, h: i64, w: i64) -> Plan {
    let (channels, positions) = (c.min(k), h * w);
    match r {
        // The fused passes from 8×8 maps on (the weights: input channels a multiple of 16, else
        // as below).
        3 if channels >= 64 && (64..=1024).contains(&positions) && c % 2 == 0 && k % 16 == 0 => {
            Plan {
                forward: true,
                input: true,
                weight: c % 16 == 0 || channels >= 128 && positions < 256,
                tile4: false,
            }
        }
        3 if channels >= 128 && positions <= 256 => {
            Plan { forward: true, input: positions > 16, weight: positions < 256, tile4: false }
        }
        5 if channels >= 96 && positions <= 256 => Plan { tile4: true, ..Plan::ALL },
        _ => Plan::default(),
    }
}

/// The passes of a 4×4 convolution with stride 2 and padding 1 from `c` to `k` channels at an
/// `h × w` input that run by F(2×2, 2×2) on the space-to-depth form ([`conv_down_winograd`])
/// on a CPU with AVX-512 (`avx512`) or without, in float; the backward pass to the input is
/// always libtorch's there (bf16: [`plan_down_bf16`]).
///
/// Measured as [`plan`] (`winograd_probe`, 2 cores of an AMD EPYC Zen 3, fp32 channels-last,
/// batch 128; `bench/README.md`, "The discriminator's 4×4 stride-2 convolutions by Winograd"),
/// at the context encoder's discriminator layers, two runs: the backward pass to the weights,
/// where oneDNN's kernel runs at half the rate of its forward one, is faster from 64 channels on
/// (1.35-1.56× at the cpu profile's 64→128 at 16×16 and 128→256 at 8×8, 1.8-3.1× at the paper
/// profile's larger maps), 2.6-2.9× slower at the first layer (3 channels in); the forward pass
/// is faster from 16×16 inputs on (1.07× at 64→128, 1.1-1.4× at the paper profile's) and with
/// 256 channels and more (512→512 at 8×8: 1.3-1.9×), slower at 128→256 at 8×8 (0.95-0.99×).
///
/// With AVX-512 (2 cores of an Intel Xeon, family 6, model 207, no AMX; `winograd_probe`, two
/// runs, oneDNN / Winograd ms; `bench/README.md`, "Winograd in tiles of 4×4"): both passes
/// from 64 channels on, forward 6.1 / 6.0 and 7.6 / 7.1 at 64→128 on 16×16, 7.7 / 6.7 and
/// 8.0 / 7.3 at 128→256 on 8×8, 74.5-116.6 / 50.2-106.9 at the paper profile's four (1.1-1.5×);
/// to the weights 8.3 / 6.9 and 9.1 / 7.2, 8.5 / 8.0 and 8.8 / 8.7, 91.4-129.2 /
/// 70.4-115.5 (1.1-1.4×); the first layer (3 channels in) 4.1-5.2× slower.
pub fn plan_down(c: i64, k: i64, h: i64, w: i64, avx512: bool) -> Plan {
    let channels = c.min(k);
    if channels < 64 || c * k * h * w < 1 << 21 {
        return Plan::default();
    }
    Plan { forward: avx512 || h * w >= 256 || channels >= 256, weight: true, ..Plan::default() }
}

/// The passes of a 4×4 convolution with stride 2 and padding 1 from `c` to `k` channels at an
/// `h × w` input in bfloat16 on a CPU with AVX512-BF16 and no AMX ([`Arith::Bf16Avx512`]) that
/// run by the fused bf16 F(2×2, 2×2) (`csrc/winograd_fused.cpp`): forward and to the weights
/// on the space-to-depth form, to the input as four stride-1 2×2 correlations of the output's
/// gradient with the flipped filters, one a parity (a, b) of the input's pixels (each 4×4
/// block of the input from one 2×2 tile of the gradient). The shim takes input channels in
/// multiples of 4 (the backward pass to the input: of 16) and output channels in multiples of
/// 16 (else the layer, or that pass, stays libtorch's).
///
/// Measured on 2 cores of an AMD EPYC Zen 4 (family 25, model 17; `winograd_probe -- 2 bf16`,
/// batch 128, channels-last, two runs; `bench/README.md`, "The discriminator in bf16 on Zen 4"),
/// oneDNN / fused ms: the backward pass to the weights, where oneDNN's bf16 kernel runs at half
/// the rate of its forward one, 7.3-7.4 / 3.8-4.4 at the cpu profile's 64→128 on 16×16 and
/// 8.8-11.3 / 4.4-5.2 at 128→256 on 8×8, 78-128 / 42-69 at the paper profile's four layers
/// after the first (1.3-2.0×); the forward pass 4.4 / 3.4 at 64→128 on 16×16 and 70-80 / 49-68
/// at the paper profile's 16×16 to 64×64 inputs, but on par at 128→256 on 8×8 (4.3 / 4.2-5.3)
/// and 1.6-3× slower at 512→512 on 8×8 (35-37 / 58-114: at 4×4 outputs each group of tiles
/// streams every filter value), so from 16×16 inputs only. The backward pass to the input
/// (2026-12-06, two runs, the same probe): 5.9 / 4.2 and 4.9 / 4.2 at 64→128 on 16×16,
/// 73.9-81.4 / 52.9-58.6 at the paper profile's 16×16 to 64×64 inputs (1.3-1.4×), slower at
/// 8×8 inputs (128→256: 4.6-4.8 / 5.3-5.8; 512→512: 37-38 / 55-60), so from 16×16 inputs as
/// the forward pass; groups of 12 to 48 tiles rather than 6 no faster. Rounding: relative RMS
/// error against the float64 convolution of the same bf16 values 4.6-4.7e-3 forward,
/// 3.8-4.4e-3 to the weights, 4.4-4.7e-3 to the input in the test (oneDNN 1.6-1.7e-3; the fused
/// bf16 F(2×2, 3×3)'s 4.2-4.5e-3).
pub fn plan_down_bf16(c: i64, k: i64, h: i64, w: i64) -> Plan {
    if c.min(k) < 64 {
        return Plan::default();
    }
    let wide = h * w >= 256;
    Plan { forward: wide, input: wide && c % 16 == 0, weight: true, tile4: false }
}

/// The 4×4 convolution with stride 2, padding 1 and no bias of `xs` with `ws`, with the
/// forward pass and the backward pass to the weights by F(2×2, 2×2) on the space-to-depth form
/// of the input where `plan` says (`input`: in bf16 where the fused pass takes it, see
/// [`plan_down_bf16`]; in float always libtorch's) and the others by libtorch, as one autograd
/// function; `Ok(None)` when it does not take the convolution (no pass in `plan` it takes, not
/// dense float CPU tensors nor bf16 ones (or autocast's bf16) the fused bf16 passes take
/// ([`plan_down_bf16`]), oneDNN off, an odd side), `Err` with libtorch's message when it
/// refuses the shapes.
///
/// # Shapes
/// `xs`: `(N, C, H, W)`, NCHW or channels-last; `ws`: `(K, C, 4, 4)`; returns
/// `(N, K, H / 2, W / 2)` in the memory format of `xs`.
pub fn conv_down_winograd(xs: &Tensor, ws: &Tensor, plan: Plan) -> Result<Option<Tensor>, String> {
    let ks = ws.size();
    if ks.len() != 4 || ks[2..] != [4, 4] {
        return Err(format!("4×4 stride-2 convolution: weight {ks:?} (expected (K, C, 4, 4))"));
    }
    // The shim takes a 4×4 filter as this convolution.
    conv_winograd(xs, ws, plan)
}

/// The 4×4 convolution with stride 2, padding 1 and no bias of `xs` with `ws`: the passes
/// `SELFSUP_WINOGRAD` and [`plan_down`] give by [`conv_down_winograd`] where it takes them, else
/// those of [`plan_gemm`] (bf16 with AMX) as matrix products ([`conv_gemm`]), the rest
/// libtorch's; in deterministic CPU runs [`conv_det`]'s pieces.
///
/// # Shapes
/// `xs`: `(N, C, H, W)`; `ws`: `(K, C, 4, 4)`; returns `(N, K, ⌊H / 2⌋, ⌊W / 2⌋)`.
///
/// # Panics
/// When libtorch refuses the shapes, with its message (as `nn::Module::forward`).
pub fn conv_down(xs: &Tensor, ws: &Tensor) -> Tensor {
    if let Some(y) = det_pieces(xs, ws, None, Geometry::conv(2, 1)) {
        return y;
    }
    let plan = match (mode(), xs.dim() == 4 && ws.dim() == 4) {
        (Mode::Off, _) | (_, false) => Plan::default(),
        (Mode::All, true) => Plan::ALL,
        (Mode::Auto, true) => {
            let (s, k) = (xs.size(), ws.size());
            match Arith::of(xs) {
                Arith::Bf16Avx512 => plan_down_bf16(s[1], k[0], s[2], s[3]),
                // bf16 elsewhere: with AMX, `plan_gemm`'s products and oneDNN's AMX kernels;
                // without bf16 instructions, libtorch's.
                Arith::Bf16Amx | Arith::Bf16Other => Plan::default(),
                _ => plan_down(s[1], k[0], s[2], s[3], avx512()),
            }
        }
    };
    if plan != Plan::default() {
        match conv_down_winograd(xs, ws, plan) {
            Ok(Some(y)) => return y,
            Ok(None) => {}
            // The module interface has no error path; libtorch's message says what.
            Err(e) => panic!("{e}"),
        }
    }
    if let Some(y) = gemm_or_none(xs, ws, 2, 1) {
        return y;
    }
    xs.conv2d(ws, None::<&Tensor>, [2, 2], [1, 1], [1, 1], 1)
}

/// Whether this CPU has AVX-512 (read once).
fn avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(has_avx512)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The r×r convolution (r = 1, 3 or 5; stride 1, padding `(r - 1) / 2`, no bias) of `xs` with
/// `ws`, with the passes of `plan` by Winograd (r = 1: matrix products over views of the
/// activations) and the others by libtorch, as one autograd
/// function; `Ok(None)` when it does not take the convolution (an empty plan; not dense float
/// CPU tensors; autocast on; oneDNN off), `Err` with libtorch's message when it refuses the
/// shapes. A 4×4 `ws` is [`conv_down_winograd`]'s stride-2 convolution.
///
/// # Shapes
/// `xs`: `(N, C, H, W)`, NCHW or channels-last; `ws`: `(K, C, r, r)`; returns `(N, K, H, W)` in
/// the memory format of `xs`.
pub fn conv_winograd(xs: &Tensor, ws: &Tensor, plan: Plan) -> Result<Option<Tensor>, String> {
    // SAFETY: both handles are live tensors (tch's `C_tensor` is an `at::Tensor`); `out` and
    // `err` are `shim_tensor`'s, valid for the call (the shim sets `out` only when it returns 1).
    crate::ops::shim_tensor(|out, err, len| unsafe {
        selfsup_conv_winograd(xs.as_ptr().cast(), ws.as_ptr().cast(), plan.bits(), out, err, len)
    })
}

/// What a CPU convolution's products run on, for [`plan_gemm`] and [`plan_bf16`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    /// bfloat16 (autocast or bf16 tensors) on a CPU with AMX.
    Bf16Amx,
    /// bfloat16 on a CPU with AVX512-BF16 and no AMX (AMD Zen 4).
    Bf16Avx512,
    /// bfloat16 on a CPU with neither (libtorch's convolutions).
    Bf16Other,
    /// float32 on a CPU with AVX-512.
    Fp32Avx512,
    /// Anything else (fp32 without AVX-512: there [`plan`] applies).
    Other,
}

impl Arith {
    /// What a convolution of `xs` runs on: bfloat16 when `xs` is bf16 or the CPU's autocast
    /// is on in bf16, float32 when `xs` is float, by this CPU's instruction sets.
    pub fn of(xs: &Tensor) -> Arith {
        match (runs_bf16(xs), xs.kind() == tch::Kind::Float) {
            (true, _) if crate::precision::cpu_has_amx() => Arith::Bf16Amx,
            (true, _) if crate::precision::cpu_supports_bf16() => Arith::Bf16Avx512,
            (true, _) => Arith::Bf16Other,
            (false, true) if avx512() => Arith::Fp32Avx512,
            _ => Arith::Other,
        }
    }
}

/// Whether a convolution of `xs` runs in bfloat16: `xs` is bf16, or the CPU's autocast is on
/// in bf16.
fn runs_bf16(xs: &Tensor) -> bool {
    xs.kind() == tch::Kind::BFloat16
        || matches!(
            crate::precision::autocast_dtype(tch::Device::Cpu),
            Ok(Some(tch::Kind::BFloat16))
        )
}

/// The passes of a bias-free `r×r` convolution with stride `s` from `c` to `k` channels onto an
/// `ho × wo` output map that run as matrix products over im2col columns ([`conv_gemm`]).
///
/// Measured on 2 cores of an Intel Xeon with AMX (family 6, model 167), batch 128,
/// channels-last, against libtorch 2.11's oneDNN (`cargo run --release -p selfsup-core
/// --example conv_gemm_probe [-- 2 fp32]`; `bench/README.md`, "Small maps as matrix
/// products"). In bf16 with AMX the products, which read the filter bank once for the whole
/// batch, win where the maps are small and the filters many:
/// - every pass at a 4×4 output map from 256 channels (ResNet-18's `layer4` with the CIFAR
///   stem, 512→512: forward 11.2 → 5.1 ms, to the input 12.0 → 6.7, to the weights
///   34.6 → 7.8; its 3×3 stride-2 256→512 layer: forward 4.3 → 2.5, weights 18.7 → 4.4; the
///   backward pass to the input as products only at stride 1);
/// - the backward pass to the weights of 3×3 layers at 8×8 outputs from 128 channels
///   (256→256: 10.5 → 7.1; 128→256 stride 2: 7.8 → 4.5; the NIN-192's 192→192: 6.3 → 5.1)
///   and of the 1×1 stride-2 shortcuts from 64 channels (2.7 → 1.7, 2.6 → 1.0, 2.8 → 0.6);
/// - the backward pass to the weights of 3×3 layers at 4×4 outputs from 64 channels (the
///   AlexNet-24's conv3..conv5 on CPC's 16-px patches, batch 1,600: 64→96 11.3-12.2 → 5.3-5.5,
///   96→96 11.8-12.8 → 5.9, 96→64 8.5 → 5.4; at batch 128: 1.0 → 0.5, 0.7 → 0.4; 2026-12-07);
/// - left to oneDNN: larger maps (3×3 at 16×16 and 32×32 outputs: 1.4-3× slower as products),
///   fewer channels (96 and under at 8×8: 1.3-1.5× slower), 1×1 stride-1 and 5×5 layers
///   (1.3-3× slower; 24→64 at 8×8, batch 1,600: weights 10.9 / 20.6), the forward passes at
///   8×8 outputs (1.1-1.7× slower) and the forward and input passes of the 4×4 maps under 256
///   channels (1.5-2× slower).
///
/// In fp32 with AVX-512 (MKL's products) only the 4×4 outputs from 256 channels gain (512→512:
/// forward 37.2 → 25.3, to the input 38.8 → 26.4, to the weights 37.0 → 26.9; 256→512 stride
/// 2: forward 19.5 → 12.4, weights 21.4 → 13.3); elsewhere the products ran 1.0-2× slower.
/// Without AVX-512 fp32 layers take Winograd ([`plan`]) instead.
///
/// In bf16 with AVX512-BF16 and no AMX (2 cores of an AMD EPYC Zen 4, `conv_gemm_probe`;
/// oneDNN's kernels there at the machine's peak) only the backward pass to the weights of the
/// 3×3 stride-2 layers at 8×8 outputs and less from 128 channels gains (128→256 at 16×16
/// inputs: 28.1 → 16.9 ms; 256→512 at 8×8: 22.1 → 15.0); every forward pass and the other
/// weight passes ran on par or slower (64→128 at 32×32: 25.7 / 25.7; 1×1 shortcuts 0.5-1.9×),
/// and the stride-1 layers take [`plan_bf16`]'s Winograd instead.
///
/// The 4×4 stride-2 layers of DCGAN's discriminator ([`conv_down`]; 2026-12-07, the same Xeon
/// with AMX, `conv_gemm_probe`, oneDNN / products, ms): in bf16 the backward pass to the weights
/// from 64 channels at 8×8 outputs and less (64→128 at 16×16 inputs: 3.8 → 2.5; 128→256 at
/// 8×8: 7.1 → 2.1; at 16×16: 12.7 → 8.3; 256→512 at 8×8: 37.6 → 8.3), every forward pass at
/// 4×4 outputs from 256 channels as for 3×3 (256→512: 10.7 → 5.8; 128→256 on par, 1.3 / 1.3);
/// left to oneDNN: 16×16 outputs (64→128 at 32×32: weights 8.3 / 12.9, forward 2.9 / 9.0) and
/// the first layer (3 channels in: 0.7 / 1.6). In fp32 those layers take Winograd's
/// [`plan_down`] before this plan.
///
/// A filter that covers the whole (padded) map, one output position (the discriminator's last
/// layer, 4×4 over a 4×4 map to one logit), is one matrix-vector product a pass: every pass as
/// products, in bf16 with AMX and in fp32 with AVX-512 (the same Xeon, 256 and 512 channels in:
/// bf16 forward and both backward passes 1.1-2.1 → 0.3-0.4 ms, fp32 1.0-2.0 → 0.3-0.5).
pub fn plan_gemm(r: i64, s: i64, c: i64, k: i64, ho: i64, wo: i64, arith: Arith) -> Plan {
    let (channels, positions) = (c.min(k), ho * wo);
    let fast = matches!(arith, Arith::Bf16Amx | Arith::Fp32Avx512);
    if fast && positions == 1 && r > 1 {
        return Plan { forward: true, input: s == 1, weight: true, ..Plan::default() };
    }
    let small = (r == 3 || r == 4) && positions <= 16 && channels >= 256;
    let weight = match (arith, r, s) {
        (Arith::Bf16Amx, 3, _) => {
            positions <= 64 && channels >= 128 || positions <= 16 && channels >= 64
        }
        (Arith::Bf16Amx, 4, 2) => positions <= 64 && channels >= 64,
        (Arith::Bf16Amx, 1, s) => s > 1 && channels >= 64,
        // Zen 4: the 3×3 stride-2 layers at 8×8 outputs and less from 128 channels.
        (Arith::Bf16Avx512, 3, s) => s > 1 && positions <= 64 && channels >= 128,
        (Arith::Fp32Avx512, ..) => small,
        _ => false,
    };
    let small = small && fast;
    Plan { forward: small, input: small && s == 1, weight, ..Plan::default() }
}

/// The passes of the bias-free convolution of `xs` with `ws` (stride `stride`, padding
/// `padding`, square filters) that run as matrix products: [`plan_gemm`]'s, or every pass with
/// `SELFSUP_CONV_GEMM=all`; `None` when none does (`off`, not a 4-d CPU input, no pass).
fn gemm_plan(xs: &Tensor, ws: &Tensor, stride: i64, padding: i64) -> Option<Plan> {
    if xs.dim() != 4 || ws.dim() != 4 || xs.device() != tch::Device::Cpu {
        return None;
    }
    let (k, s) = (ws.size(), xs.size());
    if k[2] != k[3] || stride < 1 {
        return None;
    }
    let plan = match gemm_mode() {
        Mode::Off => return None,
        Mode::All => Plan::ALL,
        Mode::Auto => {
            let out = |side: i64| (side + 2 * padding - k[2]) / stride + 1;
            plan_gemm(k[2], stride, s[1], k[0], out(s[2]), out(s[3]), Arith::of(xs))
        }
    };
    (plan != Plan::default()).then_some(plan)
}

/// The convolution of `xs` with `ws` by [`conv_gemm`] with [`gemm_plan`]'s passes; `None` where
/// it does not take it.
///
/// # Panics
/// When libtorch refuses the shapes, with its message (as `nn::Module::forward`).
fn gemm_or_none(xs: &Tensor, ws: &Tensor, stride: i64, padding: i64) -> Option<Tensor> {
    let plan = gemm_plan(xs, ws, stride, padding)?;
    match conv_gemm(xs, ws, stride, padding, plan) {
        Ok(y) => y,
        // The module interface has no error path; libtorch's message says what.
        Err(e) => panic!("{e}"),
    }
}

/// The convolution (no bias, one group, no dilation) of `xs` with `ws`, stride `stride` and
/// padding `padding`, with the passes of `plan` as matrix products over im2col columns
/// (`csrc/conv_gemm.cpp`; the backward pass to the input only at stride 1) and the others by
/// libtorch, as one autograd function. Under the CPU's bf16 autocast both are cast as
/// autocast's convolution casts them. `Ok(None)` when it does not take the convolution (an
/// empty plan; `xs` not a channels-last CPU tensor; not float or bf16; another autocast dtype;
/// oneDNN off), `Err` with libtorch's message when it refuses the shapes.
///
/// # Shapes
/// `xs`: `(N, C, H, W)` channels-last; `ws`: `(K, C, r, r)`; returns `(N, K, Ho, Wo)`
/// channels-last, `Ho = (H + 2 padding - r) / stride + 1` (`Wo` alike).
pub fn conv_gemm(
    xs: &Tensor,
    ws: &Tensor,
    stride: i64,
    padding: i64,
    plan: Plan,
) -> Result<Option<Tensor>, String> {
    // SAFETY: both handles are live tensors (tch's `C_tensor` is an `at::Tensor`); `out` and
    // `err` are `shim_tensor`'s, valid for the call (the shim sets `out` only when it returns 1).
    crate::ops::shim_tensor(|out, err, len| unsafe {
        selfsup_conv_gemm(
            xs.as_ptr().cast(),
            ws.as_ptr().cast(),
            stride,
            padding,
            plan.bits(),
            out,
            err,
            len,
        )
    })
}

/// How a convolution runs over its input: square stride, padding and dilation, its groups, and
/// whether it is transposed (an up-convolution), with its output padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The step between the filter's positions (of a transposed convolution: between the input's
    /// pixels in the output).
    pub stride: i64,
    /// Zeros around the input (of a transposed convolution: rows and columns cut off the output).
    pub padding: i64,
    /// The step between the filter's taps.
    pub dilation: i64,
    /// Groups of channels convolved apart.
    pub groups: i64,
    /// `Some(output padding)` for a transposed convolution: the extra rows and columns on the
    /// output's far side.
    pub transposed: Option<i64>,
}

impl Geometry {
    /// A convolution with `stride` and `padding`, no dilation and one group.
    pub const fn conv(stride: i64, padding: i64) -> Self {
        Geometry { stride, padding, dilation: 1, groups: 1, transposed: None }
    }

    /// The geometry of tch's `nn::conv2d` with `cfg`.
    pub fn of_conv(cfg: &nn::ConvConfig) -> Self {
        let (stride, padding) = (cfg.stride, cfg.padding);
        Geometry { stride, padding, dilation: cfg.dilation, groups: cfg.groups, transposed: None }
    }

    /// The geometry of tch's `nn::conv_transpose2d` with `cfg`.
    pub fn of_transpose(cfg: &nn::ConvTransposeConfig) -> Self {
        Geometry {
            stride: cfg.stride,
            padding: cfg.padding,
            dilation: cfg.dilation,
            groups: cfg.groups,
            transposed: Some(cfg.output_padding),
        }
    }
}

/// The convolution of a deterministic CPU run (`train.deterministic = true`, oneDNN off): oneDNN's
/// kernels on fixed pieces of 16 images (the last one with the remainder; a batch under 32 is two
/// halves), run single-threaded inside one parallel loop over the pieces (OpenMP's and MKL's thread
/// counts held to 1 in each), the gradients to the weights and bias summed in the pieces' order (in
/// float, rounded once), so every pass gives the same bits at any thread count
/// (`csrc/conv_det.cpp`). In place of libtorch's reference convolution (`slow_conv2d`, or NNPACK's
/// forward pass), which a deterministic run fell back to: a RotNet cpu-profile step (fp32, NCHW,
/// batch 64 × 4 rotations) took 604-623 ms with it, 93-100 ms with the pieces and 70 ms with oneDNN
/// free, on 2 cores of an AMD EPYC (Zen 4). A transposed `g` takes the same pieces, on oneDNN's
/// transposed kernels. Under the CPU's bf16 autocast the operands are cast as autocast's
/// convolution casts them. `Ok(None)` when it does not take the convolution (an empty batch, not a
/// 4-d CPU tensor, not float or bf16, another autocast dtype, libtorch without oneDNN); `Err` with
/// libtorch's message when it refuses the shapes, or naming a negative output padding. Until
/// 2026-12-07 batches under 16 images were left to libtorch's reference kernels, with which a
/// context-encoder run of batch 8 trained at 1 and then at 2 threads in one process ended with
/// other weights.
///
/// # Shapes
/// `xs`: `(N, C, H, W)`; `ws`: `(K, C / groups, r, s)` (transposed: `(C, K / groups, r, s)`);
/// `bs`: `(K)`; returns `(N, K, Ho, Wo)` channels-last when `xs` or `ws` is (as libtorch's
/// oneDNN convolution: a channels-last network's first layer takes NCHW images), else
/// contiguous; the gradient to `xs` likewise.
pub fn conv_det(
    xs: &Tensor,
    ws: &Tensor,
    bs: Option<&Tensor>,
    g: Geometry,
) -> Result<Option<Tensor>, String> {
    // The shim reads a negative output padding as "not transposed".
    if let Some(op) = g.transposed.filter(|&op| op < 0) {
        return Err(format!("transposed convolution: output padding {op} is negative"));
    }
    let b = bs.map_or(std::ptr::null(), |b| b.as_ptr().cast::<c_void>());
    // SAFETY: the handles are live tensors (tch's `C_tensor` is an `at::Tensor`) or null for no
    // bias; `out` and `err` are `shim_tensor`'s, valid for the call (the shim sets `out` only
    // when it returns 1).
    crate::ops::shim_tensor(|out, err, len| unsafe {
        selfsup_conv_det(
            xs.as_ptr().cast(),
            ws.as_ptr().cast(),
            b,
            g.stride,
            g.padding,
            g.dilation,
            g.groups,
            g.transposed.unwrap_or(-1),
            out,
            err,
            len,
        )
    })
}

/// [`conv_det`]'s convolution when this is a deterministic CPU run (oneDNN off, and
/// `SELFSUP_CONV_DET` not `off`) and it takes it; `None` otherwise.
///
/// # Panics
/// When libtorch refuses the shapes, with its message (as `nn::Module::forward`).
fn det_pieces(xs: &Tensor, ws: &Tensor, bs: Option<&Tensor>, g: Geometry) -> Option<Tensor> {
    if !det_paths_on() {
        return None;
    }
    match conv_det(xs, ws, bs, g) {
        Ok(y) => y,
        // The module interface has no error path; libtorch's message says what.
        Err(e) => panic!("deterministic convolution: {e}"),
    }
}

/// The convolution (or, with `g.transposed`, the transposed convolution) of `xs` with `ws` and
/// `bs`: [`conv_det`]'s pieces in a deterministic CPU run, otherwise [`plan_gemm`]'s passes as
/// matrix products where it takes a bias-free, ungrouped one ([`conv_gemm`]; the
/// discriminator's last layer, over its whole map) and libtorch's `conv2d` (or
/// `conv_transpose2d`), for the layers outside the encoders (heads, decoders,
/// discriminators). Those two are the ops autocast casts; libtorch's `convolution`, which this
/// called from 2026-12-07 until the same day's fix, is not, and a bf16 step of the context
/// encoder or CPC stopped at it ("Input type (CPUBFloat16Type) and weight type
/// (CPUFloatType) should be the same").
///
/// # Shapes
/// As [`conv_det`].
///
/// # Panics
/// When libtorch refuses the shapes, with its message (as `nn::Module::forward`).
pub fn convolution(xs: &Tensor, ws: &Tensor, bs: Option<&Tensor>, g: Geometry) -> Tensor {
    if let Some(y) = det_pieces(xs, ws, bs, g) {
        return y;
    }
    if bs.is_none() && g.transposed.is_none() && g.dilation == 1 && g.groups == 1 {
        if let Some(y) = gemm_or_none(xs, ws, g.stride, g.padding) {
            return y;
        }
    }
    let [s, p, d] = [[g.stride; 2], [g.padding; 2], [g.dilation; 2]];
    match g.transposed {
        None => xs.conv2d(ws, bs, s, p, d, g.groups),
        Some(op) => xs.conv_transpose2d(ws, bs, s, p, [op; 2], g.groups, d),
    }
}

/// The product `xs ws` of a deterministic CPU run: each pass (`Y = X W`, `dX = dY Wᵀ`,
/// `dW = Xᵀ dY`) one product a fixed block of 64 of its output's columns, single-threaded and
/// over libtorch's threads (OpenMP and MKL held to one thread in each), so every output is one
/// sum in an order fixed by the shapes and every pass gives the same bits at any thread count
/// (`csrc/conv_det.cpp`, `DetProduct`). Float blocks are MKL's products: libtorch's whole-batch
/// product splits the sum `Xᵀ dY` over the threads along the batch, and its fully connected
/// layers' products gave other bits at 2 threads than at 1 (`encoders::linear`). Bf16 blocks are
/// oneDNN's (switched on for the pass; libtorch's bf16 product with oneDNN off, as a deterministic run
/// has it, is its reference loop): under the CPU's bf16 autocast, float operands are cast to
/// bf16 first, as autocast's `mm`. `Ok(None)` when it does not take the product (an empty `xs`,
/// not 2-d CPU tensors both float or both bf16, another autocast dtype, a libtorch without MKL,
/// or without oneDNN for bf16); `Err` with libtorch's message when the inner sizes differ.
///
/// # Shapes
/// `xs`: `(N, A)`; `ws`: `(A, B)`; returns `(N, B)` in their (or autocast's) dtype.
pub fn mm_det(xs: &Tensor, ws: &Tensor) -> Result<Option<Tensor>, String> {
    // SAFETY: the handles are live tensors (tch's `C_tensor` is an `at::Tensor`); `out` and
    // `err` are `shim_tensor`'s, valid for the call.
    crate::ops::shim_tensor(|out, err, len| unsafe {
        selfsup_mm_det(xs.as_ptr().cast(), ws.as_ptr().cast(), out, err, len)
    })
}

/// The batched product `xs ws` of a deterministic CPU run, as [`mm_det`] (the same dtypes, autocast
/// cast and cases left to the caller): each pass (`Y = X W`, `dX = dY Wᵀ`, `dW = Xᵀ dY`) one
/// single-threaded product an entry of the batch, over libtorch's threads (`csrc/conv_det.cpp`,
/// `DetProduct<true>`). For the context encoder's channel-wise fully connected layer, one entry a
/// channel. `Err` with libtorch's message when the sizes do not match.
///
/// # Shapes
/// `xs`: `(G, N, A)`; `ws`: `(G, A, B)`; returns `(G, N, B)`.
pub fn bmm_det(xs: &Tensor, ws: &Tensor) -> Result<Option<Tensor>, String> {
    // SAFETY: as `mm_det`.
    crate::ops::shim_tensor(|out, err, len| unsafe {
        selfsup_bmm_det(xs.as_ptr().cast(), ws.as_ptr().cast(), out, err, len)
    })
}

/// Whether a bias-free `r×r` convolution with stride 1 and padding `(r - 1) / 2` from `c` to `k`
/// channels at an `h × w` map runs as one dense matrix product ([`conv_dense`]): the 3×3 layers
/// at maps of 2×2 and less (each output sees every input: no product by a padding zero) and the
/// 5×5 ones at 4×4 and less (12.25 of the 16 inputs an output on average), while the gathered
/// matrix (`(h·w)²·c·k` floats) stays within 64 MiB.
///
/// Measured with PyTorch's ops on 2 cores of an Intel Xeon (family 6, model 207, no AMX),
/// channels-last fp32, batch 256 (`bench/dense_probe.py`, medians of 30 calls; `bench/README.md`,
/// "The smallest maps as one product"), oneDNN / the product, forward + both backward passes,
/// ms: with AVX-512, 3×3 at 2×2 96→96 3.08 / 1.35, 64→96 2.03 / 0.90, 96→64 2.03 / 0.91
/// (relative patch's conv3 to conv5), 12→32 0.39 / 0.21, 256→256 23.3 / 8.4, 384→384
/// 76.6 / 19.7, at 1×1 96→96 0.87 / 0.28; 5×5 at 4×4 24→64 3.52 / 3.33 (relative patch's
/// conv2; its forward pass alone 0.71 / 1.77), 48→48 4.56 / 3.83, 12→24 1.15 / 0.73. Held to
/// AVX2 (as [`plan`]): 3×3 at 2×2 4.82 / 1.90, 3.45 / 1.37, 3.76 / 1.36, 0.67 / 0.23,
/// 33.1 / 13.0, 92.9 / 29.1, at 1×1 2.53 / 0.34; 5×5 at 4×4 6.54 / 5.13, 9.90 / 6.39,
/// 2.45 / 1.08. Left out: 3×3 at 4×4 (2.56× the products of the direct convolution; 64→64,
/// batch 128: 1.70 / 4.07, AVX2 2.96 / 6.49) and 5×5 at 8×8 (3→24: 1.98 / 2.40, 2.84 / 4.08).
pub fn plan_dense(r: i64, c: i64, k: i64, h: i64, w: i64) -> bool {
    let reach = match r {
        3 => 2,
        5 => 4,
        _ => return false,
    };
    let s = h * w;
    h >= 1 && w >= 1 && h <= reach && w <= reach && s * s * c * k <= 1 << 24
}

/// For every (input position `q`, output position `p`) pair of an `h × w` map, `q`-major, the
/// tap `ty·r + tx` of the `r×r` filter that links them (stride 1, padding `(r - 1) / 2`), or
/// `r·r` where the filter does not reach.
fn dense_taps(r: i64, h: i64, w: i64) -> Vec<i64> {
    let pad = (r - 1) / 2;
    let mut taps = Vec::with_capacity((h * w * h * w) as usize);
    for (qy, qx) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
        for (py, px) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
            let (ty, tx) = (qy - py + pad, qx - px + pad);
            let inside = (0..r).contains(&ty) && (0..r).contains(&tx);
            taps.push(if inside { ty * r + tx } else { r * r });
        }
    }
    taps
}

/// Whether [`conv_dense`] takes layers under the CPU's bf16 autocast: on CPUs with AMX (since
/// 2026-12-07; on 2 cores of an Intel Xeon, family 6, model 167, relative patch's cpu-profile
/// step in channels-last bf16 took 11.1-11.8 ms against 12.7-12.8 with oneDNN's bf16 kernels at
/// its 2×2 and 4×4 maps); without AMX unmeasured, left to libtorch.
fn bf16_dense() -> bool {
    crate::precision::cpu_has_amx()
}

/// The `r×r` convolution (stride 1, padding `(r - 1) / 2`, no bias) of `xs` with `ws` as one
/// matrix product: `Y = X W̃`, `X` the activations `(N, H·W·C)` (a view of channels-last
/// memory; NCHW activations are copied into that order, and the output back into theirs), `W̃`
/// `(H·W·C, H·W·K)` with `W̃[(q, c), (p, k)] = ws[k, c, tap(q, p)]` (zero where the filter does
/// not reach) gathered from the filters by one `index_select`. Built of libtorch's
/// differentiable ops: the backward passes are the two products `dX = dY W̃ᵀ`, `dW̃ = Xᵀ dY`
/// and the gather's sum back onto the taps. Each output is one sum of its terms in another
/// order than oneDNN's (relative 1e-6). In a deterministic run (oneDNN off) the products are
/// [`mm_det`]'s blocks, unless `SELFSUP_CONV_DET=off`. Under the CPU's bf16 autocast on a CPU
/// with AMX the product is autocast's bf16 one (fp32 sums, the output bf16), from a float or
/// bf16 `xs`. `None` when it does not take the convolution: `xs` not a 4-d float CPU tensor (or
/// bf16 under that autocast), `ws` not float `(K, C, r, r)` with `r` odd, another autocast (or
/// bf16 autocast without AMX), a deterministic run that [`mm_det`] declines.
///
/// # Shapes
/// `xs`: `(N, C, H, W)`; `ws`: `(K, C, r, r)`; returns `(N, K, H, W)` in `xs`'s memory format
/// (channels-last or NCHW). The gradient to `xs` is channels-last either way (for NCHW `xs`,
/// the backward pass of the copy).
pub fn conv_dense(xs: &Tensor, ws: &Tensor) -> Option<Tensor> {
    let cpu = |t: &Tensor, kinds: &[tch::Kind]| {
        kinds.contains(&t.kind()) && t.device() == tch::Device::Cpu
    };
    let (xsz, wsz) = (xs.size(), ws.size());
    let (&[n, c, h, w], &[k, wc, r, r2]) = (&xsz[..], &wsz[..]) else { return None };
    if wc != c || r != r2 || r % 2 == 0 {
        return None;
    }
    // Float, or under the CPU's bf16 autocast float filters and a float or bf16 input (the
    // previous layer's output), whose product autocast runs in bf16.
    let input_kinds = match crate::precision::autocast_dtype(tch::Device::Cpu) {
        Ok(None) => &[tch::Kind::Float][..],
        Ok(Some(tch::Kind::BFloat16)) if bf16_dense() => {
            &[tch::Kind::Float, tch::Kind::BFloat16][..]
        }
        _ => return None,
    };
    if !cpu(xs, input_kinds) || !cpu(ws, &[tch::Kind::Float]) {
        return None;
    }
    let det = !crate::determinism::mkldnn_enabled();
    if det && det_mode() == Mode::Off {
        return None;
    }
    let s = h * w;
    let taps = dense_taps(r, h, w);
    let mut filters = ws.permute([2, 3, 1, 0]).reshape([r * r, c, k]);
    if taps.contains(&(r * r)) {
        let zero = Tensor::zeros([1, c, k], (tch::Kind::Float, tch::Device::Cpu));
        filters = Tensor::cat(&[filters, zero], 0);
    }
    let dense = filters
        .index_select(0, &Tensor::from_slice(&taps))
        .view([s, s, c, k])
        .permute([0, 2, 1, 3])
        .reshape([s * c, s * k]);
    // A view where `xs` has the channels-last strides themselves, a copy otherwise.
    let channels_last = crate::precision::has_channels_last_strides(xs);
    let x = xs.permute([0, 2, 3, 1]).reshape([n, s * c]);
    let y = if det {
        match mm_det(&x, &dense) {
            Ok(Some(y)) => y,
            Ok(None) => return None,
            // The module interface has no error path; libtorch's message says what.
            Err(e) => panic!("dense convolution: {e}"),
        }
    } else {
        x.mm(&dense)
    };
    let y = y.view([n, h, w, k]).permute([0, 3, 1, 2]);
    Some(if channels_last { y } else { y.contiguous() })
}

/// A convolution of an encoder: `nn::Conv2D`, with Winograd where [`plan`] (or
/// `SELFSUP_WINOGRAD`) takes it and as matrix products where [`plan_gemm`] (or
/// `SELFSUP_CONV_GEMM`) does (see the module docs).
#[derive(Debug)]
pub struct Conv2d {
    /// The layer: its `ws` `(K, C, k, k)` and optional `bs`.
    pub inner: nn::Conv2D,
    /// Whether it is a 1×1, 3×3 or 5×5 convolution with stride 1, padding `(k - 1) / 2`, no
    /// dilation, one group and no bias (tch keeps the configuration private) that may take
    /// selfsup's kernels.
    winograd_shaped: bool,
    /// Whether it may take selfsup's own CPU kernels (Winograd, the products): an encoder's.
    own_kernels: bool,
    geometry: Geometry,
}

impl Conv2d {
    /// A bias-free `k×k` convolution of one group and no dilation on `p` (see
    /// [`super::conv2d`]).
    pub(crate) fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, cfg: nn::ConvConfig) -> Self {
        let mut conv = Conv2d::head(p, c_in, c_out, k, cfg);
        conv.own_kernels = true;
        conv.winograd_shaped = (k == 1 || k == 3 || k == 5)
            && cfg.stride == 1
            && cfg.padding == (k - 1) / 2
            && cfg.dilation == 1
            && cfg.groups == 1
            && !cfg.bias;
        conv
    }

    /// tch's `nn::conv2d(p, c_in, c_out, k, cfg)` (the same variables) for a layer outside the
    /// encoders: a head's, a decoder's or a discriminator's. It runs libtorch's convolution, and
    /// in deterministic CPU runs [`conv_det`]'s pieces in place of libtorch's reference kernels;
    /// none of selfsup's own kernels, whose plans were measured at the encoders' shapes.
    pub fn head(p: nn::Path, c_in: i64, c_out: i64, k: i64, cfg: nn::ConvConfig) -> Self {
        let geometry = Geometry::of_conv(&cfg);
        let inner = nn::conv2d(p, c_in, c_out, k, cfg);
        Conv2d { inner, winograd_shaped: false, own_kernels: false, geometry }
    }

    /// Its stride and padding when it may take selfsup's kernels and has no dilation, one group
    /// and no bias (the shape [`conv_gemm`] takes).
    fn gemm_shaped(&self) -> Option<(i64, i64)> {
        let Geometry { stride, padding, dilation, groups, .. } = self.geometry;
        (self.own_kernels && dilation == 1 && groups == 1 && self.inner.bs.is_none())
            .then_some((stride, padding))
    }

    /// The Winograd passes for an input `(N, C, H, W)`.
    fn plan_for(&self, xs: &Tensor) -> Plan {
        if !self.winograd_shaped || xs.dim() != 4 {
            return Plan::default();
        }
        let k = self.inner.ws.size();
        let s = xs.size();
        match mode() {
            Mode::Off => Plan::default(),
            Mode::All => Plan::ALL,
            Mode::Auto => match Arith::of(xs) {
                Arith::Bf16Avx512 => plan_bf16(k[2], s[1], k[0], s[2], s[3]),
                // bf16 elsewhere: with AMX, oneDNN's AMX kernels and `plan_gemm`'s products;
                // without bf16 instructions, libtorch's.
                Arith::Bf16Amx | Arith::Bf16Other => Plan::default(),
                _ => plan(k[2], s[1], k[0], s[2], s[3], avx512()),
            },
        }
    }

    /// Whether the layer runs as one dense product ([`plan_dense`]) for an input `(N, C, H, W)`:
    /// 3×3 and 5×5 layers of [`Conv2d::plan_for`]'s shape unless `SELFSUP_CONV_GEMM=off`.
    fn dense_for(&self, xs: &Tensor) -> bool {
        if !self.winograd_shaped || xs.dim() != 4 || gemm_mode() == Mode::Off {
            return false;
        }
        let (k, s) = (self.inner.ws.size(), xs.size());
        plan_dense(k[2], s[1], k[0], s[2], s[3])
    }

    /// The passes as matrix products for an input `(N, C, H, W)`, with its stride and padding.
    #[cfg(test)]
    fn gemm_plan_for(&self, xs: &Tensor) -> Option<(Plan, i64, i64)> {
        let (stride, padding) = self.gemm_shaped()?;
        Some((gemm_plan(xs, &self.inner.ws, stride, padding)?, stride, padding))
    }
}

impl nn::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        // An encoder's first layer in a channels-last run gets the images in NCHW: laid out
        // channels-last here, once, rather than by libtorch's convolution in its forward pass
        // and again in its backward pass (under bf16 autocast after its cast to bf16, which
        // keeps the layout: 0.6 ms each for RotNet's cpu batch of 256 images on an AMX Xeon).
        let nhwc;
        let xs = if self.own_kernels
            && xs.device() == tch::Device::Cpu
            && xs.dim() == 4
            && xs.size()[1] > 1
            && crate::precision::has_channels_last_strides(&self.inner.ws)
            && !crate::precision::is_channels_last(xs)
        {
            nhwc = crate::precision::to_channels_last(xs)
                .unwrap_or_else(|e| panic!("channels-last input of a convolution: {e}"));
            &nhwc
        } else {
            xs
        };
        if self.dense_for(xs) {
            if let Some(y) = conv_dense(xs, &self.inner.ws) {
                return y;
            }
        }
        if let Some(y) = det_pieces(xs, &self.inner.ws, self.inner.bs.as_ref(), self.geometry) {
            return y;
        }
        let plan = self.plan_for(xs);
        if plan != Plan::default() {
            match conv_winograd(xs, &self.inner.ws, plan) {
                Ok(Some(y)) => return y,
                Ok(None) => {}
                // The module interface has no error path; libtorch's message says what.
                Err(e) => panic!("Winograd convolution: {e}"),
            }
        }
        if let Some((stride, padding)) = self.gemm_shaped() {
            if let Some(y) = gemm_or_none(xs, &self.inner.ws, stride, padding) {
                return y;
            }
        }
        xs.apply(&self.inner)
    }
}

/// A transposed convolution outside the encoders (a decoder's up-convolution): tch's
/// `nn::ConvTranspose2D`, run by libtorch, and in deterministic CPU runs by [`conv_det`]'s
/// pieces in place of libtorch's reference kernels.
#[derive(Debug)]
pub struct ConvTranspose2d {
    /// The layer: its `ws` `(C, K / groups, k, k)` and optional `bs` `(K)`.
    pub inner: nn::ConvTranspose2D,
    geometry: Geometry,
}

impl ConvTranspose2d {
    /// tch's `nn::conv_transpose2d(p, c_in, c_out, k, cfg)`, the same variables.
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, k: i64, cfg: nn::ConvTransposeConfig) -> Self {
        let geometry = Geometry::of_transpose(&cfg);
        ConvTranspose2d { inner: nn::conv_transpose2d(p, c_in, c_out, k, cfg), geometry }
    }
}

impl nn::Module for ConvTranspose2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        match det_pieces(xs, &self.inner.ws, self.inner.bs.as_ref(), self.geometry) {
            Some(y) => y,
            None => xs.apply(&self.inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.abs().max().double_value(&[]);
        (a - b).abs().max().double_value(&[]) / scale
    }

    /// Output, input gradient and weight gradient of the convolution through `f`.
    fn passes(
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        f: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let w = w.detach().set_requires_grad(true);
        let y = f(&x, &w);
        (y.shallow_clone() * dy).sum(Kind::Float).backward();
        (y.detach(), x.grad(), w.grad())
    }

    /// Asserts each pass of `got` (output, input gradient, weight gradient, as [`passes`] gives
    /// them) within `tol` of `want`'s largest value, compared in f32.
    fn assert_passes_within(
        got: &(Tensor, Tensor, Tensor),
        want: &(Tensor, Tensor, Tensor),
        tol: f64,
        what: &str,
    ) {
        for (name, a, b) in [
            ("output", &got.0, &want.0),
            ("input gradient", &got.1, &want.1),
            ("weight gradient", &got.2, &want.2),
        ] {
            let e = max_rel(&a.to_kind(Kind::Float), &b.to_kind(Kind::Float));
            assert!(e < tol, "{what}: {name} off by {e:e} of its largest value (bound {tol:e})");
        }
    }

    /// The copies of the `(5, 3, 13, 11)` input (a shape no other test runs) a forward and
    /// backward pass of a channels-last layer makes from the NCHW input, and the input's
    /// gradient and the layer's output.
    fn copies_of_the_input(conv: &Conv2d, x: &Tensor) -> (u64, Tensor, Tensor) {
        use crate::op_counts::{enable_keyed, take, Key};
        let x = x.detach().set_requires_grad(true);
        enable_keyed(true, Key::Shapes).unwrap();
        let y = x.apply(conv);
        y.sum(Kind::Float).backward();
        enable_keyed(false, Key::Shapes).unwrap();
        let copies = take()
            .unwrap()
            .iter()
            .filter(|c| c.name.starts_with("aten::copy_") && c.name.contains("[5, 3, 13, 11]"))
            .map(|c| c.calls)
            .sum();
        (copies, y.detach(), x.grad())
    }

    #[test]
    fn an_nchw_input_to_channels_last_filters_is_laid_out_once() {
        let _serial = crate::op_counts::COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = crate::encoders::conv2d(vs.root() / "c", 3, 8, 5, 1, 2);
        crate::precision::set_channels_last(&vs).unwrap();
        let x = Tensor::randn([5, 3, 13, 11], (Kind::Float, Device::Cpu));
        let xl = crate::precision::to_channels_last(&x).unwrap();
        // One copy: the layout before the layer (libtorch's convolution made its own in its
        // forward and backward passes: three here, two in RotNet's bf16 step).
        let (copies, y, dx) = copies_of_the_input(&conv, &x);
        assert_eq!(copies, 1);
        // The same output and input gradient as from a channels-last input, which is not
        // copied.
        let (copies, yl, dxl) = copies_of_the_input(&conv, &xl);
        assert_eq!(copies, 0);
        assert!(crate::determinism::same_bits(&y, &yl));
        assert!(crate::determinism::same_bits(&dx, &dxl));
        assert!(crate::precision::is_channels_last(&y));
        // An NCHW network leaves its input as it is.
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = crate::encoders::conv2d(vs.root() / "c", 3, 8, 5, 1, 2);
        let (_, y, _) = copies_of_the_input(&conv, &x);
        assert!(!crate::precision::is_channels_last(&y));
    }

    #[test]
    fn every_pass_matches_the_direct_convolution() {
        tch::manual_seed(0);
        // Even and odd sides, NCHW and channels-last, more and fewer output channels.
        for (r, n, c, k, h, w, cl) in [
            (3, 4, 8, 16, 6, 6, false),
            (3, 3, 5, 4, 7, 5, true),
            (3, 2, 16, 8, 4, 4, true),
            (5, 3, 6, 10, 8, 8, true),
            (5, 2, 4, 3, 5, 7, false),
            (1, 3, 6, 5, 4, 5, true),
            (1, 4, 5, 7, 3, 3, false),
        ] {
            let opts = (Kind::Float, Device::Cpu);
            let mut x = Tensor::randn([n, c, h, w], opts);
            let mut dy = Tensor::randn([n, k, h, w], opts);
            if cl {
                x = crate::precision::to_channels_last(&x).unwrap();
                dy = crate::precision::to_channels_last(&dy).unwrap();
            }
            let mut wt = Tensor::randn([k, c, r, r], opts) * 0.2;
            // A channels-last network's filters are channels-last too.
            if cl {
                wt = crate::precision::to_channels_last(&wt).unwrap();
            }
            let p = (r - 1) / 2;
            let direct = passes(&x, &wt, &dy, |x, w| {
                x.conv2d(w, None::<&Tensor>, [1, 1], [p, p], [1, 1], 1)
            });
            let plans = [
                Plan::ALL,
                Plan { forward: true, ..Plan::default() },
                Plan { input: true, ..Plan::default() },
                Plan { weight: true, ..Plan::default() },
            ];
            // Tiles of 4×4 too (1×1: the flag is ignored).
            for plan in plans.into_iter().flat_map(|p| [p, Plan { tile4: true, ..p }]) {
                let got =
                    passes(&x, &wt, &dy, |x, w| conv_winograd(x, w, plan).unwrap().expect("taken"));
                let what = format!("{r}x{r}, {n}x{c}x{h}x{w} -> {k}, cl {cl}, {plan:?}");
                assert_eq!(got.0.size(), [n, k, h, w], "{what}");
                assert_eq!(
                    crate::precision::is_channels_last(&got.0),
                    cl,
                    "{what}: output in the input's memory format"
                );
                if r > 1 {
                    assert_eq!(
                        crate::precision::is_channels_last(&got.2),
                        cl,
                        "{what}: weight gradient in the filters' memory format"
                    );
                }
                for (name, a, b) in [
                    ("output", &got.0, &direct.0),
                    ("input gradient", &got.1, &direct.1),
                    ("weight gradient", &got.2, &direct.2),
                ] {
                    // The 5x5 transforms (entries up to 5 and down to 1/24) round more: its
                    // weight gradient came out up to 1.1e-5 off with other tests running beside
                    // (MKL's and oneDNN's sums split by the threads free).
                    let tol = if r == 5 && name == "weight gradient" { 4e-5 } else { 1e-5 };
                    let e = max_rel(a, b);
                    assert!(e < tol, "{what}: {name} off by {e:e} of its largest value");
                }
            }
        }
    }

    #[test]
    fn tiles_of_4x4_stay_near_the_float64_convolution_at_full_width() {
        tch::manual_seed(3);
        // The NIN-192's 5×5 layer of block 2 and 3×3 layer of blocks 3-4, ResNet-18's `layer4`:
        // each pass against the float64 convolution, F(4×4) and F(2×2). Seen on a model-207
        // Xeon: F(4×4) 2.8e-6 to 1.1e-5 of each pass's largest value, F(2×2) 2.4e-7 to 1.2e-5
        // (its 5×5 weight gradient), oneDNN's fp32 2.1e-7 to 2.9e-6.
        for (r, c, k, side) in [(5, 96, 192, 16), (3, 192, 192, 8), (3, 512, 512, 4)] {
            let opts = (Kind::Double, Device::Cpu);
            let x = crate::precision::to_channels_last(&Tensor::randn([2, c, side, side], opts))
                .unwrap();
            let dy = crate::precision::to_channels_last(&Tensor::randn([2, k, side, side], opts))
                .unwrap();
            let w = Tensor::randn([k, c, r, r], opts) * (2.0 / (c * r * r) as f64).sqrt();
            let p = (r - 1) / 2;
            let direct =
                |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [1, 1], [p, p], [1, 1], 1);
            let want = passes(&x, &w, &dy, direct);
            let [x, dy, w] = [&x, &dy, &w].map(|t| t.to_kind(Kind::Float));
            for tile4 in [false, true] {
                let plan = Plan { tile4, ..Plan::ALL };
                let got =
                    passes(&x, &w, &dy, |x, w| conv_winograd(x, w, plan).unwrap().expect("taken"));
                for (name, a, b) in [
                    ("output", &got.0, &want.0),
                    ("input gradient", &got.1, &want.1),
                    ("weight gradient", &got.2, &want.2),
                ] {
                    let e = max_rel(a, &b.to_kind(Kind::Float));
                    let what = format!("{r}x{r}, {c} -> {k} at {side}, tile4 {tile4}: {name}");
                    assert!(e < 3e-5, "{what} off by {e:e} of its largest value");
                }
            }
        }
    }

    /// `t` in channels-last when `cl`, else as it is.
    fn channels_last_if(cl: bool, t: Tensor) -> Tensor {
        if cl {
            crate::precision::to_channels_last(&t).unwrap()
        } else {
            t
        }
    }

    /// `sqrt(mean((a - b)²) / mean(b²))`, in float64.
    fn rel_rms(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
        let diff = (&a - &b).square().mean(None).double_value(&[]);
        (diff / b.square().mean(None).double_value(&[])).sqrt()
    }

    #[test]
    fn bf16_winograd_stays_within_a_few_roundings_of_float64() {
        tch::manual_seed(4);
        // bf16 F(2×2, 3×3), and F(4×4) on the widened values (3×3 asked, 5×5 always), each pass
        // against the float64 convolution of the same bf16 values, beside oneDNN's bf16
        // convolution's own error (the NIN-192's layers at a smaller batch, an odd-sided NCHW
        // layer). Seen on a Zen 4 (`winograd_probe -- 2 bf16`, batch 128): forward 5.0-5.4e-3
        // in bf16 F(2×2, 3×3) (fused: 4.2-4.5e-3), 1.7e-3 widened and by oneDNN.
        // Where the CPU has AVX512-BF16, the passes of the layers of 64 positions and more
        // (output channels a multiple of 16; bf16 3×3: even input channels; the weight pass:
        // input channels a multiple of 16) run fused (`csrc/winograd_fused.cpp`): each layer both
        // ways, the odd sides' tiles past the map's edge.
        for (r, n, c, k, h, w, cl) in [
            (3, 2, 192, 192, 8, 8, true),
            (3, 3, 16, 24, 7, 5, false),
            (3, 2, 32, 48, 9, 11, false),
            (5, 2, 96, 192, 16, 16, true),
            (5, 2, 8, 12, 5, 7, false),
            (5, 2, 16, 32, 9, 10, false),
        ] {
            let cl_of = |t: Tensor| channels_last_if(cl, t);
            let opts = (Kind::BFloat16, Device::Cpu);
            let x = cl_of(Tensor::randn([n, c, h, w], opts));
            let dy = cl_of(Tensor::randn([n, k, h, w], opts));
            let wt = cl_of(Tensor::randn([k, c, r, r], opts) * (2.0 / (c * r * r) as f64).sqrt());
            let p = (r - 1) / 2;
            let direct =
                |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [1, 1], [p, p], [1, 1], 1);
            let [x64, dy64, w64] = [&x, &dy, &wt].map(|t| t.to_kind(Kind::Double));
            let want = passes(&x64, &w64, &dy64, direct);
            let onednn = passes(&x, &wt, &dy, direct);
            for (tile4, fused) in [(false, true), (false, false), (true, true), (true, false)] {
                let plan = Plan { tile4, ..Plan::ALL };
                fused_bf16(Some(fused));
                let got =
                    passes(&x, &wt, &dy, |x, w| conv_winograd(x, w, plan).unwrap().expect("taken"));
                fused_bf16(Some(true));
                let what = format!(
                    "{r}x{r}, {n}x{c}x{h}x{w} -> {k}, cl {cl}, tile4 {tile4}, fused {fused}"
                );
                assert_eq!(got.0.kind(), Kind::BFloat16, "{what}: bf16 output");
                assert_eq!(got.2.kind(), Kind::BFloat16, "{what}: bf16 weight gradient");
                assert_eq!(crate::precision::is_channels_last(&got.0), cl, "{what}: format");
                let widened = tile4 || r == 5;
                for (name, got, onednn, want) in [
                    ("output", &got.0, &onednn.0, &want.0),
                    ("input gradient", &got.1, &onednn.1, &want.1),
                    ("weight gradient", &got.2, &onednn.2, &want.2),
                ] {
                    let (e, e_onednn) = (rel_rms(got, want), rel_rms(onednn, want));
                    // Widened: float's rounding, then bf16's once, as oneDNN's (seen: the same
                    // to 1e-5 of it); bf16 F(2×2): a few bf16 roundings (2^-9 each) more (seen:
                    // 4.8-5.2e-3 against oneDNN's 1.6-1.7e-3 in every pass).
                    let bound =
                        if widened { 1.01 * e_onednn + 1e-5 } else { 4.0 * e_onednn + 2e-3 };
                    assert!(e < bound, "{what}: {name} off by {e:e} (oneDNN's bf16: {e_onednn:e})");
                }
            }
            // Under the CPU's bf16 autocast, from float tensors: bf16 output, float gradients
            // to the float leaves, the same values as from the bf16 tensors.
            let [xf, dyf, wf] = [&x, &dy, &wt].map(|t| t.to_kind(Kind::Float));
            let bf16 = crate::precision::Precision::Bf16;
            let plan = Plan::ALL;
            let cast = crate::precision::autocast(Device::Cpu, bf16, || {
                passes(&xf, &wf, &dyf, |x, w| conv_winograd(x, w, plan).unwrap().expect("taken"))
            });
            let exact = passes(&x, &wt, &dy, |x, w| conv_winograd(x, w, plan).unwrap().unwrap());
            let what = format!("{r}x{r}, {c} -> {k} under autocast");
            assert_eq!(cast.0.kind(), Kind::BFloat16, "{what}: output");
            assert_eq!((cast.1.kind(), cast.2.kind()), (Kind::Float, Kind::Float), "{what}");
            assert!(cast.0.equal(&exact.0), "{what}: the forward pass of the bf16 tensors");
            assert!(rel_rms(&cast.1, &exact.1) < 1e-3, "{what}: input gradient");
            assert!(rel_rms(&cast.2, &exact.2) < 1e-3, "{what}: weight gradient");
        }
    }

    #[test]
    fn a_pass_in_pieces_of_one_image_sums_as_the_whole_batch() {
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([5, 6, 6, 6], opts);
        let dy = Tensor::randn([5, 7, 6, 6], opts);
        let w = Tensor::randn([7, 6, 3, 3], opts) * 0.2;
        let direct =
            passes(&x, &w, &dy, |x, w| x.conv2d(w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1));
        for plan in [Plan::ALL, Plan { tile4: true, ..Plan::ALL }] {
            let conv = |x: &Tensor, w: &Tensor| conv_winograd(x, w, plan).unwrap().unwrap();
            let whole = passes(&x, &w, &dy, conv);
            // One byte a piece: one image a piece (other tests running meanwhile only get
            // slower).
            let before = piece_bytes(Some(1));
            let pieces = passes(&x, &w, &dy, conv);
            piece_bytes(Some(before));
            assert_eq!(before, 64 << 20);
            // The matrix products of fewer rows may take other kernels: rounding apart, the
            // same (F(4×4)'s transforms, with entries up to 8, scale that rounding up: 1.8e-6
            // seen on the forward pass).
            let (what, tol) = (format!("{plan:?}"), if plan.tile4 { 1e-5 } else { 1e-6 });
            assert!(max_rel(&pieces.0, &whole.0) < tol, "{what}: forward");
            assert!(max_rel(&pieces.1, &whole.1) < tol, "{what}: backward to the input");
            let e = max_rel(&pieces.2, &whole.2);
            assert!(e < tol, "{what}: backward to the weights, sums regrouped");
            let e = max_rel(&pieces.2, &direct.2);
            assert!(e < 1e-5, "{what}: and still the convolution's");
        }
        // bf16 F(2×2, 3×3): the weight gradient's transformed sums added in float piece after
        // piece, each piece's products rounded to bf16 once, so pieces and the whole batch
        // differ by bf16 roundings only; the other passes do not sum over images. `direct`
        // is the float convolution of the float values.
        let [x, dy, w] = [&x, &dy, &w].map(|t| t.to_kind(Kind::BFloat16));
        let conv = |x: &Tensor, w: &Tensor| conv_winograd(x, w, Plan::ALL).unwrap().unwrap();
        let whole = passes(&x, &w, &dy, conv);
        let before = piece_bytes(Some(1));
        let pieces = passes(&x, &w, &dy, conv);
        piece_bytes(Some(before));
        // (Products of fewer rows may take other kernels: a bf16 rounding apart at most.)
        assert!(rel_rms(&pieces.0, &whole.0) < 2e-3, "bf16: forward");
        assert!(rel_rms(&pieces.1, &whole.1) < 2e-3, "bf16: backward to the input");
        let e = rel_rms(&pieces.2, &whole.2);
        assert!(e < 1e-2, "bf16: backward to the weights, sums regrouped: {e:e}");
        let e = rel_rms(&pieces.2, &direct.2);
        assert!(e < 1e-2, "bf16: and still the convolution's: {e:e}");
    }

    #[test]
    fn it_leaves_what_it_does_not_take_to_libtorch() {
        let x = Tensor::randn([2, 4, 4, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 4, 3, 3], (Kind::Float, Device::Cpu));
        assert!(conv_winograd(&x, &w, Plan::default()).unwrap().is_none(), "empty plan");
        // bf16: 3×3 and 5×5 (1×1 layers stay libtorch's, and the 4×4 stride-2 ones but where
        // the fused bf16 passes take them: output channels in multiples of 16, not these 4).
        let bf16_of = |t: &Tensor| t.to_kind(Kind::BFloat16);
        let w1 = Tensor::randn([4, 4, 1, 1], (Kind::Float, Device::Cpu));
        let w4 = Tensor::randn([4, 4, 4, 4], (Kind::Float, Device::Cpu));
        assert!(conv_winograd(&bf16_of(&x), &bf16_of(&w1), Plan::ALL).unwrap().is_none(), "1x1");
        assert!(conv_winograd(&bf16_of(&x), &bf16_of(&w4), Plan::ALL).unwrap().is_none(), "4x4");
        let mixed = conv_winograd(&bf16_of(&x), &w, Plan::ALL).unwrap();
        assert!(mixed.is_none(), "bf16 input, float weights");
        let strided = x.transpose(2, 3);
        assert!(conv_winograd(&strided, &w, Plan::ALL).unwrap().is_none(), "not dense");
        let bf16 = crate::precision::Precision::Bf16;
        let under_autocast = crate::precision::autocast(Device::Cpu, bf16, || {
            conv_winograd(&x, &w1, Plan::ALL).unwrap().is_none()
        });
        assert!(under_autocast, "autocast, 1x1");
        let err = conv_winograd(&x, &w.narrow(1, 0, 3), Plan::ALL).unwrap_err();
        assert!(err.contains("Winograd convolution: input [2, 4, 4, 4]"), "{err}");
    }

    #[test]
    fn the_stride_2_convolution_matches_the_direct_one_whole_and_in_pieces() {
        tch::manual_seed(2);
        let opts = (Kind::Float, Device::Cpu);
        let direct =
            |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [2, 2], [1, 1], [1, 1], 1);
        // Sides with an even and an odd number of output rows, NCHW and channels-last, channel
        // counts off the blocks of eight; then pieces of one image.
        for (n, c, k, h, w, cl, piece) in [
            (3, 5, 7, 8, 8, false, None),
            (2, 8, 16, 6, 10, true, None),
            (4, 3, 9, 4, 2, true, None),
            (5, 16, 12, 8, 6, false, Some(1)),
            (3, 12, 8, 10, 4, true, Some(1)),
        ] {
            let mut x = Tensor::randn([n, c, h, w], opts);
            let mut dy = Tensor::randn([n, k, h / 2, w / 2], opts);
            if cl {
                x = crate::precision::to_channels_last(&x).unwrap();
                dy = crate::precision::to_channels_last(&dy).unwrap();
            }
            let wt = Tensor::randn([k, c, 4, 4], opts) * 0.2;
            let want = passes(&x, &wt, &dy, direct);
            // Channels-last inputs with filters in either memory format (a channels-last
            // network's are channels-last).
            let wcl = crate::precision::to_channels_last(&wt).unwrap();
            let filters = if cl { vec![&wt, &wcl] } else { vec![&wt] };
            let plans = [Plan::ALL, Plan { weight: true, ..Plan::default() }];
            for (plan, wt) in plans.into_iter().flat_map(|p| filters.iter().map(move |w| (p, *w))) {
                let before = piece.map(|b| piece_bytes(Some(b)));
                let got = passes(&x, wt, &dy, |x, w| {
                    conv_down_winograd(x, w, plan).unwrap().expect("taken")
                });
                if let Some(b) = before {
                    piece_bytes(Some(b));
                }
                let wcl = crate::precision::is_channels_last(wt);
                let what = format!(
                    "{n}x{c}x{h}x{w} -> {k}, cl {cl}, filters cl {wcl}, pieces {piece:?}, {plan:?}"
                );
                assert_eq!(got.0.size(), [n, k, h / 2, w / 2], "{what}");
                let format = crate::precision::is_channels_last(&got.0);
                assert_eq!(format, cl, "{what}: output in the input's memory format");
                if plan.forward {
                    let e = max_rel(&got.0, &want.0);
                    assert!(e < 1e-6, "{what}: output off by {e:e} of its largest value");
                } else {
                    assert!(got.0.equal(&want.0), "{what}: libtorch's forward pass");
                }
                assert!(got.1.equal(&want.1), "{what}: libtorch's backward pass to the input");
                assert_eq!(got.2.size(), [k, c, 4, 4], "{what}");
                let format = crate::precision::is_channels_last(&got.2);
                assert_eq!(format, wcl, "{what}: weight gradient in the filters' memory format");
                let e = max_rel(&got.2, &want.2);
                assert!(e < 1e-5, "{what}: weight gradient off by {e:e} of its largest value");
            }
        }
    }

    #[test]
    fn the_stride_2_convolution_leaves_odd_sides_and_frozen_weights_to_libtorch() {
        let opts = (Kind::Float, Device::Cpu);
        let w = Tensor::randn([4, 3, 4, 4], opts);
        let odd = Tensor::randn([2, 3, 7, 8], opts);
        assert!(conv_down_winograd(&odd, &w, Plan::ALL).unwrap().is_none(), "odd side");
        let input = Plan { input: true, ..Plan::default() };
        let x = Tensor::randn([2, 3, 8, 8], opts);
        assert!(conv_down_winograd(&x, &w, input).unwrap().is_none(), "its input pass: never");
        assert_eq!(conv_down(&odd, &w).size(), [2, 4, 3, 4], "libtorch's, floor(7 / 2)");
        let xb = x.to_kind(Kind::BFloat16);
        assert!(
            conv_down_winograd(&xb, &w.to_kind(Kind::BFloat16), Plan::ALL).unwrap().is_none(),
            "bf16, 3 channels in and 4 out"
        );
        let err = conv_down_winograd(&x, &w.narrow(1, 0, 2), Plan::ALL).unwrap_err();
        assert!(err.contains("Winograd convolution: input [2, 3, 8, 8]"), "{err}");
        let err = conv_down_winograd(&x, &w.narrow(2, 0, 3), Plan::ALL).unwrap_err();
        assert_eq!(err, "4×4 stride-2 convolution: weight [4, 3, 3, 4] (expected (K, C, 4, 4))");
        // Weights held constant (the generator's scoring): the input's gradient only.
        let xg = x.set_requires_grad(true);
        let y = conv_down_winograd(&xg, &w, Plan::ALL).unwrap().unwrap();
        y.sum(Kind::Float).backward();
        assert!(xg.grad().defined() && !w.grad().defined());
    }

    #[test]
    fn bf16_stride_2_convolution_stays_within_a_few_roundings_of_float64() {
        tch::manual_seed(6);
        // The fused bf16 F(2×2, 2×2) (`csrc/winograd_fused.cpp`, CPUs with AVX512-BF16), each
        // pass against the float64 convolution of the same bf16 values, beside oneDNN's bf16
        // convolution's own error: the discriminator's layers at a smaller batch, NCHW layers
        // with odd tile counts (3 × 5 outputs: tiles past the map's edge), input channels off
        // the blocks of 16 (the backward pass to the input then libtorch's), and the weight pass
        // alone. Seen on a Zen 4 (`winograd_probe -- 2 bf16`, batch 128): 4.6e-3 forward,
        // 3.8-4.4e-3 to the weights, oneDNN 1.6-1.7e-3; here 4.4-4.7e-3 to the input.
        let direct =
            |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [2, 2], [1, 1], [1, 1], 1);
        let weight = Plan { weight: true, ..Plan::default() };
        let input = Plan { input: true, ..Plan::default() };
        for (n, c, k, h, w, cl, plan) in [
            (2, 64, 128, 16, 16, true, Plan::ALL),
            (2, 128, 32, 8, 8, true, Plan::ALL),
            (3, 12, 16, 6, 10, false, Plan::ALL),
            (3, 16, 32, 6, 10, false, Plan::ALL),
            (2, 64, 48, 8, 12, true, weight),
            (2, 32, 16, 12, 8, true, input),
        ] {
            let cl_of = |t: Tensor| channels_last_if(cl, t);
            let opts = (Kind::BFloat16, Device::Cpu);
            let x = cl_of(Tensor::randn([n, c, h, w], opts));
            let dy = cl_of(Tensor::randn([n, k, h / 2, w / 2], opts));
            let wt = cl_of(Tensor::randn([k, c, 4, 4], opts) * (2.0 / (c * 16) as f64).sqrt());
            let what = format!("{n}x{c}x{h}x{w} -> {k}, cl {cl}, {plan:?}");
            if conv_down_winograd(&x, &wt, plan).unwrap().is_none() {
                assert!(!crate::precision::cpu_supports_bf16(), "{what}: not taken");
                continue;
            }
            let [x64, dy64, w64] = [&x, &dy, &wt].map(|t| t.to_kind(Kind::Double));
            let want = passes(&x64, &w64, &dy64, direct);
            let onednn = passes(&x, &wt, &dy, direct);
            let got = passes(&x, &wt, &dy, |x, w| {
                conv_down_winograd(x, w, plan).unwrap().expect("taken")
            });
            assert_eq!(got.0.kind(), Kind::BFloat16, "{what}: bf16 output");
            assert_eq!(got.2.kind(), Kind::BFloat16, "{what}: bf16 weight gradient");
            assert_eq!(got.2.size(), [k, c, 4, 4], "{what}");
            assert_eq!(crate::precision::is_channels_last(&got.0), cl, "{what}: output format");
            assert_eq!(crate::precision::is_channels_last(&got.2), cl, "{what}: filters' format");
            assert_eq!(got.1.kind(), Kind::BFloat16, "{what}: bf16 input gradient");
            assert_eq!(crate::precision::is_channels_last(&got.1), cl, "{what}: input's format");
            // The backward pass to the input fused from 16 input channels on, else libtorch's.
            let fused_input = plan.input && c % 16 == 0;
            for (pass, ours, got, onednn, want) in [
                ("output", plan.forward, &got.0, &onednn.0, &want.0),
                ("input gradient", fused_input, &got.1, &onednn.1, &want.1),
                ("weight gradient", plan.weight, &got.2, &onednn.2, &want.2),
            ] {
                if !ours {
                    assert!(got.equal(onednn), "{what}: libtorch's {pass}");
                    continue;
                }
                let (e, e_onednn) = (rel_rms(got, want), rel_rms(onednn, want));
                // A few bf16 roundings (2^-9 each) more than oneDNN's: the transformed tiles
                // rounded to bf16 (F(2×2, 2×2)'s transforms add up to four values).
                assert!(
                    e < 4.0 * e_onednn + 2e-3,
                    "{what}: {pass} off by {e:e} (oneDNN's bf16: {e_onednn:e})"
                );
            }
            // Under the CPU's bf16 autocast, from float tensors: bf16 output, the same values
            // as from the bf16 tensors, float gradients to the float leaves.
            let [xf, dyf, wf] = [&x, &dy, &wt].map(|t| t.to_kind(Kind::Float));
            let bf16 = crate::precision::Precision::Bf16;
            let cast = crate::precision::autocast(Device::Cpu, bf16, || {
                passes(&xf, &wf, &dyf, |x, w| {
                    conv_down_winograd(x, w, plan).unwrap().expect("taken")
                })
            });
            assert_eq!(cast.0.kind(), Kind::BFloat16, "{what} under autocast: output");
            assert_eq!((cast.1.kind(), cast.2.kind()), (Kind::Float, Kind::Float), "{what}");
            assert!(cast.0.equal(&got.0), "{what} under autocast: the bf16 tensors' forward pass");
            assert!(rel_rms(&cast.2, &got.2) < 1e-2, "{what} under autocast: weight gradient");
            assert!(rel_rms(&cast.1, &got.1) < 1e-2, "{what} under autocast: input gradient");
        }
    }

    #[test]
    fn the_plan_takes_the_discriminators_wide_layers() {
        let weight = Plan { weight: true, ..Plan::default() };
        let both = Plan { forward: true, ..weight };
        // The context encoder's discriminator at the cpu profile (32 px, width 64).
        assert_eq!(plan_down(3, 64, 32, 32, false), Plan::default(), "3 channels in");
        assert_eq!(plan_down(64, 128, 16, 16, false), both);
        assert_eq!(plan_down(128, 256, 8, 8, false), weight);
        // The paper profile's (128 px), after the first.
        assert_eq!(plan_down(64, 128, 64, 64, false), both);
        assert_eq!(plan_down(128, 256, 32, 32, false), both);
        assert_eq!(plan_down(256, 512, 16, 16, false), both);
        assert_eq!(plan_down(512, 512, 8, 8, false), both);
        // With AVX-512: both passes from 64 channels on.
        assert_eq!(plan_down(128, 256, 8, 8, true), both);
        assert_eq!(plan_down(64, 128, 16, 16, true), both);
        assert_eq!(plan_down(512, 512, 8, 8, true), both);
        assert_eq!(plan_down(3, 64, 32, 32, true), Plan::default(), "3 channels in, AVX-512");
        assert_eq!(plan_down(32, 64, 16, 16, false), Plan::default(), "narrow");
        // bf16 on AVX512-BF16 without AMX: the weight pass from 64 channels, the forward pass
        // and the backward pass to the input from 16×16 inputs.
        assert_eq!(plan_down_bf16(3, 64, 32, 32), Plan::default(), "bf16, 3 channels in");
        assert_eq!(plan_down_bf16(64, 128, 16, 16), Plan::ALL);
        assert_eq!(plan_down_bf16(128, 256, 8, 8), weight);
        assert_eq!(plan_down_bf16(64, 128, 64, 64), Plan::ALL);
        assert_eq!(plan_down_bf16(256, 512, 16, 16), Plan::ALL);
        assert_eq!(plan_down_bf16(512, 512, 8, 8), weight);
        assert_eq!(plan_down_bf16(32, 64, 16, 16), Plan::default(), "bf16, narrow");
        assert_eq!(plan_down_bf16(72, 128, 16, 16), both, "bf16, input channels off the 16s");
    }

    #[test]
    fn the_plan_takes_the_small_maps_with_many_channels() {
        let weight = Plan { weight: true, ..Plan::default() };
        let tile4 = Plan { tile4: true, ..Plan::ALL };
        // Without AVX-512: every pass in tiles of 4x4 of the 3x3 layers at 4x4 to 32x32 from 64
        // channels and of the 5x5 ones at 8x8 to 16x16 from 24, whatever C·K·H·W; F(2x2)'s
        // weight pass of the others from 64 channels and 2^21 (the 1x1 layers' as products).
        // ResNet-18 (CIFAR stem) at 32 px: layer1..layer4.
        assert_eq!(plan(3, 64, 64, 32, 32, false), tile4);
        assert_eq!(plan(3, 128, 128, 16, 16, false), tile4);
        assert_eq!(plan(3, 256, 256, 8, 8, false), tile4);
        assert_eq!(plan(3, 512, 512, 4, 4, false), tile4);
        // The NIN-192's blocks 3 and 4, and its 5x5 blocks' maps; larger maps; the cpu
        // profiles' narrow networks.
        assert_eq!(plan(3, 192, 192, 8, 8, false), tile4);
        assert_eq!(plan(3, 192, 192, 16, 16, false), tile4);
        assert_eq!(plan(3, 128, 128, 32, 32, false), tile4);
        assert_eq!(plan(3, 64, 64, 56, 56, false), weight);
        assert_eq!(plan(3, 32, 32, 8, 8, false), Plan::default());
        assert_eq!(plan(3, 48, 96, 16, 16, false), Plan::default());
        // The cpu profiles' AlexNet of width 24, conv2 to conv5: on 32-px images, on jigsaw's
        // and CPC's 16-px tiles, on relative-patch's 8-px patches (left: 5x5 at 4x4, 3x3 at 2x2).
        for side in [8, 4] {
            assert_eq!(plan(3, 64, 96, side, side, false), tile4, "{side}");
            assert_eq!(plan(3, 96, 96, side, side, false), tile4, "{side}");
            assert_eq!(plan(3, 96, 64, side, side, false), tile4, "{side}");
            assert_eq!(plan(5, 24, 64, 2 * side, 2 * side, false), tile4, "{side}");
        }
        assert_eq!(plan(5, 24, 64, 4, 4, false), Plan::default());
        assert_eq!(plan(3, 96, 96, 2, 2, false), Plan::default());
        // The NIN-192's 5x5 layers: block 2's, and block 1's first (3 channels in); the
        // NIN-32's block 2 (16 channels in).
        assert_eq!(plan(5, 96, 192, 16, 16, false), tile4);
        assert_eq!(plan(5, 96, 192, 32, 32, false), weight);
        assert_eq!(plan(5, 3, 192, 32, 32, false), Plan::default());
        assert_eq!(plan(5, 16, 32, 16, 16, false), Plan::default());
        // 1x1: the NIN-192's (blocks 1, 2, 3-4), 128 channels, the cpu profiles' NIN-32.
        assert_eq!(plan(1, 192, 160, 32, 32, false), weight);
        assert_eq!(plan(1, 160, 96, 32, 32, false), weight);
        assert_eq!(plan(1, 192, 192, 16, 16, false), weight);
        assert_eq!(plan(1, 192, 192, 8, 8, false), weight);
        assert_eq!(plan(1, 128, 128, 16, 16, false), weight);
        assert_eq!(plan(1, 128, 128, 8, 8, false), Plan::default());
        assert_eq!(plan(1, 32, 27, 32, 32, false), Plan::default());
        // With AVX-512: the 3x3 layers at 16x16 and less from 128 channels and the 5x5 ones
        // from 96, every pass in tiles of 4x4; no other.
        for (r, c, k, side) in [
            (3, 512, 512, 4),
            (3, 256, 512, 4),
            (3, 256, 256, 8),
            (3, 192, 192, 8),
            (3, 128, 128, 16),
            (5, 96, 192, 16),
        ] {
            assert_eq!(plan(r, c, k, side, side, true), tile4, "{r}x{r}, {c} -> {k} at {side}");
        }
        assert_eq!(plan(3, 64, 64, 32, 32, true), Plan::default());
        assert_eq!(plan(3, 128, 128, 32, 32, true), Plan::default());
        assert_eq!(plan(3, 96, 96, 8, 8, true), Plan::default());
        assert_eq!(plan(5, 24, 64, 16, 16, true), Plan::default());
        assert_eq!(plan(5, 96, 192, 32, 32, true), Plan::default());
        assert_eq!(plan(5, 3, 192, 32, 32, true), Plan::default());
        assert_eq!(plan(1, 192, 160, 32, 32, true), Plan::default());
        assert_eq!(plan(1, 192, 192, 8, 8, true), Plan::default());
    }

    #[test]
    fn encoder_layers_take_it_by_their_shape_and_configuration() {
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = |name: &str, c, k, size, stride, padding| {
            super::super::conv2d(vs.root() / name, c, k, size, stride, padding)
        };
        let x = Tensor::zeros([2, 512, 4, 4], (Kind::Float, Device::Cpu));
        let want = match mode() {
            Mode::Auto => Plan { tile4: true, ..Plan::ALL },
            _ => Plan::default(),
        };
        if mode() != Mode::All {
            assert_eq!(conv("a", 512, 512, 3, 1, 1).plan_for(&x), want);
            // In bf16: `plan_bf16` on CPUs with AVX512-BF16 and no AMX, nothing elsewhere.
            let bf16 = crate::precision::Precision::Bf16;
            let under_autocast = crate::precision::autocast(Device::Cpu, bf16, || {
                conv("a", 512, 512, 3, 1, 1).plan_for(&x)
            });
            let amx = crate::precision::cpu_has_amx();
            let want = match mode() {
                Mode::Auto if !amx && crate::precision::cpu_supports_bf16() => {
                    plan_bf16(3, 512, 512, 4, 4)
                }
                _ => Plan::default(),
            };
            assert_eq!(under_autocast, want, "bf16 autocast");
        }
        assert_eq!(conv("b", 512, 512, 3, 2, 1).plan_for(&x), Plan::default(), "stride 2");
        let weight = Plan { weight: true, ..Plan::default() };
        if mode() == Mode::Auto && !has_avx512() {
            assert_eq!(conv("c", 512, 512, 1, 1, 0).plan_for(&x), weight, "1x1");
        }
        assert_eq!(conv("e", 512, 512, 1, 2, 0).plan_for(&x), Plan::default(), "1x1 stride 2");
        assert_eq!(conv("d", 512, 512, 3, 1, 0).plan_for(&x), Plan::default(), "padding 0");
        // As matrix products: by the arithmetic the step runs in on this CPU.
        let (a, b) = (conv("a", 512, 512, 3, 1, 1), conv("b", 512, 512, 3, 2, 1));
        let fp32 = if gemm_mode() == Mode::Auto && avx512() { Some(Plan::ALL) } else { None };
        if gemm_mode() != Mode::All {
            assert_eq!(a.gemm_plan_for(&x).map(|g| g.0), fp32, "fp32");
            let bf16 = crate::precision::Precision::Bf16;
            let under_autocast = crate::precision::autocast(Device::Cpu, bf16, || {
                (a.gemm_plan_for(&x), b.gemm_plan_for(&x.to_kind(Kind::BFloat16)))
            });
            let forward = Plan { forward: true, weight: true, ..Plan::default() };
            let weight = Plan { weight: true, ..Plan::default() };
            let want = match gemm_mode() {
                Mode::Auto if crate::precision::cpu_has_amx() => {
                    (Some((Plan::ALL, 1, 1)), Some((forward, 2, 1)))
                }
                Mode::Auto if crate::precision::cpu_supports_bf16() => (None, Some((weight, 2, 1))),
                _ => (None, None),
            };
            assert_eq!(under_autocast, want, "bf16 autocast; bf16 input (4x4 -> 2x2 at stride 2)");
        }
        let biased = Conv2d::new(
            vs.root() / "f",
            512,
            512,
            3,
            nn::ConvConfig { padding: 1, ..Default::default() },
        );
        assert_eq!(biased.gemm_plan_for(&x), None, "with a bias");
    }

    /// The direct convolution with stride `s` and padding `p` (libtorch's).
    fn direct(s: i64, p: i64) -> impl Fn(&Tensor, &Tensor) -> Tensor {
        move |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [s, s], [p, p], [1, 1], 1)
    }

    /// The passes of [`conv_gemm`] with `plan`, which must take the convolution.
    fn gemm(s: i64, p: i64, plan: Plan) -> impl Fn(&Tensor, &Tensor) -> Tensor {
        move |x: &Tensor, w: &Tensor| conv_gemm(x, w, s, p, plan).unwrap().expect("taken")
    }

    #[test]
    fn the_products_match_the_direct_convolution_whole_and_in_pieces() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let cl = |t: Tensor| crate::precision::to_channels_last(&t).unwrap();
        let weight = Plan { weight: true, ..Plan::default() };
        let forward = Plan { forward: true, ..Plan::default() };
        let input = Plan { input: true, ..Plan::default() };
        // (r, stride, padding, N, C, K, H, W, pieces): 3x3 same and valid at strides 1 and 2,
        // the 1x1 stride-2 shortcut, 5x5, the 4x4 stride-2 discriminator layer, odd sides and
        // channel counts, filters over the whole 4x4 map (the discriminator's last layer);
        // pieces of one image (forward passes) and one filter row (weights).
        for (r, s, p, n, c, k, h, w, piece) in [
            (3, 1, 1, 3, 8, 16, 6, 6, None),
            (3, 1, 1, 2, 5, 7, 7, 5, None),
            (3, 2, 1, 3, 6, 4, 7, 8, None),
            (3, 1, 0, 2, 4, 6, 6, 5, None),
            (1, 2, 0, 3, 6, 10, 8, 7, None),
            (1, 1, 0, 2, 5, 3, 4, 4, None),
            (5, 1, 2, 2, 3, 8, 9, 9, None),
            (4, 2, 1, 2, 6, 5, 8, 6, None),
            (4, 1, 0, 3, 6, 1, 4, 4, None),
            (4, 1, 0, 2, 5, 3, 4, 4, None),
            (3, 1, 1, 4, 6, 9, 5, 6, Some(1)),
            (3, 2, 1, 3, 7, 5, 9, 9, Some(1)),
        ] {
            let x = cl(Tensor::randn([n, c, h, w], opts));
            let wt = cl(Tensor::randn([k, c, r, r], opts)) * 0.2;
            let (ho, wo) = ((h + 2 * p - r) / s + 1, (w + 2 * p - r) / s + 1);
            let dy = cl(Tensor::randn([n, k, ho, wo], opts));
            let want = passes(&x, &wt, &dy, direct(s, p));
            // The input pass alone at stride 2 is nothing to take (tested below).
            let plans = if s == 1 {
                vec![Plan::ALL, forward, input, weight]
            } else {
                vec![Plan::ALL, forward, weight]
            };
            for plan in plans {
                let before = piece.map(|b| piece_bytes(Some(b)));
                let got = passes(&x, &wt, &dy, gemm(s, p, plan));
                if let Some(b) = before {
                    piece_bytes(Some(b));
                }
                let what =
                    format!("{r}x{r} s{s} p{p}, {n}x{c}x{h}x{w} -> {k}, {piece:?}, {plan:?}");
                assert_eq!(got.0.size(), [n, k, ho, wo], "{what}");
                assert!(crate::precision::is_channels_last(&got.0), "{what}: channels-last");
                assert_eq!(got.2.size(), [k, c, r, r], "{what}");
                for (name, taken, a, b) in [
                    ("output", plan.forward, &got.0, &want.0),
                    ("input gradient", plan.input && s == 1, &got.1, &want.1),
                    ("weight gradient", plan.weight, &got.2, &want.2),
                ] {
                    let e = max_rel(a, b);
                    // Another order of the same sums; libtorch's own passes as they are.
                    let tol = if taken { 1e-5 } else { 1e-7 };
                    assert!(e < tol, "{what}: {name} off by {e:e} of its largest value");
                }
            }
        }
    }

    #[test]
    fn bf16_products_round_once_and_autocast_casts_as_for_libtorchs_convolution() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let cl = |t: Tensor| crate::precision::to_channels_last(&t).unwrap();
        for (r, s, p, c, k, side) in
            [(3, 1, 1, 32, 48, 4), (3, 2, 1, 16, 32, 8), (1, 2, 0, 24, 40, 8)]
        {
            let bf = |t: Tensor| t.to_kind(Kind::BFloat16);
            let x = cl(Tensor::randn([6, c, side, side], opts));
            let wt = cl(Tensor::randn([k, c, r, r], opts)) * 0.1;
            let ho = (side + 2 * p - r) / s + 1;
            let dy = cl(Tensor::randn([6, k, ho, ho], opts));
            let what = format!("{r}x{r} s{s}, {c} -> {k} at {side}");
            // bf16 tensors: against the same values in fp32, within one bf16 rounding (2^-8 of
            // a value; the largest value's scale as the bound).
            let exact = passes(
                &bf(x.copy()).to_kind(Kind::Float),
                &bf(wt.copy()).to_kind(Kind::Float),
                &bf(dy.copy()).to_kind(Kind::Float),
                direct(s, p),
            );
            let got = passes(&bf(x.copy()), &bf(wt.copy()), &bf(dy.copy()), gemm(s, p, Plan::ALL));
            assert_eq!(got.0.kind(), Kind::BFloat16, "{what}");
            assert_eq!(got.2.kind(), Kind::BFloat16, "{what}");
            assert_passes_within(&got, &exact, 1.0 / 256.0, &format!("{what}, bf16"));
            // Under autocast: bf16 output, fp32 gradients to fp32 leaves, as libtorch's own.
            let bf16 = crate::precision::Precision::Bf16;
            let ours = crate::precision::autocast(Device::Cpu, bf16, || {
                passes(&x, &wt, &dy, gemm(s, p, Plan::ALL))
            });
            let theirs = crate::precision::autocast(Device::Cpu, bf16, || {
                passes(&x, &wt, &dy, direct(s, p))
            });
            assert_eq!(ours.0.kind(), Kind::BFloat16, "{what}: autocast output");
            assert_eq!((ours.1.kind(), ours.2.kind()), (Kind::Float, Kind::Float), "{what}");
            assert_passes_within(&ours, &theirs, 1.0 / 128.0, &format!("{what}, autocast"));
        }
    }

    #[test]
    fn the_products_leave_what_they_do_not_take_and_name_bad_shapes() {
        let opts = (Kind::Float, Device::Cpu);
        let w = crate::precision::to_channels_last(&Tensor::randn([4, 3, 3, 3], opts)).unwrap();
        let nchw = Tensor::randn([2, 3, 5, 5], opts);
        let x = crate::precision::to_channels_last(&nchw).unwrap();
        assert!(conv_gemm(&nchw, &w, 1, 1, Plan::ALL).unwrap().is_none(), "NCHW");
        assert!(conv_gemm(&x, &w, 1, 1, Plan::default()).unwrap().is_none(), "empty plan");
        let input = Plan { input: true, ..Plan::default() };
        assert!(conv_gemm(&x, &w, 2, 1, input).unwrap().is_none(), "input pass at stride 2");
        let double = |t: &Tensor| t.to_kind(Kind::Double);
        assert!(conv_gemm(&double(&x), &double(&w), 1, 1, Plan::ALL).unwrap().is_none(), "f64");
        let err = conv_gemm(&x, &w.narrow(1, 0, 2), 1, 1, Plan::ALL).unwrap_err();
        assert!(err.contains("convolution by matrix products: input [2, 3, 5, 5]"), "{err}");
        let err = conv_gemm(&x, &w, 1, 3, Plan::ALL).unwrap_err();
        assert!(err.contains("padding 3"), "{err}");
        // Weights held constant: the input's gradient only.
        let xg = x.set_requires_grad(true);
        conv_gemm(&xg, &w, 1, 1, Plan::ALL).unwrap().unwrap().sum(Kind::Float).backward();
        assert!(xg.grad().defined() && !w.grad().defined());
    }

    #[test]
    fn the_products_take_small_maps_with_many_channels() {
        let weight = Plan { weight: true, ..Plan::default() };
        let forward = Plan { forward: true, ..weight };
        let amx = |r, s, c, k, side| plan_gemm(r, s, c, k, side, side, Arith::Bf16Amx);
        // ResNet-18 (CIFAR stem) at 32 px, by output side: layer1..layer4's 3x3 stride 1, the
        // 3x3 stride-2 and 1x1 stride-2 layers opening layer2..layer4.
        assert_eq!(amx(3, 1, 64, 64, 32), Plan::default());
        assert_eq!(amx(3, 1, 128, 128, 16), Plan::default());
        assert_eq!(amx(3, 1, 256, 256, 8), weight);
        assert_eq!(amx(3, 1, 512, 512, 4), Plan::ALL);
        assert_eq!(amx(3, 2, 64, 128, 16), Plan::default());
        assert_eq!(amx(3, 2, 128, 256, 8), weight);
        assert_eq!(amx(3, 2, 256, 512, 4), forward, "its input pass: libtorch's at stride 2");
        for (c, k, side) in [(64, 128, 16), (128, 256, 8), (256, 512, 4)] {
            assert_eq!(amx(1, 2, c, k, side), weight, "1x1 stride 2, {c} -> {k}");
        }
        // The NIN-192: 3x3 blocks 3-4, its 1x1 and 5x5 layers; the cpu profiles' AlexNet-24.
        assert_eq!(amx(3, 1, 192, 192, 8), weight);
        assert_eq!(amx(1, 1, 192, 192, 8), Plan::default());
        assert_eq!(amx(5, 1, 96, 192, 16), Plan::default());
        assert_eq!(amx(3, 1, 96, 96, 8), Plan::default());
        // The AlexNet-24's conv3..conv5 at 4x4 maps (CPC's 16-px patches, jigsaw's tiles): the
        // weight pass from 64 channels; narrower, nothing.
        assert_eq!(amx(3, 1, 64, 96, 4), weight);
        assert_eq!(amx(3, 1, 96, 64, 4), weight);
        assert_eq!(amx(3, 1, 48, 64, 4), Plan::default());
        // fp32 with AVX-512: the 4x4 maps from 256 channels only; nothing elsewhere.
        let fp32 = |r, s, c, k, side| plan_gemm(r, s, c, k, side, side, Arith::Fp32Avx512);
        assert_eq!(fp32(3, 1, 512, 512, 4), Plan::ALL);
        assert_eq!(fp32(3, 2, 256, 512, 4), forward);
        assert_eq!(fp32(3, 1, 256, 256, 8), Plan::default());
        assert_eq!(fp32(1, 2, 256, 512, 4), Plan::default());
        assert_eq!(plan_gemm(3, 1, 512, 512, 4, 4, Arith::Other), Plan::default());
        // bf16 without AMX (Zen 4): the 3x3 stride-2 layers' weight pass at 8x8 outputs and
        // less from 128 channels; nothing else (the stride-1 layers: `plan_bf16`).
        let zen4 = |r, s, c, k, side| plan_gemm(r, s, c, k, side, side, Arith::Bf16Avx512);
        assert_eq!(zen4(3, 2, 64, 128, 16), Plan::default());
        assert_eq!(zen4(3, 2, 128, 256, 8), weight);
        assert_eq!(zen4(3, 2, 256, 512, 4), weight, "no forward pass at 4x4");
        assert_eq!(zen4(3, 1, 512, 512, 4), Plan::default());
        assert_eq!(zen4(1, 2, 256, 512, 4), Plan::default());
        // DCGAN's discriminator (4x4 stride 2, by output side) at the cpu profile (32 px, width
        // 64) and wider: with AMX the weight pass from 64 channels at 8x8 outputs and less, the
        // forward pass too at 4x4 from 256; fp32 and Zen 4 leave them (`plan_down` first).
        assert_eq!(amx(4, 2, 3, 64, 16), Plan::default(), "3 channels in");
        assert_eq!(amx(4, 2, 64, 128, 8), weight);
        assert_eq!(amx(4, 2, 128, 256, 4), weight);
        assert_eq!(amx(4, 2, 128, 256, 8), weight);
        assert_eq!(amx(4, 2, 64, 128, 16), Plan::default(), "16x16 outputs");
        assert_eq!(amx(4, 2, 256, 512, 4), forward);
        assert_eq!(zen4(4, 2, 128, 256, 4), Plan::default());
        // Its last layer, a filter over the whole 4x4 map: every pass, with AMX or AVX-512.
        assert_eq!(amx(4, 1, 256, 1, 1), Plan::ALL);
        assert_eq!(fp32(4, 1, 512, 1, 1), Plan::ALL);
        assert_eq!(zen4(4, 1, 256, 1, 1), Plan::default());
        assert_eq!(plan_gemm(4, 1, 256, 1, 1, 1, Arith::Other), Plan::default());
        assert_eq!(amx(1, 1, 256, 10, 1), Plan::default(), "1x1 filters on 1x1 maps");
    }

    #[test]
    fn the_discriminators_layers_take_the_products_where_planned() {
        tch::manual_seed(8);
        // conv_down (4x4 stride 2) and `convolution` (the last layer over the whole map), each
        // pass: conv_gemm's where `gemm_plan` takes the layer on this CPU (the same bits), else
        // libtorch's; against libtorch's convolution in either case.
        let down = |x: &Tensor, w: &Tensor| conv_down(x, w);
        let last = |x: &Tensor, w: &Tensor| convolution(x, w, None, Geometry::conv(1, 0));
        for kind in [Kind::Float, Kind::BFloat16] {
            if kind == Kind::BFloat16 && !crate::precision::cpu_supports_bf16() {
                continue;
            }
            let opts = (kind, Device::Cpu);
            let cl = |t: Tensor| crate::precision::to_channels_last(&t).unwrap();
            for (c, k, side, stride, padding) in [(128, 256, 8, 2, 1), (256, 1, 4, 1, 0)] {
                let x = cl(Tensor::randn([3, c, side, side], opts));
                let wt = cl(Tensor::randn([k, c, 4, 4], opts) * (1.0 / (c * 16) as f64).sqrt());
                let out = (side + 2 * padding - 4) / stride + 1;
                let dy = cl(Tensor::randn([3, k, out, out], opts));
                let what = format!("{kind:?} {c} -> {k} at {side}");
                let f = if stride == 2 { down } else { last };
                let got = passes(&x, &wt, &dy, f);
                let want = passes(&x, &wt, &dy, direct(stride, padding));
                // bf16: two roundings apart, or a few more where the fused bf16 Winograd of
                // `plan_down_bf16` takes the layer (AVX512-BF16 without AMX).
                let tol = if kind == Kind::Float { 1e-5 } else { 1.0 / 32.0 };
                assert_passes_within(&got, &want, tol, &format!("{what} against libtorch's"));
                // (Where `plan_down`'s Winograd takes a 4x4 stride-2 layer first, the products
                // take none of it: fp32, and bf16 without AMX.)
                let Some(plan) = gemm_plan(&x, &wt, stride, padding) else { continue };
                let ours = passes(&x, &wt, &dy, gemm(stride, padding, plan));
                for (name, a, b) in [
                    ("output", &got.0, &ours.0),
                    ("input gradient", &got.1, &ours.1),
                    ("weight gradient", &got.2, &ours.2),
                ] {
                    assert!(a.equal(b), "{what}: {name} not the products' ({plan:?})");
                }
            }
        }
    }

    #[test]
    fn bf16_winograd_takes_the_layers_it_was_measured_faster_at() {
        let (f, i, wt) = (true, true, true);
        let plan = |forward, input, weight, tile4| Plan { forward, input, weight, tile4 };
        // ResNet-18 (CIFAR stem): layers 1-3 whole (fused), layer4 without its input pass
        // (unfused: 4x4).
        assert_eq!(plan_bf16(3, 64, 64, 32, 32), plan(f, i, wt, false));
        assert_eq!(plan_bf16(3, 128, 128, 16, 16), plan(f, i, wt, false));
        assert_eq!(plan_bf16(3, 256, 256, 8, 8), plan(f, i, wt, false));
        assert_eq!(plan_bf16(3, 512, 512, 4, 4), plan(f, false, wt, false));
        // The NIN-192: 3x3 blocks 3-4 in bf16, the 5x5 layer of block 2 widened to float in
        // tiles of 4x4, its first layer (3 channels in) and 1x1 layers left.
        assert_eq!(plan_bf16(3, 192, 192, 8, 8), plan(f, i, wt, false));
        assert_eq!(plan_bf16(5, 96, 192, 16, 16), plan(f, i, wt, true));
        assert_eq!(plan_bf16(5, 3, 192, 32, 32), Plan::default());
        assert_eq!(plan_bf16(1, 192, 192, 8, 8), Plan::default());
        // The AlexNets: the cpu profiles' width 24 at 8x8 fused, at 4x4 and its 5x5 layers
        // left; the ImageNet one's 13x13 layers taken.
        assert_eq!(plan_bf16(3, 96, 96, 8, 8), plan(f, i, wt, false));
        assert_eq!(plan_bf16(3, 64, 96, 8, 8), plan(f, i, wt, false));
        assert_eq!(plan_bf16(3, 72, 96, 8, 8), plan(f, i, false, false), "72 in: weights oneDNN's");
        assert_eq!(plan_bf16(3, 96, 96, 4, 4), Plan::default());
        // Channels the fused pass does not take (output channels off the multiples of 16) and
        // maps past those measured: left.
        assert_eq!(plan_bf16(3, 64, 72, 16, 16), Plan::default());
        assert_eq!(plan_bf16(3, 64, 64, 64, 64), Plan::default());
        assert_eq!(plan_bf16(5, 24, 64, 16, 16), Plan::default());
        assert_eq!(plan_bf16(3, 384, 384, 13, 13), plan(f, i, wt, false));
    }

    /// [`convolution`] outside a deterministic run, under the CPU's bf16 autocast: a bf16 input
    /// (an earlier layer's output) with float weights and bias, as the context encoder's
    /// discriminator and CPC's context network meet it, is cast as `conv2d` and
    /// `conv_transpose2d` cast it (libtorch's `convolution` refused it).
    #[test]
    fn convolution_runs_under_bf16_autocast_with_a_bf16_input() {
        if !crate::precision::cpu_supports_bf16() {
            return;
        }
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 4, 6, 6], opts);
        let b = Tensor::randn([3], opts);
        let bf16 = crate::precision::Precision::Bf16;
        for g in [Geometry::conv(1, 0), Geometry { transposed: Some(1), ..Geometry::conv(2, 1) }] {
            let w = match g.transposed {
                None => Tensor::randn([3, 4, 3, 3], opts),
                Some(_) => Tensor::randn([4, 3, 3, 3], opts),
            };
            let want = convolution(&x, &w, Some(&b), g);
            let got = crate::precision::autocast(Device::Cpu, bf16, || {
                convolution(&x.to_kind(Kind::BFloat16), &w, Some(&b), g)
            });
            assert_eq!(got.kind(), Kind::BFloat16, "{g:?}");
            assert_eq!(got.size(), want.size(), "{g:?}");
            assert!(max_rel(&got.to_kind(Kind::Float), &want) < 0.05, "{g:?}");
        }
    }

    #[test]
    fn the_dense_product_matches_the_direct_convolution_in_every_pass() {
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        let cl = |t: Tensor| crate::precision::to_channels_last(&t).unwrap();
        // 3x3 at 2x2, 2x1 and 1x1, 5x5 at 4x4, 3x4 and 2x2; channel counts off the blocks of
        // eight; filters channels-last (as training makes them) and contiguous.
        for (r, h, w, c, k, cl_weights) in [
            (3, 2, 2, 5, 7, true),
            (3, 2, 2, 24, 16, false),
            (3, 2, 1, 3, 4, true),
            (3, 1, 1, 6, 5, true),
            (5, 4, 4, 3, 9, true),
            (5, 3, 4, 8, 6, false),
            (5, 2, 2, 4, 4, true),
        ] {
            let x = cl(Tensor::randn([3, c, h, w], opts));
            let mut ws = Tensor::randn([k, c, r, r], opts);
            if cl_weights {
                ws = cl(ws);
            }
            let dy = cl(Tensor::randn([3, k, h, w], opts));
            let dense = |x: &Tensor, w: &Tensor| conv_dense(x, w).expect("taken");
            let want = passes(&x, &ws, &dy, direct(1, (r - 1) / 2));
            let got = passes(&x, &ws, &dy, dense);
            let what = format!("{r}x{r} at {h}x{w}, {c}->{k}");
            for (name, a, b) in [("output", &got.0, &want.0), ("input", &got.1, &want.1)] {
                assert!(max_rel(a, b) < 1e-5, "{what}: {name} {}", max_rel(a, b));
            }
            assert!(
                max_rel(&got.2, &want.2) < 1e-5,
                "{what}: weights {}",
                max_rel(&got.2, &want.2)
            );
            // Channels-last out, and gradients in their variables' layouts (the weight's is what
            // the fused optimizer step needs).
            assert!(crate::precision::is_channels_last(&got.0), "{what}: output layout");
            assert_eq!(got.1.stride(), x.stride(), "{what}: input gradient layout");
            assert_eq!(got.2.stride(), ws.stride(), "{what}: weight gradient layout");
            // NCHW activations: copied in, the output back in NCHW, the same sums.
            let (x, dy) = (x.contiguous(), dy.contiguous());
            let nchw = passes(&x, &ws, &dy, dense);
            assert!(nchw.0.is_contiguous(), "{what}: NCHW output layout");
            for (name, a, b) in [("output", &nchw.0, &got.0), ("input", &nchw.1, &got.1)] {
                assert!(a.equal(b), "{what}: NCHW {name} differs from channels-last");
            }
            assert!(nchw.2.equal(&got.2), "{what}: NCHW weights differ from channels-last");
        }
    }

    #[test]
    fn the_dense_product_leaves_what_it_does_not_take_and_takes_the_smallest_maps() {
        let opts = (Kind::Float, Device::Cpu);
        let x = crate::precision::to_channels_last(&Tensor::randn([2, 4, 2, 2], opts)).unwrap();
        let w = Tensor::randn([4, 4, 3, 3], opts);
        assert!(conv_dense(&x, &w).is_some());
        assert!(conv_dense(&x.contiguous(), &w).is_some(), "NCHW");
        assert!(conv_dense(&x.get(0), &w).is_none(), "3-d");
        assert!(conv_dense(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double)).is_none(), "f64");
        assert!(conv_dense(&x, &w.narrow(1, 0, 3)).is_none(), "channels disagree");
        assert!(conv_dense(&x, &Tensor::randn([4, 4, 2, 2], opts)).is_none(), "even filter");
        let bf16 = crate::precision::Precision::Bf16;
        if crate::precision::cpu_supports_bf16() {
            let taken = crate::precision::autocast(Device::Cpu, bf16, || conv_dense(&x, &w));
            assert_eq!(taken.is_some(), bf16_dense(), "autocast: taken with AMX only");
        }
        // The rule: 3x3 at 2x2 and less, 5x5 at 4x4 and less, the gathered matrix within 64 MiB.
        assert!(plan_dense(3, 96, 96, 2, 2) && plan_dense(3, 64, 96, 2, 2));
        assert!(plan_dense(3, 12, 32, 1, 1) && plan_dense(5, 24, 64, 4, 4));
        assert!(plan_dense(3, 384, 384, 2, 2));
        assert!(!plan_dense(3, 64, 64, 4, 4) && !plan_dense(3, 64, 64, 2, 3));
        assert!(!plan_dense(5, 3, 24, 8, 8) && !plan_dense(1, 96, 96, 2, 2));
        assert!(!plan_dense(5, 512, 512, 4, 4), "(16·16)·512·512 floats: 256 MiB");
        assert!(plan_dense(5, 128, 128, 4, 4), "(16·16)·128·128 floats: 16 MiB");
        // Relative patch's AlexNet-24 on 8-px patches (conv2 at 4x4, conv3-5 at 2x2) takes it
        // through the encoder's layers; a larger map, a stride, a bias or `off` do not.
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = |name: &str, c, k, size, stride, padding| {
            super::super::conv2d(vs.root() / name, c, k, size, stride, padding)
        };
        let on = gemm_mode() != Mode::Off;
        let at = |c, side| Tensor::zeros([2, c, side, side], opts);
        assert_eq!(conv("a", 64, 96, 3, 1, 1).dense_for(&at(64, 2)), on);
        assert_eq!(conv("b", 24, 64, 5, 1, 2).dense_for(&at(24, 4)), on);
        assert!(!conv("c", 64, 96, 3, 1, 1).dense_for(&at(64, 4)), "4x4 map");
        assert!(!conv("d", 64, 96, 3, 2, 1).dense_for(&at(64, 2)), "stride 2");
        assert!(!conv("e", 64, 96, 1, 1, 0).dense_for(&at(64, 2)), "1x1");
        let biased = Conv2d::new(
            vs.root() / "f",
            64,
            96,
            3,
            nn::ConvConfig { padding: 1, ..Default::default() },
        );
        assert!(!biased.dense_for(&at(64, 2)), "with a bias");
    }

    #[test]
    fn under_bf16_autocast_the_dense_product_runs_in_bf16_where_it_is_taken() {
        if !bf16_dense() {
            return;
        }
        tch::manual_seed(9);
        // Relative patch's conv3 (3x3 at 2x2) and conv2 (5x5 at 4x4), from a float input (the
        // first product under autocast) and from a bf16 one (a layer's output under autocast):
        // a bf16 output within bf16's rounding of libtorch's autocast convolution, float
        // gradients to the float leaves, bf16 to a bf16 input.
        let opts = (Kind::Float, Device::Cpu);
        let cl = |t: Tensor| crate::precision::to_channels_last(&t).unwrap();
        let bf16 = crate::precision::Precision::Bf16;
        for (r, c, k, side) in [(3, 64, 96, 2), (5, 24, 64, 4)] {
            let w = Tensor::randn([k, c, r, r], opts) * (1.0 / (c * r * r) as f64).sqrt();
            let dy = cl(Tensor::randn([8, k, side, side], opts));
            for input in [Kind::Float, Kind::BFloat16] {
                let x = cl(Tensor::randn([8, c, side, side], opts)).to_kind(input);
                let what = format!("{r}x{r} {c} -> {k} at {side}, {input:?} input");
                let dense = |x: &Tensor, w: &Tensor| conv_dense(x, w).expect("taken");
                let ours =
                    crate::precision::autocast(Device::Cpu, bf16, || passes(&x, &w, &dy, dense));
                let theirs = crate::precision::autocast(Device::Cpu, bf16, || {
                    passes(&x, &w, &dy, direct(1, (r - 1) / 2))
                });
                assert_eq!(ours.0.kind(), Kind::BFloat16, "{what}: output");
                assert_eq!((ours.1.kind(), ours.2.kind()), (input, Kind::Float), "{what}");
                assert_passes_within(&ours, &theirs, 1.0 / 64.0, &format!("{what}, libtorch's"));
            }
        }
    }

    #[test]
    fn the_dense_taps_link_each_input_to_each_output() {
        // 3x3 at 2x2: input (0, 0) reaches outputs (0, 0), (0, 1), (1, 0), (1, 1) by the taps
        // (1, 1), (1, 0), (0, 1), (0, 0); every pair linked.
        let t = dense_taps(3, 2, 2);
        assert_eq!(t.len(), 16);
        assert_eq!(t[..4], [4, 3, 1, 0]);
        assert_eq!(t[12..], [8, 7, 5, 4], "input (1, 1)");
        // 5x5 at 4x4: input (0, 0) and output (3, 3) are 3 apart, past the filter's reach of 2.
        let t = dense_taps(5, 4, 4);
        assert_eq!(t[15], 25);
        assert_eq!(t[0], 12, "the centre tap");
        assert_eq!(t.iter().filter(|&&x| x < 25).count(), 196, "12.25 inputs an output");
    }
}
