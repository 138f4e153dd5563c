// Fused resize (bicubic, antialiased) -> round to uint8 -> rescale/normalize -> patchify -> dtype.
//
// Two kernels replace torchvision's resize + HF's rescale_and_normalize + patchify + .to(dtype):
// a horizontal resize pass into a float buffer, then one thread per resized pixel (all channels)
// of one source frame does the vertical pass and the rest, reading the uint8 frames (any strides: THWC from the video decoder or CHW from the image decoder) and
// writes it to every place it occupies in the model's flattened patch layout (Qwen-VL), or to an
// NCHW crop (CLIP/SigLIP). Weights follow PyTorch's CUDA antialias kernel operation by operation
// (upsample_antialias::_compute_weights_span/_compute_weights, Keys a = -0.5, horizontal pass
// first), so results equal torch.nn.functional.interpolate(antialias=True) + clamp + round.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

namespace {

struct BicubicFilter {
  __device__ __forceinline__ float operator()(float x) const {
    const float a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  }
};

__device__ __forceinline__ void weights_span(int i, int input_size, float scale, float support, int& xmin,
                                             int& xsize, float& center) {
  center = scale * (i + static_cast<float>(0.5));
  xmin = max(static_cast<int>(center - support + static_cast<float>(0.5)), static_cast<int>(0));
  xsize = min(static_cast<int>(center + support + static_cast<float>(0.5)), input_size) - xmin;
}

// One row of weights per output index: w[i*k .. i*k+xsize), span start and size.
__global__ void aa_weights_kernel(int out_size, int in_size, float scale, float support, int k, float* w,
                                  int* span) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= out_size) return;
  int xmin, xsize;
  float center;
  weights_span(i, in_size, scale, support, xmin, xsize, center);
  const float xmin_m_center = xmin - center;
  const float invscale = (scale >= 1.0) ? 1.0 / scale : 1.0;
  BicubicFilter filter;
  float* wt = w + static_cast<int64_t>(i) * k;
  float total_w = 0.0;
  int j = 0;
  for (j = 0; j < xsize; j++) {
    float v = filter((j + xmin_m_center + static_cast<float>(0.5)) * invscale);
    wt[j] = v;
    total_w += v;
  }
  for (j = 0; j < xsize; j++) {
    if (total_w != 0.0) wt[j] /= total_w;
  }
  for (; j < k; j++) wt[j] = 0.0f;
  span[2 * i] = xmin;
  span[2 * i + 1] = xsize;
}

struct Geometry {
  int64_t sT, sC, sY, sX;  // input strides (elements) of the logical (T, C, H, W) view
  int T, C, H, W;          // source frames
  int h, w;                // resized size
  bool resize;
  int kx, ky;              // weight table widths
  // layout 0: Qwen patches. out row/col from (gt, bh, bw, mh, mw) x (c, t, ph, pw)
  // layout 1: NCHW crop of the resized image at (top, left), size (ch, cw); outside -> 0
  int layout, patch, merge, tps, t_pad;
  int top, left, ch, cw;
  int64_t cols;
  int norm_mode;  // 0: (v - mean) / std, 1: v * rescale, 2: v
  float rescale;
};

template <typename out_t>
__device__ __forceinline__ out_t cast_out(float v);
template <>
__device__ __forceinline__ float cast_out<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 cast_out<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// uint8 out only with norm_mode 2 (raw pixels, already rounded and clamped to 0..255): exact.
template <>
__device__ __forceinline__ uint8_t cast_out<uint8_t>(float v) { return static_cast<uint8_t>(v); }

// Horizontal pass of the separable resize: tmp[f][c][y][x] for every input row y and output column x,
// the exact value PyTorch keeps in its per-thread buffer before the vertical pass.
__global__ void hpass_kernel(const uint8_t* __restrict__ src, float* __restrict__ tmp, Geometry g,
                             const float* __restrict__ wx, const int* __restrict__ xspan) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int f = blockIdx.z;
  if (x >= g.w || y >= g.H) return;
  const int xmin = xspan[2 * x], xsize = xspan[2 * x + 1];
  const float* wxr = wx + static_cast<int64_t>(x) * g.kx;
  const uint8_t* row = src + f * g.sT + y * g.sY + xmin * g.sX;
  for (int c = 0; c < g.C; ++c) {
    const uint8_t* p = row + c * g.sC;
    float r = static_cast<float>(p[0]) * wxr[0];
    for (int xx = 1; xx < xsize; ++xx) r += static_cast<float>(p[xx * g.sX]) * wxr[xx];
    tmp[((static_cast<int64_t>(f) * g.C + c) * g.H + y) * g.w + x] = r;
  }
}

