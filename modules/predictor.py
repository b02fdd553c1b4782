"""Serve an ONNX artifact with ONNX Runtime: raw feature rows in, predictions out.

The artifact already holds the preprocessing (see `modules.model.FeatureTransform`), so all this
needs besides the ONNX bytes is the feature schema to pick and encode columns by name.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd

from modules.preprocess import FeatureSpec

DEFAULT_BATCH_ROWS = 65_536


class Predictor:
    def __init__(self, spec: FeatureSpec, onnx_model: bytes, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings are about its own internals
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.spec = spec
        self.session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, features: np.ndarray, batch_rows: int = DEFAULT_BATCH_ROWS) -> np.ndarray:
        """Model outputs for an encoded feature matrix: class probabilities, or regression values."""
        outputs = [
            self.session.run(None, {self.input_name: features[start : start + batch_rows]})[0]
            for start in range(0, len(features), batch_rows)
        ]
        if not outputs:
            return np.empty((0, self.spec.output_size), dtype=np.float32)
        return np.concatenate(outputs)

    def predict(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        """`prediction` (label or value) plus `prob_<class>` columns, one row per input row."""
        outputs = self.run(self.spec.encode(frame, source))
        if self.spec.classes is None:
            return pd.DataFrame({"prediction": outputs[:, 0]}, index=frame.index)
        labels = np.asarray(self.spec.classes, dtype=object)
        columns = {"prediction": labels[outputs.argmax(axis=1)] if len(outputs) else labels[:0]}
        columns.update({f"prob_{label}": outputs[:, i] for i, label in enumerate(self.spec.classes)})
        predictions = pd.DataFrame(columns, index=frame.index)
        return predictions.astype({"prediction": pd.Series(self.spec.classes).dtype})
