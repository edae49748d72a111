// Training-mode batch norm followed by ENet's activation (PReLU with one slope, or ReLU as
// slope 0) and a per-(image, channel) factor (spatial dropout's mask, or ones), as two CPU
// kernels over NHWC activations seen as [rows, channels]:
//   forward:  one pass for the batch statistics, one pass writing mask * act(z), z the
//             normalised x;
//   backward: one pass reducing the three sums the gradients need, one pass writing dx.
// The mask multiplies after the activation, as dropout does in ENet's blocks; folded in
// here it costs no pass of its own.
// TensorFlow runs these as FusedBatchNormV3 + the activation and their gradients: oneDNN's
// batch norm ran on one core of two (the same time with 1 or 2 intra-op threads), and the
// activation read and wrote the normalised tensor again in each direction.
// Built on first use by enet_cli/model/fused.py against the running TensorFlow's headers.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"
#include "parallel.h"

using namespace tensorflow;  // NOLINT

REGISTER_OP("EnetBatchNormAct")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("slope: float")
    .Input("moving_mean: float")
    .Input("moving_variance: float")
    .Input("mask: float")
    .Attr("epsilon: float")
    .Attr("momentum: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("inv_std: float")
    .Output("new_moving_mean: float")
    .Output("new_moving_variance: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      for (int i = 1; i < 5; ++i) c->set_output(i, c->input(1));
      return Status();
    });

REGISTER_OP("EnetBatchNormActGrad")
    .Input("dy: float")
    .Input("x: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("slope: float")
    .Input("mean: float")
    .Input("inv_std: float")
    .Input("mask: float")
    .Output("dx: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Output("dslope: float")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      c->set_output(3, c->input(4));
      return Status();
    });

namespace {

using enet::kChunks;
constexpr int64_t kRun = 64;  // rows summed in float before a double accumulator takes them

// prelu(z) = max(z, 0) + slope * min(z, 0); its derivative is 0 at z == 0, as ReluGrad's.
// Written as selects, not std::min/max: those return references, and in the backward loop
// GCC then found "no vector type" for the load through one and left the loop scalar.
inline float Pos(float z) { return z > 0.f ? z : 0.f; }
inline float Neg(float z) { return z < 0.f ? z : 0.f; }
inline float Act(float z, float slope) { return Pos(z) + slope * Neg(z); }
inline float ActSlope(float z, float slope) { return float(z > 0.f) + float(z < 0.f) * slope; }

// z = (x - mean) * scale + beta with scale = gamma / std, from the float mean and scale both
// directions see: the backward recomputes each z with the forward's exact bits, so each
// takes the same side of 0. (x * scale + shift would round x * scale, not the deviation.)
inline float Scale(float gamma, float inv_std) { return float(double(gamma) * double(inv_std)); }

// The four loops over the activations, as functions of plain restrict pointers (inside the
// kernels' lambdas GCC did not vectorise them).

// Forward, pass 1: sums[0:C] += x - x0 and sums[C:2C] += (x - x0)^2 over `rows` rows.
ENET_SIMD void StatSums(const float* __restrict__ x, int64_t rows, int64_t C,
                        const float* __restrict__ x0, float* __restrict__ sums) {
  float* __restrict__ s1 = sums;
  float* __restrict__ s2 = sums + C;
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ row = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = row[c] - x0[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// Forward, pass 2: y = mask * act((x - mean) * scale + beta), rows of one image.
ENET_SIMD void Apply(const float* __restrict__ x, int64_t rows, int64_t C,
                     const float* __restrict__ mean, const float* __restrict__ scale,
                     const float* __restrict__ beta, float slope, const float* __restrict__ mask,
                     float* __restrict__ y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ row = x + r * C;
    float* __restrict__ out = y + r * C;
    for (int64_t c = 0; c < C; ++c) {
      out[c] = mask[c] * Act((row[c] - mean[c]) * scale[c] + beta[c], slope);
    }
  }
}

// Backward, pass 1, rows of one image: with g = dy * mask, sums[0:C] += dz = g * act'(z),
// sums[C:2C] += dz * (x - mean), and the slope's sums[2C:3C] += g * min(z, 0) (per
// channel: a sum across channels would not vectorise).
ENET_SIMD void GradSums(const float* __restrict__ x, const float* __restrict__ dy, int64_t rows,
                        int64_t C, const float* __restrict__ mean,
                        const float* __restrict__ scale, const float* __restrict__ beta,
                        float slope, const float* __restrict__ mask, float* __restrict__ sums) {
  float* __restrict__ s_dz = sums;
  float* __restrict__ s_dzx = sums + C;
  float* __restrict__ s_slope = sums + 2 * C;
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ row = x + r * C;
    const float* __restrict__ grow = dy + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float xm = row[c] - mean[c];
      const float z = xm * scale[c] + beta[c];
      const float g = grow[c] * mask[c];
      const float dz = g * ActSlope(z, slope);
      s_dz[c] += dz;
      s_dzx[c] += dz * xm;
      s_slope[c] += g * Neg(z);
    }
  }
}

