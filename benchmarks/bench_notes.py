"""The prose of benchmarks/RESULTS.md: what limits each network, and how cnndsl runs a step.

Kept apart from bench_step.py (which measures and writes the tables) so that
the script stays short; update these texts when a measurement changes them.
"""

from __future__ import annotations

NOTES: dict[str, str] = {
    "fashion_mnist": "Convolutions, and inside them BLAS. The four 3×3 convs run as"
    " Winograd F(4×4, 3×3) (forward, dx and dW; dW reads the input tiles the forward pass"
    " kept) in chunks of 128 tiles (8 samples of 14×14, 32 of 7×7). The transforms are"
    " compiled single passes (a 6×6 tile gathered from the unpadded input and turned by"
    " Bᵀ d B; Aᵀ m A with the bias, relu and edge crop on the way out), so a chunk's 36"
    " GEMMs (tiles, c)·(c, f) are most of its time, at 88-95 GFLOP/s a core on these"
    " shapes (the ceilings above). Counted as direct convolution the step runs at more"
    " than the GEMM ceiling (Winograd does 4× fewer multiplies, less the 31% that 4×4"
    " tiles waste on 14×14 and 7×7 maps); what is left is the GEMM rate. Max pooling,"
    " compiled (one pass forward, one backward), is 3% of the kernel time.",
    "resnet18_cifar": "The same GEMM limit on every 3×3 conv: forward and dx run as"
    " Winograd F(4×4, 3×3) (all but the 3-channel stem and the strided convs, which use"
    " im2col), and so does dW, the 4×4×512 convs included since the cost model chose it"
    " there (1.4× faster on those layers, the step 3% faster: 776 against 801 ms, medians of"
    " 20 alternating steps in one process; peak RSS 57 MiB higher, 1056 against 999 MiB, for"
    " the 36·c·f per-point sums, 38 MB a lane, which the memory plan counts). Batchnorm"
    " with its relu, compiled (two passes forward, two"
    " backward, the activation's mask read on the fly), is 7% of the kernel time, down"
    " from 17%.",
    "mobilenet96": "GEMM-bound now: the 1×1 convs (plain GEMMs, forward and both"
    " gradients) are about 64% of the kernel time. The depthwise convs, compiled as one"
    " pass over the output forward and one over dz backward (dx and the kernel gradient"
    " together, per-chunk partials added in chunk order), are 12% (3.5× faster than the"
    " NumPy passes per tap); batchnorm + relu6, compiled, 22%, near the memory bandwidth"
    " for the 2.5 GB a step moves. The roofline counts the depthwise convs' FLOPs at the"
    " GEMM ceiling, which they cannot reach (9 multiply-adds per value read), so its 43%"
    " understates how close the step is.",
    "resnet34_infer": "Convolutions only: batchnorm is folded into them (passes/fold.py), the"
    " relu of each conv runs inside its GEMM chunk or Winograd's compiled output"
    " transform, relu(a + b) inside the add, and the stride-1 3×3 convs run as Winograd"
    " F(4×4, 3×3). PyTorch's eager NCHW model runs batchnorm as a separate pass.",
}

