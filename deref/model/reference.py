"""Import weights of the authors' DeReF reference code into :class:`~deref.model.deref.DeReF`.

The reference names its modules ``genomics_fc``, ``pathomics_fc``, ``pathomics_encoder``,
``genomics_encoder``, ``m_private``, ``p_private``, ``com_encoder``, ``red_encoder``,
``exp1..4``, ``gate``, ``classifier`` (and builds an unused ``mm``). ``reference_key_map``
maps them once to ours; ``load_reference_state_dict`` loads a reference state dict (from
a ``.npz`` of arrays, a ``.safetensors`` file, or a dict of tensors) with strict checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from deref.errors import CheckpointError
from deref.model.config import ModelConfig
from deref.model.deref import DeReF

_PREFIX_MAP = [
    (r"^genomics_fc\.(\d+)\.0\.0\.", r"m1_encoder.token_nets.\1.fc1."),
    (r"^genomics_fc\.(\d+)\.1\.0\.", r"m1_encoder.token_nets.\1.fc2."),
    (r"^pathomics_fc\.0\.", "wsi_encoder.fc1."),
    (r"^pathomics_fc\.3\.", "wsi_encoder.fc2."),
    (r"^pathomics_encoder\.pos_layer\.proj\.", "wsi_encoder.pos_layer.conv7."),
    (r"^pathomics_encoder\.pos_layer\.proj1\.", "wsi_encoder.pos_layer.conv5."),
    (r"^pathomics_encoder\.pos_layer\.proj2\.", "wsi_encoder.pos_layer.conv3."),
    (r"^pathomics_encoder\.", "wsi_encoder."),
    (r"^genomics_encoder\.", "m1_encoder.encoder."),
    (r"^m_private\.layer1\.", "specific_m1.fc1."),
    (r"^m_private\.layer2\.", "specific_m1.fc2."),
    (r"^p_private\.layer1\.", "specific_wsi.fc1."),
    (r"^p_private\.layer2\.", "specific_wsi.fc2."),
    (r"^com_encoder\.fc_m\.", "share.fc_m1."),
    (r"^com_encoder\.fc_p\.", "share.fc_m2."),
    (r"^red_encoder\.fc_m\.", "explore.fc_m1."),
    (r"^red_encoder\.fc_p\.", "explore.fc_m2."),
    (r"^exp(\d+)\.layer1\.", None),  # handled below (1-based -> 0-based)
    (r"^gate\.fc\.", "moe.gate."),
    (r"^classifier\.", "head."),
]
_UNUSED = re.compile(r"^mm\.")


def reference_key_map(name: str) -> str | None:
    """Our parameter name for a reference parameter name (None for unused ones)."""
    if _UNUSED.match(name):
        return None
    m = re.match(r"^exp(\d+)\.layer([12])\.(.*)$", name)
    if m:
        return f"moe.experts.{int(m.group(1)) - 1}.fc{m.group(2)}.{m.group(3)}"
    for pattern, repl in _PREFIX_MAP:
        if repl is not None and re.match(pattern, name):
            return re.sub(pattern, repl, name)
    raise CheckpointError(f"reference parameter {name!r} has no counterpart in DeReF")


def read_reference_state(source: str | Path | dict) -> dict[str, torch.Tensor]:
    """Read a reference state dict without unpickling (npz with ``param/`` keys, safetensors)."""
    if isinstance(source, dict):
        return {k: torch.as_tensor(v) for k, v in source.items()}
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path}: reference checkpoint not found")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {
                k[len("param/") :]: torch.from_numpy(z[k].copy()) for k in z.files if k.startswith("param/")
            }
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal is reported the same way
            raise CheckpointError(
                f"{path}: not a plain tensor state dict ({exc.__class__.__name__})"
            ) from exc
        return dict(obj)
    raise CheckpointError(f"{path}: unknown reference checkpoint format; expected .npz, .safetensors or .pt")


def config_from_reference_state(state: dict[str, torch.Tensor], **overrides) -> ModelConfig:
    """Infer sizes (gene-group sizes, WSI dim, bins) from a reference state dict."""
    groups = sorted(
        {int(m.group(1)) for k in state if (m := re.match(r"genomics_fc\.(\d+)\.0\.0\.weight", k))}
    )
    sizes = tuple(int(state[f"genomics_fc.{g}.0.0.weight"].shape[1]) for g in groups)
    names = tuple(f"group {g + 1}" for g in groups)
    if len(sizes) == 6:
        from deref.model.config import GENE_FAMILIES

        names = GENE_FAMILIES
    base = dict(
        m1_sizes=sizes,
        m1_names=names,
        wsi_dim=int(state["pathomics_fc.0.weight"].shape[1]),
        n_bins=int(state["classifier.weight"].shape[0]),
        snn_hidden=int(state["genomics_fc.0.0.0.weight"].shape[0]),
        n_experts=len({k.split(".")[0] for k in state if re.match(r"exp\d+\.", k)}),
    )
    base.update(overrides)
    return ModelConfig(**base)


def load_reference_state_dict(model: DeReF, source: str | Path | dict) -> DeReF:
    """Load the reference's weights into ``model`` (strict: every parameter must match)."""
    ref = read_reference_state(source)
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for name, value in ref.items():
        key = reference_key_map(name)
        if key is None:
            continue
        if key not in ours:
            raise CheckpointError(f"reference parameter {name!r} maps to {key!r}, which this model lacks")
        if tuple(ours[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"reference parameter {name!r} has shape {tuple(value.shape)}; {key!r} expects {tuple(ours[key].shape)}"
            )
        mapped[key] = value
    missing = sorted(set(ours) - set(mapped))
    if missing:
        raise CheckpointError(
            f"reference state lacks parameters for {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    model.load_state_dict(mapped, strict=True)
    return model


def import_reference_checkpoint(source: str | Path | dict, **config_overrides) -> DeReF:
    """Build a DeReF with the reference's sizes and load its weights (eval mode)."""
    state = read_reference_state(source)
    model = DeReF(config_from_reference_state(state, **config_overrides))
    load_reference_state_dict(model, state)
    return model.eval()