// Backward, pass 2, rows of one image: dx = k_dz * dz + k_x * (x - mean) + k_0 per channel.
ENET_SIMD void GradApply(const float* __restrict__ x, const float* __restrict__ dy,
                         int64_t rows, int64_t C, const float* __restrict__ mean,
                         const float* __restrict__ scale, const float* __restrict__ beta,
                         float slope, const float* __restrict__ mask,
                         const float* __restrict__ k_dz,
                         const float* __restrict__ k_x, const float* __restrict__ k_0,
                         float* __restrict__ dx) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ row = x + r * C;
    const float* __restrict__ grow = dy + r * C;
    float* __restrict__ out = dx + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float xm = row[c] - mean[c];
      const float z = xm * scale[c] + beta[c];
      const float dz = grow[c] * mask[c] * ActSlope(z, slope);
      out[c] = k_dz[c] * dz + k_x[c] * xm + k_0[c];
    }
  }
}

// Adds each run of at most kRun rows, summed in float by `sums_of(begin, rows, acc)`, into
// the chunk's double partial sums.
template <typename Fn>
void ChunkSums(int64_t b, int64_t e, int64_t width, double* partial, Fn sums_of) {
  std::vector<float> acc(width);
  for (int64_t r0 = b; r0 < e; r0 += kRun) {
    std::fill(acc.begin(), acc.end(), 0.f);
    sums_of(r0, std::min(e, r0 + kRun) - r0, acc.data());
    for (int64_t i = 0; i < width; ++i) partial[i] += acc[i];
  }
}

// Calls fn(begin, end, image) for the pieces of rows [b, e) that lie in one image each.
template <typename Fn>
void ByImage(int64_t b, int64_t e, int64_t rows_per_image, Fn fn) {
  while (b < e) {
    const int64_t image = b / rows_per_image;
    const int64_t end = std::min(e, (image + 1) * rows_per_image);
    fn(b, end, image);
    b = end;
  }
}

// The mask input: (N, C) factors for N images of rows / N rows each.
bool Mask(OpKernelContext* ctx, const Tensor& x, const Tensor& mask, int64_t C, int64_t rows,
          int64_t* rows_per_image) {
  const int64_t images = x.dims() > 1 ? x.dim_size(0) : 1;
  if (mask.NumElements() != images * C) {
    ctx->CtxFailure(errors::InvalidArgument("EnetBatchNormAct: mask has ", mask.NumElements(),
                                            " values for ", images, " images x ", C,
                                            " channels"));
    return false;
  }
  *rows_per_image = images ? std::max<int64_t>(rows / images, 1) : 1;
  return true;
}

bool Scalar(OpKernelContext* ctx, const Tensor& t, float* value) {
  if (t.NumElements() != 1) {
    ctx->CtxFailure(errors::InvalidArgument("EnetBatchNormAct: slope must have one element"));
    return false;
  }
  *value = t.flat<float>()(0);
  return true;
}

