"""What a retrain-on-drift run asks for: the model's own data, target and features, unless it was just trained."""

from __future__ import annotations

import pytest

from maas.modules import registry
from maas.modules.errors import InputError
from maas.modules.pipeline import PipelineParams


def test_a_retrain_takes_data_target_and_features_from_the_latest_version(registered) -> None:
    bucket, result = registered
    card = registry.load_card(result.card_uri)
    retrain = PipelineParams(model_name="toy", bucket=bucket).resolved()
    assert (retrain.data_uri, retrain.target) == (card.lineage.data_uri, "label")
    assert retrain.features == card.features.feature_names and "id" not in retrain.features
    given = PipelineParams(data_uri="s3://b/new.csv", target="y", model_name="toy", bucket=bucket)
    assert given.resolved() == given
    with pytest.raises(InputError, match="give data_uri and target"):
        PipelineParams(model_name="never-trained", bucket=bucket).resolved()


def test_the_cool_down_skips_a_run_right_after_a_registration_and_a_burst_retrains_once(registered) -> None:
    bucket, _ = registered
    assert "toy/1 was registered at" in PipelineParams(model_name="toy", bucket=bucket, cooldown_hours=12).skip_reason()
    assert PipelineParams(model_name="toy", bucket=bucket).skip_reason() is None  # no cool-down asked: never skips
    burst = [PipelineParams(model_name="toy", bucket=bucket, cooldown_hours=0).skip_reason() for _ in range(3)]
    assert burst[0] is None and burst[1:] == ["another run is already retraining toy after version 1"] * 2
