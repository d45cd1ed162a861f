/// @brief The CUDA kernel tables: one per family and element type, in the layout of the CPU
/// tables (kernels/<family>.h). Every pointer they take is device memory on the current device,
/// except the small shape arrays of the shape family (dims, strides), which are host memory.
/// Launches go to cuda::current_stream() and return without waiting.
#pragma once
#include "kernels/conv.h"
#include "kernels/embed.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/mlp.h"
#include "kernels/norm.h"
#include "kernels/pool.h"
#include "kernels/shape_ops.h"
#include "kernels/softmax.h"
#include "kernels/unary.h"
#include "kernels/vector.h"

namespace portgrad::kernels {

extern const GemmKernels<float> gemm_cuda_f32;
extern const GemmKernels<double> gemm_cuda_f64;
extern const UnaryKernels<float> unary_cuda_f32;
extern const UnaryKernels<double> unary_cuda_f64;
extern const SoftmaxKernels<float> softmax_cuda_f32;
extern const SoftmaxKernels<double> softmax_cuda_f64;
extern const LossKernels<float> loss_cuda_f32;
extern const LossKernels<double> loss_cuda_f64;
extern const VectorKernels<float> vector_cuda_f32;
extern const VectorKernels<double> vector_cuda_f64;
extern const ShapeKernels<float> shape_cuda_f32;
extern const ShapeKernels<double> shape_cuda_f64;
extern const EmbedKernels<float> embed_cuda_f32;
extern const EmbedKernels<double> embed_cuda_f64;
extern const NormKernels<float> norm_cuda_f32;
extern const NormKernels<double> norm_cuda_f64;
extern const PoolKernels<float> pool_cuda_f32;
extern const PoolKernels<double> pool_cuda_f64;
extern const ConvKernels<float> conv_cuda_f32;
extern const ConvKernels<double> conv_cuda_f64;
extern const MlpKernels<float> mlp_cuda_f32;
extern const MlpKernels<double> mlp_cuda_f64;

}  // namespace portgrad::kernels