bool Channels(OpKernelContext* ctx, const Tensor& x, std::initializer_list<int> vectors,
              int64_t* channels, int64_t* rows) {
  if (x.dims() < 1) {
    ctx->CtxFailure(errors::InvalidArgument("EnetBatchNormAct: x needs a channel axis"));
    return false;
  }
  *channels = x.dim_size(x.dims() - 1);
  *rows = *channels ? x.NumElements() / *channels : 0;
  for (int i : vectors) {
    if (ctx->input(i).NumElements() != *channels) {
      ctx->CtxFailure(errors::InvalidArgument("EnetBatchNormAct: input ", i, " has ",
                                              ctx->input(i).NumElements(), " values for ",
                                              *channels, " channels"));
      return false;
    }
  }
  return true;
}

class EnetBatchNormActOp : public OpKernel {
 public:
  explicit EnetBatchNormActOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(c, c->GetAttr("momentum", &momentum_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    int64_t C, rows;
    if (!Channels(ctx, x, {1, 2, 4, 5}, &C, &rows)) return;
    float slope;
    if (!Scalar(ctx, ctx->input(3), &slope)) return;
    const float* gamma = ctx->input(1).flat<float>().data();
    const float* beta = ctx->input(2).flat<float>().data();
    const float* moving_mean = ctx->input(4).flat<float>().data();
    const float* moving_var = ctx->input(5).flat<float>().data();
    int64_t per_image;
    if (!Mask(ctx, x, ctx->input(6), C, rows, &per_image)) return;
    const float* mask = ctx->input(6).flat<float>().data();
    Tensor *y, *mean_t, *inv_t, *new_mean_t, *new_var_t;
    const TensorShape vec({C});
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, vec, &mean_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, vec, &inv_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, vec, &new_mean_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, vec, &new_var_t));
    float* mean = mean_t->flat<float>().data();
    float* inv_std = inv_t->flat<float>().data();
    float* new_mean = new_mean_t->flat<float>().data();
    float* new_var = new_var_t->flat<float>().data();
    if (rows == 0) {  // an empty batch (a data-parallel worker's last share): keep the averages
      for (int64_t c = 0; c < C; ++c) {
        mean[c] = 0.f;
        inv_std[c] = 0.f;
        new_mean[c] = moving_mean[c];
        new_var[c] = moving_var[c];
      }
      return;
    }
    const float* in = x.flat<float>().data();

    // Sums of (x - x0) and its square, x0 the first row, so that a channel whose mean is
    // large against its spread keeps its digits.
    std::vector<double> partial(kChunks * 2 * C, 0.0);
    enet::ForChunks(ctx, rows, [&](int64_t chunk, int64_t b, int64_t e) {
      ChunkSums(b, e, 2 * C, &partial[chunk * 2 * C], [&](int64_t r0, int64_t n, float* acc) {
        StatSums(in + r0 * C, n, C, in, acc);
      });
    });
    std::vector<float> scale(C);
    const double n = double(rows);
    for (int64_t c = 0; c < C; ++c) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t k = 0; k < kChunks; ++k) {
        s1 += partial[k * 2 * C + c];
        s2 += partial[k * 2 * C + C + c];
      }
      const double m = s1 / n;
      const double var = std::max(s2 / n - m * m, 0.0);  // biased: what x is normalised by
      mean[c] = float(double(in[c]) + m);
      inv_std[c] = float(1.0 / std::sqrt(var + double(epsilon_)));
      scale[c] = Scale(gamma[c], inv_std[c]);
      // Keras' update: moving -= (moving - batch) * (1 - momentum), the variance with
      // Bessel's correction (n / (n - 1)), as the fused op Keras calls gives it.
      const float unbiased = float(rows > 1 ? var * n / (n - 1.0) : var);
      new_mean[c] = moving_mean[c] - (moving_mean[c] - mean[c]) * (1.f - momentum_);
      new_var[c] = moving_var[c] - (moving_var[c] - unbiased) * (1.f - momentum_);
    }
    float* out = y->flat<float>().data();
    enet::ForChunks(ctx, rows, [&](int64_t, int64_t b, int64_t e) {
      ByImage(b, e, per_image, [&](int64_t r0, int64_t r1, int64_t image) {
        Apply(in + r0 * C, r1 - r0, C, mean, scale.data(), beta, slope, mask + image * C,
              out + r0 * C);
      });
    });
  }

 private:
  float epsilon_;
  float momentum_;
};

