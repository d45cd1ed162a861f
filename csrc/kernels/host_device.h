/// @brief PG_HOST_DEVICE: a function the reference kernels (host) and the CUDA kernels (device)
/// share, so the two compute the same thing from one definition.
#pragma once

#if defined(__CUDACC__)
#define PG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PG_HOST_DEVICE inline
#endif
