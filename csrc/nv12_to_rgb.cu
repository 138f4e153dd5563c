// Fused NV12 / P016 -> packed RGB24 conversion for NVDEC output surfaces.
// One thread per 2x2 luma block (one chroma sample): reads 4 Y + 1 UV pair straight from the
// decoder's pitched surface and writes 12 RGB bytes, so no NV12 copy and no float temporaries.
// Maths matches mmprep.decode.color.yuv420_to_rgb (nearest chroma, round half to even, clamp).
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

template <typename T>
__device__ __forceinline__ float sample8(T v);

template <>
__device__ __forceinline__ float sample8<uint8_t>(uint8_t v) { return static_cast<float>(v); }

template <>
__device__ __forceinline__ float sample8<uint16_t>(uint16_t v) { return static_cast<float>(v >> 8); }

__device__ __forceinline__ uint8_t to_u8(float x) {
  return static_cast<uint8_t>(fminf(fmaxf(rintf(x), 0.f), 255.f));
}

template <typename T>
__global__ void nv12_to_rgb_kernel(const T* __restrict__ src, int64_t pitch, int height, int width,
                                   uint8_t* __restrict__ dst, float cr_r, float cb_g, float cr_g,
                                   float cb_b, float y_off, float y_scale, float c_scale) {
  const int cx = blockIdx.x * blockDim.x + threadIdx.x;
  const int cy = blockIdx.y * blockDim.y + threadIdx.y;
  const int cw = (width + 1) / 2, ch = (height + 1) / 2;
  if (cx >= cw || cy >= ch) return;
  const T* uv = src + static_cast<int64_t>(height + cy) * pitch + 2 * cx;
  const float u = (sample8<T>(uv[0]) - 128.f) * c_scale;
  const float v = (sample8<T>(uv[1]) - 128.f) * c_scale;
  const float dr = cr_r * v, dg = cb_g * u + cr_g * v, db = cb_b * u;
#pragma unroll
  for (int dy = 0; dy < 2; ++dy) {
    const int y = 2 * cy + dy;
    if (y >= height) break;
#pragma unroll
    for (int dx = 0; dx < 2; ++dx) {
      const int x = 2 * cx + dx;
      if (x >= width) break;
      const float l = (sample8<T>(src[static_cast<int64_t>(y) * pitch + x]) - y_off) * y_scale;
      uint8_t* o = dst + (static_cast<int64_t>(y) * width + x) * 3;
      o[0] = to_u8(l + dr);
      o[1] = to_u8(l + dg);
      o[2] = to_u8(l + db);
    }
  }
}

}  // namespace

// src: (H + ceil(H/2), >=W) uint8 NV12 or uint16 P016 surface, row stride = pitch, unit column stride.
// dst: contiguous (H, W, 3) uint8 on the same device. Runs on the current CUDA stream.
void nv12_to_rgb(torch::Tensor src, int64_t height, int64_t width, torch::Tensor dst,
                 std::vector<double> coeffs, bool full_range) {
  TORCH_CHECK(src.is_cuda() && dst.is_cuda(), "nv12_to_rgb: tensors must be on CUDA");
  TORCH_CHECK(src.dim() == 2 && src.stride(1) == 1, "nv12_to_rgb: src must be 2-D with unit column stride, got ",
              src.sizes(), " strides ", src.strides());
  TORCH_CHECK(src.size(0) >= height + (height + 1) / 2 && src.size(1) >= width,
              "nv12_to_rgb: src ", src.sizes(), " too small for ", width, "x", height);
  TORCH_CHECK(dst.scalar_type() == torch::kUInt8 && dst.is_contiguous() && dst.numel() == height * width * 3,
              "nv12_to_rgb: dst must be contiguous uint8 (H, W, 3)");
  TORCH_CHECK(coeffs.size() == 4, "nv12_to_rgb: coeffs must be [cr_r, cb_g, cr_g, cb_b]");
  const c10::cuda::CUDAGuard guard(src.device());
  const float y_off = full_range ? 0.f : 16.f;
  const float y_scale = full_range ? 1.f : 255.f / 219.f;
  const float c_scale = full_range ? 1.f : 255.f / 224.f;
  const dim3 block(32, 8);
  const dim3 grid(((width + 1) / 2 + block.x - 1) / block.x, ((height + 1) / 2 + block.y - 1) / block.y);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (src.scalar_type() == torch::kUInt8) {
    nv12_to_rgb_kernel<uint8_t><<<grid, block, 0, stream>>>(
        src.data_ptr<uint8_t>(), src.stride(0), height, width, dst.data_ptr<uint8_t>(), coeffs[0], coeffs[1],
        coeffs[2], coeffs[3], y_off, y_scale, c_scale);
  } else {
    TORCH_CHECK(src.element_size() == 2, "nv12_to_rgb: src must be uint8 (NV12) or 16-bit (P016)");
    nv12_to_rgb_kernel<uint16_t><<<grid, block, 0, stream>>>(
        reinterpret_cast<const uint16_t*>(src.data_ptr()), src.stride(0), height, width, dst.data_ptr<uint8_t>(),
        coeffs[0], coeffs[1], coeffs[2], coeffs[3], y_off, y_scale, c_scale);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