class EnetBatchNormActGradOp : public OpKernel {
 public:
  explicit EnetBatchNormActGradOp(OpKernelConstruction* c) : OpKernel(c) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                errors::InvalidArgument("EnetBatchNormActGrad: dy and x differ in shape"));
    int64_t C, rows;
    if (!Channels(ctx, x, {2, 3, 5, 6}, &C, &rows)) return;
    float slope;
    if (!Scalar(ctx, ctx->input(4), &slope)) return;
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* beta = ctx->input(3).flat<float>().data();
    const float* mean = ctx->input(5).flat<float>().data();
    const float* inv_std = ctx->input(6).flat<float>().data();
    int64_t per_image;
    if (!Mask(ctx, x, ctx->input(7), C, rows, &per_image)) return;
    const float* mask = ctx->input(7).flat<float>().data();
    Tensor *dx_t, *dgamma_t, *dbeta_t, *dslope_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({C}), &dgamma_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &dbeta_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, ctx->input(4).shape(), &dslope_t));
    float* dgamma = dgamma_t->flat<float>().data();
    float* dbeta = dbeta_t->flat<float>().data();
    if (rows == 0) {
      std::fill(dgamma, dgamma + C, 0.f);
      std::fill(dbeta, dbeta + C, 0.f);
      dslope_t->flat<float>()(0) = 0.f;
      return;
    }
    const float* g = dy.flat<float>().data();
    const float* in = x.flat<float>().data();
    std::vector<float> scale(C);
    for (int64_t c = 0; c < C; ++c) scale[c] = Scale(gamma[c], inv_std[c]);
    const float* sc = scale.data();

    const int64_t width = 3 * C;
    std::vector<double> partial(kChunks * width, 0.0);
    enet::ForChunks(ctx, rows, [&](int64_t chunk, int64_t b, int64_t e) {
      ChunkSums(b, e, width, &partial[chunk * width], [&](int64_t r0, int64_t n, float* acc) {
        ByImage(r0, r0 + n, per_image, [&](int64_t s0, int64_t s1, int64_t image) {
          GradSums(in + s0 * C, g + s0 * C, s1 - s0, C, mean, sc, beta, slope,
                   mask + image * C, acc);
        });
      });
    });
    // dx = gamma * inv / n * (n * dz - sum(dz) - xhat * sum(dz * xhat)), xhat = (x - mean)
    // * inv: per channel an affine map of dz and x - mean.
    std::vector<float> k_dz(C), k_x(C), k_0(C);
    double total_slope = 0.0;
    const double n = double(rows);
    for (int64_t c = 0; c < C; ++c) {
      double sdz = 0.0, sdzx = 0.0;
      for (int64_t k = 0; k < kChunks; ++k) {
        sdz += partial[k * width + c];
        sdzx += partial[k * width + C + c];
        total_slope += partial[k * width + 2 * C + c];
      }
      const double inv = double(inv_std[c]);
      const double k = double(gamma[c]) * inv;
      dbeta[c] = float(sdz);
      dgamma[c] = float(sdzx * inv);
      k_dz[c] = float(k);
      k_x[c] = float(-k * inv * inv * sdzx / n);
      k_0[c] = float(-k * sdz / n);
    }
    dslope_t->flat<float>()(0) = float(total_slope);
    float* dx = dx_t->flat<float>().data();
    enet::ForChunks(ctx, rows, [&](int64_t, int64_t b, int64_t e) {
      ByImage(b, e, per_image, [&](int64_t r0, int64_t r1, int64_t image) {
        GradApply(in + r0 * C, g + r0 * C, r1 - r0, C, mean, sc, beta, slope, mask + image * C,
                  k_dz.data(), k_x.data(), k_0.data(), dx + r0 * C);
      });
    });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("EnetBatchNormAct").Device(DEVICE_CPU), EnetBatchNormActOp);
REGISTER_KERNEL_BUILDER(Name("EnetBatchNormActGrad").Device(DEVICE_CPU), EnetBatchNormActGradOp);
