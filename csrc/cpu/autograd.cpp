// C++ autograd for `<name>_native` ops, for eager calls that need a gradient.
//
// fastgen's public ops get their autograd in Python (FusedOp: torch.library.register_autograd,
// and an autograd.Function for eager calls). At the small sizes of a UNet or VQGAN block that
// Python node is most of the op's cost: the engine's call into a Python backward (GIL, unpacking
// the saved tensors, the backward op's Python call) costs tens of microseconds, where ATen's own
// C++ nodes cost a few. So a native op listed here also has a kernel on the Autograd key, and
// FusedOp calls the native op itself in eager mode when a gradient is needed (FusedOp's
// `native_autograd`). Tracing, torch.compile, tensor subclasses and functorch transforms still
// take the public op and its Python autograd, which this does not change.
//
// The kernel is device-independent: the forward and backward redispatch below autograd to the
// CPU or CUDA kernels of the same native ops, whose C++ checks validate every argument.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace fastgen {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// -- group_norm_silu ----------------------------------------------------------------------------

using GroupNormSiluSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, double, bool);
using GroupNormSiluBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const at::Tensor&, const at::Tensor&, int64_t, bool);

const c10::TypedOperatorHandle<GroupNormSiluSig>& group_norm_silu_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgen::group_norm_silu_native", "")
                             .typed<GroupNormSiluSig>();
  return op;
}

const c10::TypedOperatorHandle<GroupNormSiluBackwardSig>& group_norm_silu_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastgen::group_norm_silu_backward_native", "")
                             .typed<GroupNormSiluBackwardSig>();
  return op;
}

// Differentiable w.r.t. x, weight and bias, once (the backward op has no autograd of its own,
// as with the Python registration); mean and rstd are statistics, not differentiable.
struct GroupNormSiluFunction : public torch::autograd::Function<GroupNormSiluFunction> {
  // (an absent weight / bias is an empty optional: Function::apply takes no undefined tensor)
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, int64_t num_groups, double eps, bool act) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = group_norm_silu_op().call(x, weight, bias, num_groups, eps, act);
    ctx->save_for_backward({x, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()), mean, rstd});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["act"] = act;
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);  // no zero tensors for the statistics' (unused) gradients
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[1];
    const at::Tensor& bias = saved[2];
    variable_list out(6);  // one per forward argument: dx, dweight, dbias, then three non-tensors
    if (!grads[0].defined()) return out;  // y did not reach the loss: no gradient flows
    auto [dx, dw, db] = group_norm_silu_backward_op().call(
        grads[0], saved[0], optional_of(weight), optional_of(bias), saved[3], saved[4],
        ctx->saved_data["num_groups"].toInt(), ctx->saved_data["act"].toBool());
    if (ctx->needs_input_grad(0)) out[0] = dx;
    if (weight.defined()) out[1] = dw;
    if (bias.defined()) out[2] = db;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_autograd(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    int64_t num_groups, double eps, bool act) {
  auto out = GroupNormSiluFunction::apply(x, weight, bias, num_groups, eps, act);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, Autograd, m) {
  m.impl("group_norm_silu_native", &group_norm_silu_autograd);
}

}  // namespace fastgen
