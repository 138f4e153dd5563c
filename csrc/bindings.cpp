// Python bindings of mmprep's fused kernels (one extension module, built just-in-time).
#include <torch/extension.h>

void nv12_to_rgb(torch::Tensor src, int64_t height, int64_t width, torch::Tensor dst, std::vector<double> coeffs,
                 bool full_range);
void preprocess(torch::Tensor frames, torch::Tensor out, int64_t h, int64_t w, int64_t layout, int64_t patch,
                int64_t merge, int64_t tps, int64_t top, int64_t left, int64_t crop_h, int64_t crop_w,
                int64_t norm_mode, torch::Tensor mean, torch::Tensor stdv, double rescale, torch::Tensor wx,
                torch::Tensor xspan, torch::Tensor wy, torch::Tensor yspan);
std::vector<torch::Tensor> aa_weights(int64_t out_size, int64_t in_size, torch::Tensor like);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("nv12_to_rgb", &nv12_to_rgb, "NV12/P016 surface -> (H,W,3) uint8 RGB on the current stream");
  m.def("aa_weights", &aa_weights, "antialiased bicubic weights of one axis: (out, k) float32, (out, 2) spans");
  m.def("preprocess", &preprocess,
        "uint8 (T,C,H,W) frames -> bicubic-AA resize, round, rescale/normalize, Qwen patches or NCHW crop");
}
