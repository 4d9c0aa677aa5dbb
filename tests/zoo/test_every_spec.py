"""Every spec shipped in specs/ and examples/ compiles: each network, and each block of a library.

A file with networks compiles each (its blocks run inside them); a block
library compiles each block on an input it is made for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import cnndsl

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted([*ROOT.glob("specs/*.cnn"), *ROOT.glob("examples/**/*.cnn")])

# Block libraries have no network: each block is compiled on an input it is made for.
BLOCK_INPUTS: dict[str, tuple[tuple[int, ...], dict[str, object]]] = {
    "resnet_stem": ((224, 224, 3), {}),
    "basic_unit": ((56, 56, 64), {"filters": 64}),
    "bottleneck_unit": ((56, 56, 64), {"filters": 64, "se_ratio": 16}),
    "basic_stack": ((56, 56, 64), {"filters": 64, "units": 2}),
    "bottleneck_stack": ((56, 56, 64), {"filters": 64, "units": 2}),
    "squeeze_excite": ((14, 14, 64), {}),
    "vgg_stage": ((32, 32, 3), {"filters": 64, "convs": 2}),
    "vgg_classifier": ((7, 7, 512), {"classes": 10}),
    "inception": (
        (28, 28, 192),
        {"c1": 64, "c3_reduce": 96, "c3": 128, "c5_reduce": 16, "c5": 32, "pool_proj": 32},
    ),
    "se": ((14, 14, 64), {}),
    "xception_entry": ((56, 56, 64), {"filters": 128}),
    "residual_unit": ((56, 56, 64), {"filters": 64}),
    "conv_bn": ((32, 32, 3), {"filters": 16}),
    "head": ((7, 7, 64), {"classes": 5}),
}


def definitions(path: Path) -> dict[str, str]:
    """Names defined in the file itself (not imported), by kind."""
    _, scope = cnndsl.load(path)
    return {
        name: definition.kind for name, (definition, owner) in scope.names.items() if owner is scope
    }


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_spec_compiles(path: Path) -> None:
    defined = definitions(path)
    assert defined, f"{path} defines nothing"
    networks = [name for name, kind in defined.items() if kind == "network"]
    for name in networks:
        net = cnndsl.compile(path, name)
        assert net.total_params > 0 and net.output_shape
    for name in [] if networks else defined:
        assert name in BLOCK_INPUTS, f"add an input for block '{name}' to BLOCK_INPUTS"
        shape, params = BLOCK_INPUTS[name]
        net = cnndsl.compile_block(path, name, shape, **params)
        assert len(net.graph) > 1


def test_readme_ir_calls_work() -> None:
    """The README's Python API lines about the IR do what they say."""
    net = cnndsl.compile(ROOT / "specs" / "digits.cnn")
    layers = list(net.graph)
    assert net.graph.g.number_of_nodes() == len(layers) == len(net.graph)
    assert all(net.graph.g.nodes[layer.path]["layer"] is layer for layer in layers)
