"""Sentence encoders on ONNX Runtime: tokenize, run, mean-pool, L2-normalise.

An encoder is a dir with ``encoder.json`` naming its ONNX file and tokenizer.json (paths
relative to the dir, or absolute for user-added models). A dir that holds a BERT or MPNet
``model.safetensors`` is exported to ONNX first (once; see aether_box.models.bert_export). The CUDA provider is
used when a GPU is present, the CPU one otherwise; `provider` says which.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from aether_box.errors import BadRequest, NotFound
from aether_box.models.encoders import ENCODER_JSON

__all__ = ["OnnxEncoder", "padded_batch"]

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Texts run in length-sorted sub-batches, so short texts are not padded to the longest of a
# large request (graphs exported elsewhere pad everything; the box's own skip padding in all
# but attention, bert_export.build_packed_graph). On CPU, one core per sub-batch: 16 texts did
# 4% more texts per CPU-second than 8, and 32 2% fewer. A GPU prefers big batches.
SUB_BATCH = {CPU: 16, CUDA: 128}


class OnnxEncoder:
    """A loaded sentence encoder; `embed` is thread-safe (ONNX Runtime sessions are).

    On CPU a call's texts are shared out over `workers` threads, each running its sub-batches
    on one core (a session with one intra-op thread; ONNX Runtime runs concurrent calls of one
    session in parallel): none of the per-operator hand-offs between threads that an intra-op
    pool makes (about 110 per run, each a wake-up when threads sleep between operators), and a
    thread that a busy host deschedules holds up only its own share.
    """

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        config: dict[str, Any],
        path: Path,
        onnx_path: Path,
        workers: int = 1,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.path = path
        self.provider: str = session.get_providers()[0]
        self._inputs = {i.name for i in session.get_inputs()}
        output = next(
            (o for o in session.get_outputs() if o.name == "sentence_embedding"),
            session.get_outputs()[0],
        )
        self._output = output.name
        self._pooled = len(output.shape) == 2  # else token embeddings, pooled here
        self.dim: int = int(config.get("dim") or output.shape[-1])
        self.onnx_path = onnx_path  # the float32 graph, or its int8 copy
        self.int8 = onnx_path.name == config.get("onnx_int8")
        self.memory_bytes: int = _weights_bytes(onnx_path)
        self.workers = max(1, workers)
        self._pool = (
            ThreadPoolExecutor(self.workers - 1, thread_name_prefix="onnx-encoder")
            if self.workers > 1
            else None
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        threads: int | None = None,
        int8: bool = False,
    ) -> OnnxEncoder:
        """Load the encoder in dir `path` (or an .onnx file with tokenizer.json beside it).

        `device` is "auto" (CUDA when a GPU is present), "cuda" or "cpu"; `threads` (default:
        the physical cores) is how many sub-batches run at once on CPU; `int8` loads the
        encoder's int8 copy where it has one (`onnx_int8` in encoder.json; the box writes one
        for every BERT it exports).
        """
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from aether_box.errors import CorruptModel

        path = Path(path)
        config = _encoder_config(path)
        root = path if path.is_dir() else path.parent
        onnx_path = _resolve(root, config["onnx"])
        if int8 and config.get("onnx_int8"):
            if _resolve(root, config["onnx_int8"]).is_file():
                onnx_path = _resolve(root, config["onnx_int8"])
            else:
                log.warning("%s has no int8 copy (deleted?): running float32", root)
        threads = threads or psutil.cpu_count(logical=False) or 1
        providers = _providers(device)
        on_cpu = providers == [CPU]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # On CPU the encoder runs `threads` calls at once, one core each (see the class doc).
        options.intra_op_num_threads = 1 if on_cpu else threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # CUDA fallback notices are reported via `provider`
        # Idle worker threads sleep instead of spinning: the box shares its cores with
        # llama.cpp and the event loop (spinning cost 20% more CPU per text under load).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise CorruptModel(
                f"{onnx_path} could not be loaded by ONNX Runtime ({str(exc)[:300]}); the file "
                "is truncated or not an encoder: pull or export it again"
            ) from exc
        tokenizer = Tokenizer.from_file(str(_resolve(root, config["tokenizer"])))
        tokenizer.no_padding()  # tokenizer.json may pin a fixed padding; we pad per batch
        tokenizer.enable_truncation(int(config.get("max_length", 512)))
        return cls(session, tokenizer, config, root, onnx_path, threads if on_cpu else 1)

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest("texts must be a list of strings")
        out = np.empty((len(texts), self.dim), np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        step = SUB_BATCH.get(self.provider, 8)

        def run_share(rows: np.ndarray) -> None:
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                out[chunk] = self._run([encodings[i] for i in chunk])

        # Every worker takes every n-th text of the sorted order: equal shares of short and
        # long texts, so the workers finish together; this thread runs the first share.
        shares = [order[i :: self.workers] for i in range(min(self.workers, len(texts)))]
        pending = (
            [self._pool.submit(run_share, share) for share in shares[1:]] if self._pool else []
        )
        try:
            run_share(shares[0])
        finally:
            for future in pending:
                future.result()
        return out

    def close(self) -> None:
        """Stop the worker threads (the session itself goes with the object)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _run(self, encodings: list[Any]) -> np.ndarray:
        feeds = padded_batch(encodings)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (result,) = self.session.run([self._output], feeds)
        if not self._pooled:
            weights = mask[:, :, None].astype(np.float32)
            result = (result * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        norms = np.maximum(np.linalg.norm(result, axis=1, keepdims=True), 1e-12)
        return (result / norms).astype(np.float32, copy=False)


def padded_batch(encodings: list[Any]) -> dict[str, np.ndarray]:
    """An encoder's inputs for tokenizer encodings: `input_ids` and `attention_mask`, (texts,
    longest) int64, each row padded on the right."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), np.int64)
    mask = np.zeros((len(encodings), width), np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def gpu_present() -> bool:
    """Whether an NVIDIA GPU and driver are visible (onnxruntime-gpu lists CUDA regardless)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def cuda_unavailable_reason() -> str | None:
    """Why ONNX models run on the CPU on this machine, in one plain line; None if CUDA can run.

    Loads onnxruntime: call it off the event loop.
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider (a CPU build): ONNX models run on the CPU"
    if not _cuda_library_present(ort):
        return (
            "onnxruntime's CUDA provider library is not installed here (the standalone "
            "executable leaves it out unless built with --cuda): ONNX models run on the CPU"
        )
    if not gpu_present():
        return "no NVIDIA GPU or driver on this machine: ONNX models run on the CPU"
    return None


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device not in ("auto", "cuda", "cpu"):
        raise BadRequest(f"device must be auto, cuda or cpu, not {device!r}")
    cuda_ok = (
        CUDA in ort.get_available_providers()
        and _cuda_library_present(ort)
        and (device == "cuda" or gpu_present())
    )
    return [CUDA, CPU] if device != "cpu" and cuda_ok else [CPU]


def _cuda_library_present(ort: Any) -> bool:
    # onnxruntime-gpu lists CUDA even where its provider library was left out (the
    # standalone executable drops it to stay small); asking for it then prints an error.
    capi = Path(ort.__file__).parent / "capi"
    return any(capi.glob("libonnxruntime_providers_cuda*"))


def _encoder_config(path: Path) -> dict[str, Any]:
    if path.is_file() and path.suffix == ".onnx":
        return {"onnx": path.name, "tokenizer": "tokenizer.json", "max_length": 512}
    if not path.is_dir():
        raise NotFound(
            f"no ONNX encoder at {path}; pull or add one (`aether-box models pull minilm`)"
        )
    if (path / "model.safetensors").is_file():
        from aether_box.models.bert_export import ensure_exported

        ensure_exported(path)
    config_path = path / ENCODER_JSON
    if not config_path.is_file():
        raise NotFound(f"{path} has no {ENCODER_JSON}; it is not an encoder dir")
    return json.loads(config_path.read_text("utf-8"))


def _resolve(root: Path, name: str) -> Path:
    candidate = Path(name)
    return candidate if candidate.is_absolute() else root / candidate


def _weights_bytes(onnx_path: Path) -> int:
    # The weights dominate an encoder's memory; ONNX Runtime holds one copy of them.
    return onnx_path.stat().st_size if onnx_path.exists() else 0
