"""The core's parts without processes: the tree walker, bindings, inference of batch inputs, refusals,
the style table and the shape of the package (no import cycle)."""

from __future__ import annotations

import ast
import collections
import dataclasses
import pathlib

import pytest
import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

import xcfg
from xcfg._binding import Binding
from xcfg._infer import infer_batch_inputs
from xcfg._styles import STYLES
from xcfg._tree import tree_leaves, tree_map

Pair = collections.namedtuple("Pair", "first second")


@dataclasses.dataclass
class Box:
    value: torch.Tensor
    tag: str = "box"


def test_the_tree_walker_rebuilds_every_container_as_its_own_type():
    value = {
        "pair": Pair(torch.ones(2), [torch.zeros(2), 3]),
        "box": Box(torch.ones(1)),
        "out": Transformer2DModelOutput(sample=torch.ones(2, 2)),
        "tuple": (torch.ones(1), None),
    }
    doubled = tree_map(lambda leaf, _label: leaf * 2 if isinstance(leaf, torch.Tensor) else leaf, value)
    assert isinstance(doubled["pair"], Pair) and isinstance(doubled["pair"].second, list)
    assert isinstance(doubled["box"], Box) and doubled["box"].tag == "box"
    assert isinstance(doubled["out"], Transformer2DModelOutput) and doubled["out"].sample.sum() == 8
    assert isinstance(doubled["tuple"], tuple) and doubled["tuple"][1] is None
    labels = [label for label, _ in tree_leaves(value, "v")]
    assert "v['pair'].second[0]" in labels and "v['box'].value" in labels and "v['out']['sample']" in labels


class _Model(torch.nn.Module):
    def forward(self, x, timestep=None, cond=None, feats=None):
        return x


def test_a_binding_reads_positional_and_keyword_arguments_and_cuts_every_kind():
    inputs = (
        xcfg.BatchInput(name="x"),
        xcfg.BatchInput(name="timestep"),
        xcfg.BatchInput(name="cond", key="ids"),
        xcfg.BatchInput(name="feats", per_sample=True),
    )
    binding = Binding(inputs, _Model)
    x, t = torch.arange(4.0).view(4, 1), torch.tensor([1.0])
    cond = {"ids": (torch.arange(4), torch.arange(8).view(4, 2)), "scale": 2.0}
    feats = [torch.full((3,), float(i)) for i in range(4)]
    assert binding.batch_size((x, t), {"cond": cond, "feats": feats}) == 4
    args, kwargs = binding.split((x, t), {"cond": cond, "feats": feats}, 4, rank=1, size=2)
    assert args[0].flatten().tolist() == [2.0, 3.0] and args[1] is t  # the broadcast timestep stays whole
    assert kwargs["cond"]["ids"][0].tolist() == [2, 3] and kwargs["cond"]["scale"] == 2.0
    assert [f[0].item() for f in kwargs["feats"]] == [2.0, 3.0]


def test_a_batch_input_of_another_batch_is_a_shape_error():
    binding = Binding((xcfg.BatchInput(name="x"), xcfg.BatchInput(name="cond")), _Model)
    with pytest.raises(xcfg.ShapeError, match="cond has size 3"):
        binding.batch_size((torch.ones(4, 1),), {"cond": torch.ones(3, 1)})


def test_inference_finds_the_arguments_that_carry_the_batch():
    named = {
        "sample": torch.ones(2, 4),
        "timestep": torch.tensor(1.0),
        "encoder_hidden_states": torch.ones(2, 7, 4),
        "added_cond_kwargs": {"text_embeds": torch.ones(2, 8), "time_ids": torch.ones(2, 6), "extra": 1},
        "down_block_additional_residuals": (torch.ones(2, 4), torch.ones(2, 4)),
        "image_rotary_emb": (torch.ones(9, 4), torch.ones(9, 4)),
        "return_dict": False,
    }
    labels = [item.label for item in infer_batch_inputs(named, 2, per_sample=False)]
    assert labels == [
        "sample", "encoder_hidden_states", "added_cond_kwargs['text_embeds']", "added_cond_kwargs['time_ids']",
        "down_block_additional_residuals",
    ]
    lists = infer_batch_inputs({"x": [torch.ones(3)] * 2, "cap_feats": [torch.ones(5, 3)] * 2}, 2, per_sample=True)
    assert [(i.name, i.per_sample) for i in lists] == [("x", True), ("cap_feats", True)]


