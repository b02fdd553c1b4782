"""Scoring engines: encoded feature rows in, model outputs out, on ONNX Runtime or torch.

Both run the same network with the preprocessing folded in (`maas.modules.model.FeatureTransform`):
- `OnnxEngine`: the served ONNX artifact (int8, or fp32 graph-optimized where that was chosen) on ONNX
  Runtime, the fast default on CPU;
- `TorchEngine`: the pruned fp32 weights, quantized to int8 by torch's dynamic quantization at
  load time, for machines without ONNX Runtime. torch is imported only when it is chosen, so a
  scoring container does not need it.
"""

from __future__ import annotations

import io
import warnings
from abc import ABC, abstractmethod

import numpy as np
import pandas as pd

from maas.modules.preprocess import FeatureSpec

# Rows per engine call of a graph that quantizes its activations with each call's own range (dynamic int8): a
# row's outputs depend on the rows scored with it, so such a graph gets each record batch whole, as earlier versions
# gave it (slicing would change the predictions they wrote).
DEFAULT_BATCH_ROWS = 65_536
# Rows per call of a graph that computes every row on its own (fp32, static int8): the activations of a few thousand
# rows stay in cache, those of 65,536 do not (the served network of benchmarks/score_bench.py ran at about 1.6x the
# rows/s on one thread, 1.2x on two; outputs bit for bit the same).
CACHE_ROWS = 4_096


class Engine(ABC):
    name: str
    variant: str  # the card's artifact this engine serves
    rows_per_call: int = DEFAULT_BATCH_ROWS

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec

    @abstractmethod
    def _run_batch(self, features: np.ndarray) -> np.ndarray: ...

    def run(self, features: np.ndarray) -> np.ndarray:
        """Model outputs for an encoded feature matrix: class probabilities, or regression values."""
        if len(features) == 0:
            return np.empty((0, self.spec.output_size), dtype=np.float32)
        step = self.rows_per_call
        return np.concatenate(
            [self._run_batch(features[start : start + step]) for start in range(0, len(features), step)]
        )

    def frame(self, outputs: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """`prediction` (label or value) plus `prob_<class>` columns for classification."""
        if self.spec.classes is None:
            return pd.DataFrame({"prediction": outputs[:, 0]}, index=index)
        labels = pd.Series(self.spec.classes)
        columns = {"prediction": labels.take(outputs.argmax(axis=1)).to_numpy() if len(outputs) else labels[:0]}
        columns.update({f"prob_{label}": outputs[:, i] for i, label in enumerate(self.spec.classes)})
        return pd.DataFrame(columns, index=index)

    def predict(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        """Predictions for a table whose every row must be usable (strict encoding)."""
        return self.frame(self.run(self.spec.encode(frame, source)), frame.index)


class OnnxEngine(Engine):
    name = "onnxruntime"
    variant = "int8"

    def __init__(self, spec: FeatureSpec, onnx_model: bytes, threads: int | None = None) -> None:
        super().__init__(spec)
        self.session = onnx_session(onnx_model, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.rows_per_call = DEFAULT_BATCH_ROWS if quantizes_per_call(onnx_model) else CACHE_ROWS

    def _run_batch(self, features: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: features})[0]


class TorchEngine(Engine):
    name = "torch"
    variant = "torch"

    def __init__(self, spec: FeatureSpec, model_config: dict, state_dict: bytes, threads: int | None = None) -> None:
        import torch

        from maas.modules.model import MLPConfig, ScoringHead, TabularNet
        from maas.modules.vision import VisionConfig, build_net

        super().__init__(spec)
        if spec.image is not None:
            net = build_net(spec, VisionConfig.model_validate(model_config))
        else:
            net = TabularNet(spec, MLPConfig.model_validate(model_config))
        net.load_state_dict(torch.load(io.BytesIO(state_dict), weights_only=True))
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            self.model = torch.ao.quantization.quantize_dynamic(
                ScoringHead(net, spec).eval(), {torch.nn.Linear}, dtype=torch.qint8
            )
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch

    def _run_batch(self, features: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(np.require(features, requirements="W"))).numpy()


def quantizes_per_call(onnx_model: bytes) -> bool:
    """Whether the graph quantizes activations with each call's own range (ONNX Runtime's dynamic int8 operators).

    Read from the serialized bytes, where every node's operator type is a plain string, without parsing the graph
    (importing onnx would add a quarter of a second to every scoring process's start): a graph holding such an
    operator always matches; one that merely names something so is called on whole batches, as before.
    """
    return b"DynamicQuantize" in onnx_model


def onnx_session(onnx_model: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session; `threads` caps its intra-op threads (files scored at once share the cores).

    Its threads sleep between calls instead of spinning: scoring reads and writes on other threads meanwhile
    (`maas.modules.overlap`), and a spinning pool would take their cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are about its own internals
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