template <typename out_t>
__global__ void preprocess_kernel(const uint8_t* __restrict__ src, out_t* __restrict__ out, Geometry g,
                                  const float* __restrict__ tmp,
                                  const float* __restrict__ wy, const int* __restrict__ yspan,
                                  const float* __restrict__ mean, const float* __restrict__ stdv) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int f = blockIdx.z;
  int ox = x, oy = y;  // output coordinates
  int rx = x, ry = y;  // coordinates in the resized image
  if (g.layout == 1) {
    if (x >= g.cw || y >= g.ch) return;
    rx = x + g.left;
    ry = y + g.top;
  } else if (x >= g.w || y >= g.h) {
    return;
  }
  const bool inside = rx >= 0 && ry >= 0 && rx < g.w && ry < g.h;
  float v[3] = {0.f, 0.f, 0.f};
  const uint8_t* frame = src + f * g.sT;
  if (inside) {
    if (g.resize) {
      const int ymin = yspan[2 * ry], ysize = yspan[2 * ry + 1];
      const float* wyr = wy + static_cast<int64_t>(ry) * g.ky;
      for (int c = 0; c < g.C; ++c) {
        const float* col = tmp + ((static_cast<int64_t>(f) * g.C + c) * g.H + ymin) * g.w + rx;
        float acc = col[0] * wyr[0];
        for (int yy = 1; yy < ysize; ++yy) acc += col[static_cast<int64_t>(yy) * g.w] * wyr[yy];
        v[c] = rintf(fminf(fmaxf(acc, 0.f), 255.f));
      }
    } else {
      for (int c = 0; c < g.C; ++c) v[c] = static_cast<float>(frame[c * g.sC + ry * g.sY + rx * g.sX]);
    }
  }
  for (int c = 0; c < g.C; ++c) {
    if (g.norm_mode == 0) v[c] = (v[c] - mean[c]) / stdv[c];
    else if (g.norm_mode == 1) v[c] = v[c] * g.rescale;
  }
  if (g.layout == 1) {
    for (int c = 0; c < g.C; ++c)
      out[((static_cast<int64_t>(f) * g.C + c) * g.ch + oy) * g.cw + ox] = cast_out<out_t>(v[c]);
    return;
  }
  // Qwen-VL patch layout. Frame f fills temporal slot (f / tps, f % tps); a single frame (image)
  // fills every slot of group 0; the last frame also fills the padding slots up to t_pad.
  const int P = g.patch, M = g.merge;
  const int bh = y / (P * M), mh = (y / P) % M, ph = y % P;
  const int bw = x / (P * M), mw = (x / P) % M, pw = x % P;
  const int gbh = g.h / (P * M), gbw = g.w / (P * M);
  int first = f, last = f;
  if (g.T == 1) last = g.tps - 1;
  else if (f == g.T - 1) last = g.t_pad - 1;
  for (int s = first; s <= last; ++s) {
    const int gt = (g.T == 1) ? 0 : s / g.tps;
    const int t = (g.T == 1) ? s : s % g.tps;
    const int64_t row = ((static_cast<int64_t>(gt) * gbh + bh) * gbw + bw) * (M * M) + mh * M + mw;
    for (int c = 0; c < g.C; ++c) {
      const int64_t col = ((static_cast<int64_t>(c) * g.tps + t) * P + ph) * P + pw;
      out[row * g.cols + col] = cast_out<out_t>(v[c]);
    }
  }
}

}  // namespace

