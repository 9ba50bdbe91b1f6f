"""Load state dicts trained with the upstream CLAM, TransMIL and GLTrans code into our models.

Our modules use their own names; each upstream name is mapped by dotted prefix. Parameters that the
upstream GLTrans forward never uses (its second and third global-branch paths and output projection)
are dropped. Any other unexpected or missing name is an error, so a checkpoint of the wrong model
cannot load silently.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from maga_core.errors import MagaError
from maga_core.mil.base import build

_CLAM_COMMON = [
    ("attention_net.0", "embed.0"),
    ("attention_net.3.attention_a.0", "attention.a.0"),
    ("attention_net.3.attention_b.0", "attention.b.0"),
    ("attention_net.3.attention_c", "attention.c"),
    ("instance_classifiers", "instance_classifiers"),
]
_TRANSFORMER_COMMON = [
    ("cls_token", "cls_token"),
    ("_fc1.0", "embed.0"),
    ("layer1", "attn1"),
    ("layer2", "attn2"),
    ("norm", "norm"),
    ("_fc2", "head"),
]

RENAMES: dict[str, list[tuple[str, str]]] = {
    "clam_sb": _CLAM_COMMON + [("classifiers", "classifier")],
    "clam_mb": _CLAM_COMMON + [("classifiers", "classifiers")],
    "transmil": _TRANSFORMER_COMMON + [
        ("pos_layer.proj", "ppeg.conv7"),
        ("pos_layer.proj1", "ppeg.conv5"),
        ("pos_layer.proj2", "ppeg.conv3"),
    ],
    "gltrans": _TRANSFORMER_COMMON + [
        ("local_att.proj", "local.convs.0"),
        ("local_att.proj1", "local.convs.1"),
        ("local_att.proj2", "local.convs.2"),
        ("global_att.proj_q", "glob.q"),
        ("global_att.conv1", "glob.conv"),
        ("global_att.norm1", "glob.bn"),
        ("global_att.k1", "glob.k"),
        ("global_att.v1", "glob.v"),
    ],
}
UNUSED: dict[str, re.Pattern] = {
    "gltrans": re.compile(r"^global_att\.(conv[23]|norm[23]|[kv][23]|proj_out)\."),
}
_IN_DIM_KEY = {"clam_sb": "attention_net.0.weight", "clam_mb": "attention_net.0.weight",
               "transmil": "_fc1.0.weight", "gltrans": "_fc1.0.weight"}


def convert(name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream names -> ours (unused upstream parameters dropped)."""
    if name not in RENAMES:
        raise MagaError(f"no upstream converter for {name!r}; choose one of {sorted(RENAMES)}")
    unused = UNUSED.get(name)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")  # saved from nn.DataParallel
        if unused is not None and unused.match(key):
            continue
        for src, dst in RENAMES[name]:
            if key == src or key.startswith(src + "."):
                out[dst + key[len(src):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise MagaError(f"state dict does not look like upstream {name}: unexpected {unknown[:5]}")
    return out


def from_reference(name: str, state_dict: Mapping[str, torch.Tensor], n_classes: int) -> nn.Module:
    """Our model `name` carrying the weights of an upstream state dict, in eval mode."""
    converted = convert(name, state_dict)
    key = _IN_DIM_KEY[name]
    weight = state_dict.get(key, state_dict.get("module." + key))
    if weight is None:
        raise MagaError(f"state dict does not look like upstream {name}: no {key}")
    model = build(name, in_dim=int(weight.shape[1]), n_classes=n_classes)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise MagaError(f"upstream {name} state dict does not fit {n_classes} classes: "
                        + " ".join(line.strip() for line in first[:3])) from None
    return model.eval()
