// The training loss, sum over pixels of w[label] * (logsumexp(logits) - logits[label]) with
// void and stray labels weighing 0, and its gradient w * (softmax - onehot), each in one pass
// over the (pixels, K) logits. TensorFlow composed it from one_hot, Mul, Max, Sub, Exp, Sum,
// Log and their gradients: about a dozen passes over the largest tensor of the step.
// Built on first use by enet_cli/model/fused.py against the running TensorFlow's headers.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"
#include "parallel.h"

using namespace tensorflow;  // NOLINT

REGISTER_OP("EnetCrossEntropy")
    .Input("logits: float")
    .Input("labels: int32")
    .Input("class_weights: float")
    .Attr("ignore_index: int")
    .Output("loss_sum: float")
    .Output("weight_sum: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->Scalar());
      c->set_output(1, c->Scalar());
      return Status();
    });

REGISTER_OP("EnetCrossEntropyGrad")
    .Input("dloss: float")
    .Input("logits: float")
    .Input("labels: int32")
    .Input("class_weights: float")
    .Attr("ignore_index: int")
    .Output("dlogits: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      return Status();
    });

namespace {

using enet::kChunks;
constexpr int64_t kBlock = 64;  // pixels transposed to (K, kBlock) so loops run over pixels

// exp(x) for x <= 0 (every logit minus its pixel's maximum) in plain arithmetic that
// vectorises: Cephes' expf (range reduction by ln 2, degree-6 polynomial, 2^n from the
// exponent bits), within 2 ulp of std::exp; below -87 it returns 2^-126, not 0.
inline float ExpNonPositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// For one block of `count` <= kBlock pixels transposed to t[k * kBlock + i]: each pixel's
// maximum and sum of exp(logit - maximum).
ENET_SIMD void MaxAndSum(const float* __restrict__ t, int64_t K, float* __restrict__ top,
                         float* __restrict__ sum) {
  for (int64_t i = 0; i < kBlock; ++i) top[i] = t[i];
  for (int64_t k = 1; k < K; ++k) {
    const float* __restrict__ row = t + k * kBlock;
    for (int64_t i = 0; i < kBlock; ++i) top[i] = row[i] > top[i] ? row[i] : top[i];
  }
  for (int64_t i = 0; i < kBlock; ++i) sum[i] = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    const float* __restrict__ row = t + k * kBlock;
    for (int64_t i = 0; i < kBlock; ++i) sum[i] += ExpNonPositive(row[i] - top[i]);
  }
}

// dlogits (transposed) = scale[i] * (exp(logit - top) / sum - [k == label]).
ENET_SIMD void SoftmaxGrad(const float* __restrict__ t, int64_t K, const float* __restrict__ top,
                           const float* __restrict__ inv_sum, const float* __restrict__ scale,
                           const int32_t* __restrict__ label, float* __restrict__ out) {
  for (int64_t k = 0; k < K; ++k) {
    const float* __restrict__ row = t + k * kBlock;
    float* __restrict__ o = out + k * kBlock;
    for (int64_t i = 0; i < kBlock; ++i) {
      const float p = ExpNonPositive(row[i] - top[i]) * inv_sum[i];
      o[i] = scale[i] * (p - float(label[i] == k));
    }
  }
}

// Copies pixels [p, p + count) of the (pixels, K) logits into t (K, kBlock); the rest of
// the block repeats the last pixel so that every lane holds a finite logit.
void Transpose(const float* x, int64_t p, int64_t count, int64_t K, float* t) {
  for (int64_t i = 0; i < kBlock; ++i) {
    const float* src = x + (p + std::min(i, count - 1)) * K;
    for (int64_t k = 0; k < K; ++k) t[k * kBlock + i] = src[k];
  }
}

struct Inputs {
  const float* logits;
  const int32* labels;
  const float* weights;
  int64_t pixels;
  int64_t K;
};

bool Read(OpKernelContext* ctx, int first, int32 ignore, Inputs* in) {
  const Tensor& logits = ctx->input(first);
  const Tensor& labels = ctx->input(first + 1);
  const Tensor& weights = ctx->input(first + 2);
  if (logits.dims() < 1) {
    ctx->CtxFailure(errors::InvalidArgument("EnetCrossEntropy: logits need a class axis"));
    return false;
  }
  in->K = logits.dim_size(logits.dims() - 1);
  in->pixels = in->K ? logits.NumElements() / in->K : 0;
  if (labels.NumElements() != in->pixels || weights.NumElements() != in->K) {
    ctx->CtxFailure(errors::InvalidArgument("EnetCrossEntropy: ", labels.NumElements(),
                                            " labels and ", weights.NumElements(),
                                            " weights for ", in->pixels, " pixels of ",
                                            in->K, " classes"));
    return false;
  }
  in->logits = logits.flat<float>().data();
  in->labels = labels.flat<int32>().data();
  in->weights = weights.flat<float>().data();
  return true;
}