// Antialiased bicubic weights of one axis: (out_size, k) float32 and (out_size, 2) int32 spans.
std::vector<torch::Tensor> aa_weights(int64_t out_size, int64_t in_size, torch::Tensor like) {
  TORCH_CHECK(like.is_cuda(), "aa_weights: `like` must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(like.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto dev = like.device();
  const float scale = static_cast<float>(in_size) / out_size;  // area_pixel_compute_scale, align_corners=False
  const float half = 0.5;
  const float support = static_cast<float>((scale >= 1.0) ? (4 * half) * scale : 4 * half);
  const int k = static_cast<int>(ceilf(support)) * 2 + 1;
  auto w = torch::empty({out_size, k}, torch::dtype(torch::kFloat32).device(dev));
  auto span = torch::empty({out_size, 2}, torch::dtype(torch::kInt32).device(dev));
  aa_weights_kernel<<<(out_size + 127) / 128, 128, 0, stream>>>(out_size, in_size, scale, support, k,
                                                                 w.data_ptr<float>(), span.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {w, span};
}

// frames: logical (T, C, H, W) uint8 CUDA view (any strides). out: CUDA float32/bfloat16 (uint8 for raw pixels), either
// (rows, cols) patches of this item (layout 0) or (T, C, crop_h, crop_w) (layout 1).
void preprocess(torch::Tensor frames, torch::Tensor out, int64_t h, int64_t w, int64_t layout, int64_t patch,
                int64_t merge, int64_t tps, int64_t top, int64_t left, int64_t crop_h, int64_t crop_w,
                int64_t norm_mode, torch::Tensor mean, torch::Tensor stdv, double rescale, torch::Tensor wx,
                torch::Tensor xspan, torch::Tensor wy, torch::Tensor yspan) {
  TORCH_CHECK(frames.is_cuda() && out.is_cuda(), "preprocess: tensors must be on CUDA");
  TORCH_CHECK(frames.dim() == 4 && frames.scalar_type() == torch::kUInt8, "preprocess: frames must be (T,C,H,W) uint8");
  TORCH_CHECK(out.is_contiguous(), "preprocess: out must be contiguous");
  TORCH_CHECK(mean.scalar_type() == torch::kFloat32 && stdv.scalar_type() == torch::kFloat32 && mean.is_cuda() &&
                  stdv.is_cuda() && mean.numel() >= frames.size(1) && stdv.numel() >= frames.size(1),
              "preprocess: mean/std must be float32 CUDA tensors with one value per channel");
  const c10::cuda::CUDAGuard guard(frames.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  Geometry g;
  g.sT = frames.stride(0); g.sC = frames.stride(1); g.sY = frames.stride(2); g.sX = frames.stride(3);
  g.T = frames.size(0); g.C = frames.size(1); g.H = frames.size(2); g.W = frames.size(3);
  TORCH_CHECK(g.C <= 3, "preprocess: at most 3 channels");
  g.h = h; g.w = w;
  g.resize = (h != g.H || w != g.W);
  g.layout = layout; g.patch = patch; g.merge = merge; g.tps = tps;
  g.t_pad = g.T == 1 ? tps : ((g.T + tps - 1) / tps) * tps;
  g.top = top; g.left = left; g.ch = crop_h; g.cw = crop_w;
  g.norm_mode = norm_mode; g.rescale = static_cast<float>(rescale);
  if (layout == 0) {
    TORCH_CHECK(h % (patch * merge) == 0 && w % (patch * merge) == 0, "preprocess: size must be a multiple of patch*merge");
    g.cols = static_cast<int64_t>(g.C) * tps * patch * patch;
    const int64_t rows = static_cast<int64_t>(g.t_pad / tps) * (h / patch) * (w / patch);
    TORCH_CHECK(out.dim() == 2 && out.size(0) == rows && out.size(1) == g.cols, "preprocess: out must be (", rows, ", ",
                g.cols, "), got ", out.sizes());
  } else {
    g.cols = 0;
    TORCH_CHECK(out.numel() == static_cast<int64_t>(g.T) * g.C * crop_h * crop_w, "preprocess: out size mismatch");
  }
  g.kx = g.ky = 1;
  if (g.resize) {
    TORCH_CHECK(wx.dim() == 2 && wx.size(0) == w && xspan.size(0) == w && wy.dim() == 2 && wy.size(0) == h &&
                    yspan.size(0) == h,
                "preprocess: weight tables do not match the resized size");
    g.kx = wx.size(1);
    g.ky = wy.size(1);
  }
  const int ow = layout == 1 ? crop_w : w, oh = layout == 1 ? crop_h : h;
  const dim3 block(32, 8);
  const dim3 grid((ow + block.x - 1) / block.x, (oh + block.y - 1) / block.y, g.T);
  torch::Tensor tmp;
  const float* ptmp = nullptr;
  if (g.resize) {
    tmp = torch::empty({g.T, g.C, g.H, w}, torch::dtype(torch::kFloat32).device(frames.device()));
    const dim3 hgrid((w + block.x - 1) / block.x, (g.H + block.y - 1) / block.y, g.T);
    hpass_kernel<<<hgrid, block, 0, stream>>>(frames.data_ptr<uint8_t>(), tmp.data_ptr<float>(), g,
                                              wx.data_ptr<float>(), xspan.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ptmp = tmp.data_ptr<float>();
  }
  const float* pwy = g.resize ? wy.data_ptr<float>() : nullptr;
  const int* pys = g.resize ? yspan.data_ptr<int>() : nullptr;
  if (out.scalar_type() == torch::kFloat32) {
    preprocess_kernel<float><<<grid, block, 0, stream>>>(frames.data_ptr<uint8_t>(), out.data_ptr<float>(), g, ptmp,
                                                         pwy, pys, mean.data_ptr<float>(), stdv.data_ptr<float>());
  } else if (out.scalar_type() == torch::kUInt8) {
    TORCH_CHECK(norm_mode == 2, "preprocess: uint8 out holds raw pixels only (norm_mode 2)");
    preprocess_kernel<uint8_t><<<grid, block, 0, stream>>>(frames.data_ptr<uint8_t>(), out.data_ptr<uint8_t>(), g, ptmp,
                                                           pwy, pys, mean.data_ptr<float>(), stdv.data_ptr<float>());
  } else {
    TORCH_CHECK(out.scalar_type() == torch::kBFloat16, "preprocess: out must be float32, bfloat16 or uint8");
    preprocess_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(
        frames.data_ptr<uint8_t>(), reinterpret_cast<__nv_bfloat16*>(out.data_ptr()), g, ptmp, pwy, pys,
        mean.data_ptr<float>(), stdv.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
