// ENet's PReLU (one learned slope per block) as two CPU kernels: forward in one pass over x,
// backward in one pass over (dy, x) that also reduces dalpha. TensorFlow's composed form
// (Relu, Neg, Relu, Mul, AddV2 and their gradients) reads and writes each activation about
// ten times; on two CPU cores that made PReLU a quarter of ENet's training step.
// Built on first use by enet_cli/model/fused.py against the running TensorFlow's headers.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"
#include "parallel.h"

using namespace tensorflow;  // NOLINT

REGISTER_OP("EnetPrelu")
    .Input("x: float")
    .Input("alpha: float")
    .Output("y: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return Status();
    });

REGISTER_OP("EnetPreluGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("alpha: float")
    .Output("dx: float")
    .Output("dalpha: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return Status();
    });

namespace {

bool Alpha(OpKernelContext* ctx, const Tensor& alpha, float* value) {
  if (alpha.NumElements() != 1) {
    ctx->CtxFailure(errors::InvalidArgument("EnetPrelu: alpha must have one element"));
    return false;
  }
  *value = alpha.flat<float>()(0);
  return true;
}

// Branch-free loops over raw pointers: the signs of activations are random, so a branch per
// element mispredicts half the time. Built with -fno-trapping-math, GCC turns the comparisons
// into vector selects (without it the backward loop stays scalar and runs 4x slower).
void PreluForward(const float* in, float* out, float a, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const float v = in[i];
    out[i] = std::max(v, 0.f) + a * std::min(v, 0.f);
  }
}

// dx as the composed Relu ops give it (0 where x == 0); returns sum(dy * min(x, 0)).
double PreluBackward(const float* g, const float* in, float* out, float a, int64_t b, int64_t e) {
  constexpr int kLanes = 16;  // independent partial sums, so the reduction vectorises
  float acc[kLanes] = {};
  int64_t i = b;
  for (; i + kLanes <= e; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = in[i + j], gi = g[i + j];
      const float slope = float(v > 0.f) + float(v < 0.f) * a;  // 0 at x == 0, as ReluGrad
      out[i + j] = gi * slope;
      acc[j] += gi * std::min(v, 0.f);
    }
  }
  double total = 0.0;
  for (; i < e; ++i) {
    const float v = in[i], gi = g[i];
    out[i] = gi * (float(v > 0.f) + float(v < 0.f) * a);
    total += gi * std::min(v, 0.f);
  }
  for (float s : acc) total += s;
  return total;
}

using enet::kChunks;  // fixed, so dalpha's summation order never changes

class EnetPreluOp : public OpKernel {
 public:
  explicit EnetPreluOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    float a;
    if (!Alpha(ctx, ctx->input(1), &a)) return;
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    enet::ForChunks(ctx, x.NumElements(),
              [&](int64_t, int64_t b, int64_t e) { PreluForward(in, out, a, b, e); });
  }
};

class EnetPreluGradOp : public OpKernel {
 public:
  explicit EnetPreluGradOp(OpKernelConstruction* c) : OpKernel(c) {}
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    float a;
    if (!Alpha(ctx, ctx->input(2), &a)) return;
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                errors::InvalidArgument("EnetPreluGrad: dy and x differ in shape"));
    Tensor* dx = nullptr;
    Tensor* da = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(2).shape(), &da));
    const float* g = dy.flat<float>().data();
    const float* in = x.flat<float>().data();
    float* out = dx->flat<float>().data();
    std::vector<double> partial(kChunks, 0.0);
    enet::ForChunks(ctx, x.NumElements(), [&](int64_t c, int64_t b, int64_t e) {
      partial[c] = PreluBackward(g, in, out, a, b, e);
    });
    double total = 0.0;
    for (double p : partial) total += p;
    da->flat<float>()(0) = static_cast<float>(total);
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("EnetPrelu").Device(DEVICE_CPU), EnetPreluOp);
REGISTER_KERNEL_BUILDER(Name("EnetPreluGrad").Device(DEVICE_CPU), EnetPreluGradOp);
