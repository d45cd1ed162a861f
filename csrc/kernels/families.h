/// @brief Every kernel family's header: what code generated from kernels/families.def includes.
/// A family added to families.def adds its header here (the preprocessor cannot make an #include
/// from a list).
#pragma once
#include "kernels/conv.h"
#include "kernels/embed.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/optim.h"
#include "kernels/pool.h"
#include "kernels/recurrent.h"
#include "kernels/shape_ops.h"
#include "kernels/softmax.h"
#include "kernels/unary.h"
#include "kernels/vector.h"
