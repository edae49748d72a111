// The training step's confusion matrix straight from the logits: each pixel's first largest
// logit (tf.argmax's choice) counted against its label in one pass over the logits, split
// over the intra-op pool. TensorFlow's ArgMax kernel ran on one thread over the whole
// (N, H, W, K) logits, then Where, Cast and Bincount passed over every pixel again.
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

REGISTER_OP("EnetConfusion")
    .Input("logits: float")
    .Input("labels: int32")
    .Attr("ignore_index: int")
    .Output("confusion: int32")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      auto k = c->Dim(c->input(0), -1);
      c->set_output(0, c->Matrix(k, k));
      return Status();
    });

namespace {

using enet::kChunks;

class EnetConfusionOp : public OpKernel {
 public:
  explicit EnetConfusionOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, c->GetAttr("ignore_index", &ignore_index_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    OP_REQUIRES(ctx, logits.dims() >= 1,
                errors::InvalidArgument("EnetConfusion: logits need a class axis"));
    const int64_t K = logits.dim_size(logits.dims() - 1);
    const int64_t pixels = K ? logits.NumElements() / K : 0;
    OP_REQUIRES(ctx, labels.NumElements() == pixels,
                errors::InvalidArgument("EnetConfusion: ", labels.NumElements(),
                                        " labels for ", pixels, " pixels of logits"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({K, K}), &out));
    int32* counts = out->flat<int32>().data();
    std::fill(counts, counts + K * K, 0);
    if (pixels == 0) return;
    const float* x = logits.flat<float>().data();
    const int32* y = labels.flat<int32>().data();
    const int32 ignore = ignore_index_;
    // Per chunk counts (int64: a chunk never overflows), added in chunk order.
    std::vector<int64_t> partial(kChunks * K * K, 0);
    enet::ForChunks(ctx, pixels, [&](int64_t chunk, int64_t b, int64_t e) {
        int64_t* mine = &partial[chunk * K * K];
        for (int64_t p = b; p < e; ++p) {
          const int32 label = y[p];
          if (label == ignore || label < 0 || label >= K) continue;
          const float* row = x + p * K;
          int64_t best = 0;
          float top = row[0];
          for (int64_t k = 1; k < K; ++k) {
            if (row[k] > top) {  // strictly greater: the first maximum wins, as tf.argmax
              top = row[k];
              best = k;
            }
          }
          ++mine[label * K + best];
        }
    });
    for (int64_t chunk = 0; chunk < kChunks; ++chunk) {
      for (int64_t i = 0; i < K * K; ++i) counts[i] += static_cast<int32>(partial[chunk * K * K + i]);
    }
  }

 private:
  int32 ignore_index_;
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("EnetConfusion").Device(DEVICE_CPU), EnetConfusionOp);
