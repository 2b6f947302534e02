"""`--set` and `--grid` values are parsed as their config field's declared type."""

from __future__ import annotations

import pytest

from deref.cli.common import typed_grid, typed_overrides
from deref.errors import ConfigError
from deref.model import ModelConfig
from deref.training import TrainConfig


def test_set_values_take_the_declared_type():
    got = typed_overrides(
        [
            "decouple=false",
            "use_explore=True",
            "snn_dropout=0.4",
            "n_experts=6",
            "rca_mode=blocks",
            "segments=[2, 4]",
            "hinge_margin=none",
        ],
        ModelConfig,
    )
    assert got == {
        "decouple": False,
        "use_explore": True,
        "snn_dropout": 0.4,
        "n_experts": 6,
        "rca_mode": "blocks",
        "segments": (2, 4),
        "hinge_margin": None,
    }
    assert ModelConfig(**got).decouple is False  # the string "false" would have been truthy
    with pytest.raises(ConfigError, match="decouple='maybe': expected a value of type bool"):
        typed_overrides(["decouple=maybe"], ModelConfig)
    with pytest.raises(ConfigError, match="n_experts='4.5': expected a value of type int"):
        typed_overrides(["n_experts=4.5"], ModelConfig)
    with pytest.raises(ConfigError, match="snn_dropuot: unknown setting"):
        typed_overrides(["snn_dropuot=0.1"], ModelConfig)
    with pytest.raises(ConfigError, match="expected key=value"):
        typed_overrides(["snn_dropout"], ModelConfig)


def test_grid_values_take_the_declared_type():
    grid = typed_grid(["weight_decay=1e-5,1e-3", "snn_dropout=0.1,0.5"], TrainConfig, ModelConfig)
    assert grid == {"weight_decay": [1e-5, 1e-3], "snn_dropout": [0.1, 0.5]}
    assert all(isinstance(v, float) for vs in grid.values() for v in vs)
    with pytest.raises(ConfigError, match="--grid lr='fast'"):
        typed_grid(["lr=fast"], TrainConfig, ModelConfig)


def test_the_typed_config_rejects_a_wrong_type_wherever_it_comes_from():
    """Not only `--set`: a JSON run config (or code) with the string "false" for a switch, a float
    for a size or a string for a number is refused, naming the field and its declared type."""
    import json

    import numpy as np

    from deref.errors import ConfigError
    from deref.model import ModelConfig

    good = ModelConfig().to_dict()
    for field_, bad in (("decouple", "false"), ("use_explore", 1), ("c1", 256.0), ("snn_dropout", "0.3")):
        with pytest.raises(ConfigError, match=rf"config field '{field_}' = .*expected "):
            ModelConfig.from_dict(json.loads(json.dumps({**good, field_: bad})))
    with pytest.raises(ConfigError, match=r"'m1_sizes'.*expected tuple\[int, \.\.\.\]"):
        ModelConfig(m1_sizes=(94, "334", 521, 468, 1496, 479))
    # numpy numbers and JSON lists are the declared types
    cfg = ModelConfig(
        c1=np.int64(128), snn_dropout=np.float32(0.5), m1_sizes=[1, 2, 3], m1_names=["a", "b", "c"]
    )
    assert cfg.c1 == 128 and cfg.m1_sizes == (1, 2, 3)