// A pixel's weight: its class's, 0 for the void label and labels outside [0, K).
inline float Weight(const Inputs& in, int32 label, int32 ignore) {
  return (label == ignore || label < 0 || label >= in.K) ? 0.f : in.weights[label];
}

class EnetCrossEntropyOp : public OpKernel {
 public:
  explicit EnetCrossEntropyOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("ignore_index", &ignore_));
  }

  void Compute(OpKernelContext* ctx) override {
    Inputs in;
    if (!Read(ctx, 0, ignore_, &in)) return;
    Tensor *loss_t, *weight_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &loss_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &weight_t));
    std::vector<double> loss(kChunks, 0.0), weight(kChunks, 0.0);
    if (in.pixels > 0) {
      enet::ForChunks(ctx, in.pixels, [&](int64_t chunk, int64_t b, int64_t e) {
        std::vector<float> t(in.K * kBlock), top(kBlock), sum(kBlock);
        double l = 0.0, w = 0.0;
        for (int64_t p = b; p < e; p += kBlock) {
          const int64_t count = std::min(kBlock, e - p);
          Transpose(in.logits, p, count, in.K, t.data());
          MaxAndSum(t.data(), in.K, top.data(), sum.data());
          for (int64_t i = 0; i < count; ++i) {
            const int32 label = in.labels[p + i];
            const float wi = Weight(in, label, ignore_);
            if (wi == 0.f) continue;
            const float ce = top[i] + std::log(sum[i]) - t[label * kBlock + i];
            l += double(wi) * double(ce);
            w += double(wi);
          }
        }
        loss[chunk] = l;
        weight[chunk] = w;
      });
    }
    double l = 0.0, w = 0.0;
    for (int64_t c = 0; c < kChunks; ++c) {
      l += loss[c];
      w += weight[c];
    }
    loss_t->scalar<float>()() = float(l);
    weight_t->scalar<float>()() = float(w);
  }

 private:
  int32 ignore_;
};

class EnetCrossEntropyGradOp : public OpKernel {
 public:
  explicit EnetCrossEntropyGradOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("ignore_index", &ignore_));
  }

  void Compute(OpKernelContext* ctx) override {
    const float g = ctx->input(0).scalar<float>()();
    Inputs in;
    if (!Read(ctx, 1, ignore_, &in)) return;
    Tensor* out_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ctx->input(1).shape(), &out_t));
    float* out = out_t->flat<float>().data();
    if (in.pixels == 0) return;
    enet::ForChunks(ctx, in.pixels, [&](int64_t, int64_t b, int64_t e) {
      std::vector<float> t(in.K * kBlock), o(in.K * kBlock), top(kBlock), sum(kBlock);
      std::vector<float> scale(kBlock);
      std::vector<int32_t> label(kBlock);
      for (int64_t p = b; p < e; p += kBlock) {
        const int64_t count = std::min(kBlock, e - p);
        Transpose(in.logits, p, count, in.K, t.data());
        MaxAndSum(t.data(), in.K, top.data(), sum.data());
        for (int64_t i = 0; i < kBlock; ++i) {
          const int32 y = in.labels[p + std::min(i, count - 1)];
          const float wi = i < count ? Weight(in, y, ignore_) : 0.f;
          scale[i] = g * wi;
          label[i] = wi == 0.f ? -1 : y;
          sum[i] = 1.f / sum[i];
        }
        SoftmaxGrad(t.data(), in.K, top.data(), sum.data(), scale.data(), label.data(),
                    o.data());
        for (int64_t i = 0; i < count; ++i) {
          float* dst = out + (p + i) * in.K;
          for (int64_t k = 0; k < in.K; ++k) dst[k] = o[k * kBlock + i];
        }
      }
    });
  }

 private:
  int32 ignore_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("EnetCrossEntropy").Device(DEVICE_CPU), EnetCrossEntropyOp);
REGISTER_KERNEL_BUILDER(Name("EnetCrossEntropyGrad").Device(DEVICE_CPU), EnetCrossEntropyGradOp);
