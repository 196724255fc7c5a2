// Python module of the d2kd._C extension. Importing it runs the static registrations of every
// op (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in the other translation units), after which
// the ops are reachable as torch.ops.d2kd.*; this file only adds build information.
#include <torch/extension.h>
#ifdef WITH_CUDA
#include <cuda.h>
#endif

namespace d2kd {

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_version() {
#ifdef WITH_CUDA
  return std::to_string(CUDA_VERSION / 1000) + "." + std::to_string((CUDA_VERSION % 1000) / 10);
#else
  return "";
#endif
}

// Trivial op that proves the dispatcher registration works end to end (CPU and, when built,
// CUDA): returns x + 1 in x's dtype and device. Used by the build smoke test.
at::Tensor add_one(const at::Tensor& x) { return x + 1; }

}  // namespace d2kd

TORCH_LIBRARY_FRAGMENT(d2kd, m) { m.def("add_one(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(d2kd, CPU, m) { m.impl("add_one", &d2kd::add_one); }
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(d2kd, CUDA, m) { m.impl("add_one", &d2kd::add_one); }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compiled_with_cuda", &d2kd::compiled_with_cuda, "whether the CUDA kernels were built");
  m.def("cuda_version", &d2kd::cuda_version, "CUDA version the kernels were built with");
}
