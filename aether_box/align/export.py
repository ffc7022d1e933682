"""Projectors as ONNX graphs (built with onnx.helper), and running them with ONNX Runtime.

The graph computes exactly what `Projector.__call__` does (see projectors.py) and has two
outputs: ``y`` (n, dout), the unit-length projection, and ``norm`` (n, 1), the length of the
output before that last normalisation (a signal the gate uses). When exported with its gate
(the served method is), a third output ``agreement`` (n, 1) is the gate's calibrated
probability that the projection finds the native vector's top-1 (see gate.py), so one run
gives both.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aether_box.align.gate import Gate
from aether_box.align.projectors import EPS, Projector
from aether_box.errors import BadRequest

__all__ = ["OnnxProjector", "to_onnx"]

OPSET = 17  # the last opset whose ReduceL2 takes `axes` as an attribute
IR_VERSION = 8


def _normalise(nodes: list, src: str, dst: str, norm: str) -> None:
    nodes.append(helper.make_node("ReduceL2", [src], [norm], axes=[-1], keepdims=1))
    nodes.append(helper.make_node("Max", [norm, "eps"], [f"{norm}_safe"]))
    nodes.append(helper.make_node("Div", [src, f"{norm}_safe"], [dst]))


def _gate_nodes(gate: Gate, nodes: list, inits: list) -> None:
    """agreement = sigmoid(c0 + c1 * norm + c2 * cycle + c3 * spread), as gate.py defines."""
    r, k, dout = gate.reverse, len(gate.folds), gate.folds[0].dout
    c = gate.coef.astype(np.float32)
    folds_w = np.concatenate([f.w0 for f in gate.folds], axis=1)  # one Gemm for all K maps
    folds_b = np.concatenate([f.b0 for f in gate.folds])
    inits += [
        numpy_helper.from_array(r.w0, "rw0"),
        numpy_helper.from_array(r.b0, "rb0"),
        numpy_helper.from_array(folds_w, "fw"),
        numpy_helper.from_array(folds_b, "fb"),
        numpy_helper.from_array(np.array([-1, k, dout], np.int64), "fold_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
        numpy_helper.from_array(c[0:1], "c0"),
        numpy_helper.from_array(c[1:2], "c1"),
        numpy_helper.from_array(c[2:3], "c2"),
        numpy_helper.from_array(c[3:4], "c3"),
    ]
    nodes += [
        # cycle: cos(xn, reverse(y))
        helper.make_node("Gemm", ["y", "rw0", "rb0"], ["back_raw"]),
    ]
    _normalise(nodes, "back_raw", "back", "back_norm")
    nodes += [
        helper.make_node("Mul", ["xn", "back"], ["xb"]),
        helper.make_node("ReduceSum", ["xb", "last_axis"], ["cycle"], keepdims=1),
        # spread: mean over folds of cos(fold_k(xn), y)
        helper.make_node("Gemm", ["xn", "fw", "fb"], ["folds_flat"]),
        helper.make_node("Reshape", ["folds_flat", "fold_shape"], ["folds_raw"]),
    ]
    _normalise(nodes, "folds_raw", "folds_unit", "folds_norm")
    nodes += [
        helper.make_node("Unsqueeze", ["y", "one_axis"], ["y3"]),
        helper.make_node("Mul", ["folds_unit", "y3"], ["fy"]),
        helper.make_node("ReduceSum", ["fy", "last_axis"], ["fold_cos"], keepdims=0),
        helper.make_node("ReduceMean", ["fold_cos"], ["spread"], axes=[1], keepdims=1),
        # logistic calibration
        helper.make_node("Mul", ["norm", "c1"], ["t1"]),
        helper.make_node("Mul", ["cycle", "c2"], ["t2"]),
        helper.make_node("Mul", ["spread", "c3"], ["t3"]),
        helper.make_node("Sum", ["t1", "t2", "t3", "c0"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["agreement"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one_axis"))


def to_onnx(projector: Projector, gate: Gate | None = None) -> onnx.ModelProto:
    """The projector (and its gate) as a checked ONNX model: ``x`` (n, din) -> outputs."""
    p = projector
    inits = [
        numpy_helper.from_array(np.array([EPS], np.float32), "eps"),
        numpy_helper.from_array(p.w0, "w0"),
        numpy_helper.from_array(p.b0, "b0"),
    ]
    nodes: list = []
    _normalise(nodes, "x", "xn", "x_norm")
    nodes.append(helper.make_node("Gemm", ["xn", "w0", "b0"], ["z0"]))
    last = "z0"
    if p.w1 is not None and p.b1 is not None and p.w2 is not None:
        inits += [
            numpy_helper.from_array(p.w1, "w1"),
            numpy_helper.from_array(p.b1, "b1"),
            numpy_helper.from_array(p.w2, "w2"),
        ]
        nodes += [
            helper.make_node("Gemm", ["xn", "w1", "b1"], ["a1"]),
            helper.make_node("Relu", ["a1"], ["h1"]),
            helper.make_node("MatMul", ["h1", "w2"], ["z1"]),
            helper.make_node("Add", ["z0", "z1"], ["z"]),
        ]
        last = "z"
    _normalise(nodes, last, "y", "norm")
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", p.dout]),
        helper.make_tensor_value_info("norm", TensorProto.FLOAT, ["n", 1]),
    ]
    if gate is not None:
        _gate_nodes(gate, nodes, inits)
        outputs += [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 1])
            for name in ("agreement", "cycle", "spread")
        ]
    graph = helper.make_graph(
        nodes,
        f"project_{p.source}_to_{p.target}_{p.method}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", p.din])],
        outputs,
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="aether-box align"
    )
    model.ir_version = IR_VERSION
    model.doc_string = f"{p.method} projector {p.source} ({p.din}) -> {p.target} ({p.dout})"
    onnx.checker.check_model(model)
    return model


class OnnxProjector:
    """A projector served by ONNX Runtime: one thread, sequential, full graph optimisation."""

    def __init__(self, model: onnx.ModelProto | bytes | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One small GEMM: a thread pool's wake-up costs more than the work it would share.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if isinstance(model, Path):
            source: bytes = model.read_bytes()
        elif isinstance(model, onnx.ModelProto):
            source = model.SerializeToString()
        else:
            source = model
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.din = int(self.session.get_inputs()[0].shape[1])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.dims = {o.name: int(o.shape[1]) for o in self.session.get_outputs()}
        self.dout = self.dims["y"]
        self.has_gate = "agreement" in self.dims
        self.has_signals = "spread" in self.dims  # graphs exported before routes.py lack it
        self._local = threading.local()

    @classmethod
    def from_projector(cls, projector: Projector, gate: Gate | None = None) -> OnnxProjector:
        """Export `projector` (with `gate`) and load the result."""
        return cls(to_onnx(projector, gate))

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for rows of `x`: ``y`` (n, dout); ``norm`` and, with a gate,
        ``agreement``, ``cycle`` and ``spread`` (n,)."""
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.din:
            raise BadRequest(
                f"vectors have shape {x.shape}; this projector takes rows of {self.din} numbers"
            )
        if len(x) == 1:
            return self._run_one(x)
        values = self.session.run(self.outputs, {"x": x})
        return {
            name: v if name == "y" else v[:, 0]
            for name, v in zip(self.outputs, values, strict=True)
        }

    def _run_one(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # Single vectors reuse one IO binding per thread with preallocated buffers: no output
        # allocation or name lookup per call (the 100 us budget is mostly such overheads).
        state = getattr(self._local, "state", None)
        if state is None:
            x_buf = np.zeros((1, self.din), np.float32)
            binding = self.session.io_binding()
            binding.bind_input("x", "cpu", 0, np.float32, [1, self.din], x_buf.ctypes.data)
            buffers = {}
            for name in self.outputs:
                buffers[name] = np.zeros((1, self.dims[name]), np.float32)
                binding.bind_output(
                    name, "cpu", 0, np.float32, [1, self.dims[name]], buffers[name].ctypes.data
                )
            state = self._local.state = (binding, x_buf, buffers)
        binding, x_buf, buffers = state
        x_buf[...] = x
        self.session.run_with_iobinding(binding)
        return {name: b.copy() if name == "y" else b[:, 0].copy() for name, b in buffers.items()}
