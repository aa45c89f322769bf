"""A Keras step mask ([N, T] booleans, any padding side, holes too) as ONNX ops around a fused node.

ONNX recurrent ops know only ``sequence_lens``: the first ``len`` steps are real.  A Keras mask may
mask any steps.  Masked steps leave the state untouched, so running only the unmasked steps, in
order, gives the same states: ``compact`` moves each sequence's unmasked steps to the front (a
stable permutation computed from cumulative sums) and counts them.  Keras then carries the previous
output over masked steps (zeros before the first real step) or writes zeros there when the layer
has ``zero_output_for_mask``; ``restore`` reproduces both with one gather from the compact outputs.
The reverse direction of a Bidirectional layer reads the compact steps backwards, which is exactly
Keras' backward layer over the unmasked steps, so the same gather places its outputs.
"""

from __future__ import annotations

import numpy as np
import onnx

from converters.keras_layers import GraphBuilder


def compact(b: GraphBuilder, x: str, mask: str, *, base: str) -> tuple[str, str, str]:
    """(x with unmasked steps first [N, T, F], sequence_lens int32 [N], inclusive count of real steps [N, T])."""
    one_axis = b.const(f"{base}/mask_time_axis", np.array(1, np.int64))
    real = b.add("Cast", [mask], base=f"{base}/mask_int", to=onnx.TensorProto.INT64)[0]
    positions = b.add("CumSum", [real, one_axis], base=f"{base}/real_steps_so_far")[0]
    keep = b.const(f"{base}/keepdims_axis", np.array([1], np.int64))
    count = b.add("ReduceSum", [real, keep], base=f"{base}/real_steps", keepdims=1)[0]  # [N, 1]
    padding = b.add("Sub", [b.const(f"{base}/one", np.array(1, np.int64)), real], base=f"{base}/mask_pad")[0]
    pads_so_far = b.add("CumSum", [padding, one_axis], base=f"{base}/pad_steps_so_far")[0]
    # Real step t goes to positions[t]-1; masked step t goes after all real steps, in order.
    real_place = b.add("Mul", [real, positions], base=f"{base}/real_place")[0]
    pad_place = b.add("Mul", [padding, b.add("Add", [count, pads_so_far], base=f"{base}/pad_after_real")[0]],
                      base=f"{base}/pad_place")[0]
    place = b.add("Sub", [b.add("Add", [real_place, pad_place], base=f"{base}/place_1based")[0],
                          b.const(f"{base}/one_", np.array(1, np.int64))], base=f"{base}/place")[0]
    last_axis = b.const(f"{base}/feature_axis", np.array([-1], np.int64))
    expanded = b.add("Expand", [b.add("Unsqueeze", [place, last_axis], base=f"{base}/place_3d")[0],
                                b.add("Shape", [x], base=f"{base}/x_shape")[0]], base=f"{base}/place_like_x")[0]
    moved = b.add("ScatterElements", [x, expanded, x], base=f"{base}/real_steps_first", axis=1)[0]
    flat = b.add("Squeeze", [count, keep], base=f"{base}/real_count")[0]
    lens = b.add("Cast", [flat], base=f"{base}/sequence_lens", to=onnx.TensorProto.INT32)[0]
    return moved, lens, positions


def restore(b: GraphBuilder, y: str, positions: str, mask: str, *, zero_masked: bool, base: str) -> str:
    """Outputs at the original steps from compact outputs ``y`` [N, T, D, H]: step t shows compact output
    positions[t]-1 (the last real step so far) and zeros before any; ``zero_masked`` zeros masked steps."""
    pads = b.const(f"{base}/zero_step_pads", np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64))
    padded = b.add("Pad", [y, pads], base=f"{base}/zero_step_first")[0]  # index 0 is "nothing yet"
    axes = b.const(f"{base}/direction_hidden_axes", np.array([2, 3], np.int64))
    index = b.add("Unsqueeze", [positions, axes], base=f"{base}/restore_index_4d")[0]
    full = b.add("Shape", [y], base=f"{base}/y_shape")[0]
    index = b.add("Expand", [index, full], base=f"{base}/restore_index")[0]
    out = b.add("GatherElements", [padded, index], base=f"{base}/carry_over", axis=1)[0]
    if not zero_masked:
        return out
    scale = b.add("Cast", [mask], base=f"{base}/mask_float", to=onnx.TensorProto.FLOAT)[0]
    scale = b.add("Unsqueeze", [scale, axes], base=f"{base}/mask_4d")[0]
    return b.add("Mul", [out, scale], base=f"{base}/zero_masked")[0]