def test_every_declared_style_has_a_strategy():
    assert set(STYLES) == set(xcfg.CFGStyle) - {xcfg.CFGStyle.NONE}


def test_degree_below_one_is_refused_before_anything():
    class Pipe:
        transformer = _Model()

    with pytest.raises(xcfg.SetupError, match="at least 1"):
        xcfg.parallelize(Pipe(), degree=0)


def test_a_plugins_refuse_hook_refuses_the_pipeline_with_its_reason(empty_registry):
    class Refusing:
        @xcfg.hookimpl
        def register_models(self, register):
            register(xcfg.ModelSpec(model=_Model, batch_inputs=["x"], refuse=lambda pipe, module: (
                "its uncond call gets other latents" if getattr(pipe, "video2world", False) else None)))

    empty_registry.register(Refusing(), name="refusing")

    class Pipe:
        transformer = _Model()
        video2world = True

    with pytest.raises(xcfg.UnsupportedPipelineError, match="other latents"):
        xcfg.parallelize(Pipe(), registry=empty_registry)
    Pipe.video2world = False
    xcfg.parallelize(Pipe(), registry=empty_registry).remove()


def _top_level_imports(path: pathlib.Path) -> set[str]:
    """The xcfg modules a module imports when it is imported (not inside functions or TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module)
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xcfg."):
            found.add(node.module.split(".", 1)[1])
    return found


def test_the_core_import_graph_has_no_cycle():
    package = pathlib.Path(xcfg.__file__).parent
    graph = {p.stem: _top_level_imports(p) & {q.stem for q in package.glob("*.py")} for p in package.glob("*.py")}
    graph.pop("__init__")
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, f"import cycle: {' -> '.join(path + [node])}"
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(graph):
        visit(module, [])


def test_the_core_never_names_a_model():
    package = pathlib.Path(xcfg.__file__).parent
    models = ("CogVideoX", "Mochi", "SD3", "Flux", "Wan", "UNet2DCondition", "QwenImage", "HunyuanVideo")
    for path in package.glob("_*.py"):
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith(("#", ">>>", "..."))
        )
        tree = ast.parse(code)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
        }
        assert not [n for n in names if n.startswith(models)], (path.name, names)


def test_plugins_never_touch_torch_distributed():
    # plugins never touch process groups: what they need of context parallelism (their share of a sequence)
    # comes from the core (xcfg.sequence_share), whose group objects hold every collective
    import re

    import xcfg_plugins

    package = pathlib.Path(xcfg_plugins.__file__).parent
    pattern = re.compile(r"torch\.distributed|from torch import .*\bdistributed\b|\bdist\.")
    hits = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(package.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_ranks_on_one_gpu_of_one_host_are_refused_but_one_index_on_two_hosts_is_not():
    from xcfg._refusals import check_distinct_gpus, device_key

    one_host = [device_key(0, "node-a"), device_key(0, "node-a")]
    with pytest.raises(xcfg.SetupError, match=r"same GPU of one host \(cuda indices \[0, 0\]\)"):
        check_distinct_gpus(one_host, (0, 1))
    check_distinct_gpus([device_key(0, "node-a"), device_key(0, "node-b")], (0, 4))  # a CFG pair across two nodes
    check_distinct_gpus([device_key(0, "node-a"), device_key(1, "node-a")], (0, 1))
    check_distinct_gpus([device_key(-1), device_key(-1)], (0, 1))  # CPU ranks