LIMITS = """\
How cnndsl runs a step: every kernel cuts the batch into chunks of whole
samples and runs them on a thread per core (`ThreadWorkers`), each chunk
calling single-threaded BLAS on buffers reused from step to step. Chunks are
sized by bytes (about 4 MiB of im2col columns) except in Winograd layers,
which take 128 tiles or more a chunk, in a power-of-two count. BLAS stays on
one thread for the whole step: OpenBLAS threads left spinning after a
multithreaded call took a core from the lanes. Lowering fixes the variants by
shape and a measured cost model (below): conv forward by im2col or Winograd
F(4×4, 3×3), the input gradient as a
'full' convolution, Winograd or col2im, none for the first layer; 1×1 convs
as plain GEMMs; relu/relu6 fused into batchnorm, convs, dense and residual
adds, or run in place; zeropad folded into the next conv's padding.

Compiled kernels: the memory-bound kernels (depthwise convs, batchnorm with
its activation, max and average pooling, Winograd's transforms) are compiled
by Numba (`cnndsl/runtime/backends/numba_kernels`: nopython, released from the
GIL so the lanes run them side by side, `cache=True` so only the first
process on a machine compiles, no fastmath so NaN and summation order stay
NumPy's), and replace several NumPy passes each with one or two. The other
route the issue names, a BLAS with better small-GEMM rates from the package
index, does not pay on this machine: one thread, float32, GFLOP/s on the
step's GEMM shapes (36 × (128×128)·(128×128), 36 × (128×256)·(256×256),
(2048×576)·(576×128), (6272×49)·(49×64), 36 × (32×64)·(64×64)): NumPy's
OpenBLAS 93, 79, 91, 92, 102; MKL through torch.bmm 83, 76, 81, 93, 69;
BLIS (the `blis` package, 1.3.4) 29, 31, 31, 31, 22. (On the Intel machine
of earlier runs MKL led OpenBLAS on the Winograd shapes, 130-155 against
75-120: worth measuring again on another CPU.) Numba is a dependency: it
earns its place on every row (the table below), and without it (or with
CNNDSL_JIT=0) the NumPy kernels run. Its cost is memory: Numba and LLVM
add about 120 MiB to the process (peak RSS with the kernels off is in that
table), still below PyTorch's on every row.

Winograd F(4×4, 3×3) or im2col is chosen per 3×3 stride-1 layer (forward,
dx and dW apart) by a cost model (`cnndsl/ops/conv_costs.py`): a kernel's time
a sample is linear in its GEMM FLOPs, the values it copies or transforms, the
per-chunk values (Winograd's 36·c·f kernel transform streamed, and dW's
per-point sums written and read, once per chunk), and its pixels or tiles
(loop and call overheads, thin GEMMs). `benchmarks/measure_conv_costs.py`
times the kernels on one thread at batch 64 on 19 shapes, 32×32×4→4 to
2×2×512→512, and fits the nanoseconds per unit by least squares; lowering
only reads the committed table. Measured with the compiled transforms,
Winograd won far more widely than the fixed rules it replaces allowed: from
16 channels (1.2× at 32×32×16→16, 1.7× at 28×28×16→64), on 6×6 maps (1.6×
despite tiles 78% over the map) and, for dW, on 4×4×512 (1.4×, one tile a
sample); im2col wins with 8 channels or fewer (1.4×), on the 3-channel stems
(1.5×) and on 2×2 maps (2×). On the four networks the only choice that
changed is dW on ResNet-18's 4×4×512 convs (and ResNet-34's 7×7×512, which
only trains outside the benchmark). A Winograd dW is not taken where its
36·c·f per-point sums would exceed a lane's 64 MiB of scratch (512 → 1024
channels and up), and the memory plan counts them. In float32 its results are
about 1e-5 off the direct sum, relative (im2col: 1e-7), as with cuDNN's and
oneDNN's Winograd kernels. F(2×2, 3×3) paid only from 128 channels and gained
half as much, and is gone.

Times move by ±20% and more with other load on the machine, and PyTorch's
OpenMP threads suffer more from it than cnndsl's chunked lanes (which
rebalance when a core is busy): compare ratios measured on a quiet machine
(see the load averages above). Tried and dropped: Winograd with its
transforms as a dozen NumPy passes per tile; Winograd chunks of 64 tiles on
the 7×7 maps (2% slower); max pooling that records each window's argmax in
forward for a one-pass scatter backward (backward 0.92 → 0.24 ms, forward
0.44 → 0.58 ms on 64×28×28×32: 0.3% of the Fashion-MNIST step, for one more
saved array); a depthwise backward that sums all nine taps per pixel in one
loop (4× slower than a tap at a time, which Numba vectorises).

Memory traffic between steps: the NumPy backend has malloc keep freed arrays
of up to 32 MiB (`mallopt`, once per process, `keep_freed_memory=False` to
opt out): no page faults between steps, the same peak RSS, steps 1.05-1.2×
faster. A Winograd layer's forward keeps its transformed input tiles in a
buffer reused from step to step, and its kernel gradient reads them instead
of making them again."""
