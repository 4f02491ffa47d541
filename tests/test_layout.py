"""The layout plan, without processes: degrees validated, mesh dims named, refusals say what to launch."""

from __future__ import annotations

import pytest
import torch

import xcfg
from xcfg._layout import Layout, check_backend, check_context_parallel, layout_from_config

pytestmark = pytest.mark.unit


class FakeMesh:
    """The names and sizes of a DeviceMesh, which is all layout_from_mesh reads."""

    def __init__(self, names, shape):
        self.mesh_dim_names, self.shape = names, shape

    def size(self, dim=None):
        return self.shape[dim]


@pytest.mark.parametrize(
    ("world", "degrees", "shape"),
    [
        (2, dict(cfg=2), (2, 1, 1)),
        (2, dict(cfg=1, ulysses=2), (1, 1, 2)),
        (4, dict(cfg=2, ulysses=2), (2, 1, 2)),
        (4, dict(cfg=2, ring=2), (2, 2, 1)),
        (4, dict(cfg=1, ulysses=4), (1, 1, 4)),
        (8, dict(cfg=2, ulysses=4), (2, 1, 4)),
        (8, dict(cfg=2, ring=2, ulysses=2), (2, 2, 2)),
    ],
)
def test_plan_names_dims_and_shape(world, degrees, shape):
    layout = xcfg.plan_layout(world, **degrees)
    assert layout.shape == shape and layout.dim_names == ("cfg", "ring", "ulysses")
    assert layout.world_size == world


def test_ranks_are_row_major_cfg_outermost():
    layout = xcfg.plan_layout(8, cfg=2, ring=2, ulysses=2)
    assert [layout.coordinates(r) for r in (0, 1, 2, 5, 7)] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 1), (1, 1, 1)]
    assert layout.cfg_ranks(3) == (3, 7)  # the CFG pair: same ring and ulysses coordinates
    assert layout.context_ranks(6) == (4, 5, 6, 7)  # the ranks sharing one sequence: neighbours
    groups = {layout.cfg_ranks(r) for r in range(8)}
    assert sorted(r for g in groups for r in g) == list(range(8))  # every rank in exactly one CFG group


def test_describe():
    assert xcfg.plan_layout(4, cfg=2, ulysses=2).describe() == "cfg 2 x ulysses 2 (4 ranks)"
    assert xcfg.plan_layout(1, cfg=1).describe() == "1 rank (1 ranks)"


@pytest.mark.parametrize(("world", "degrees"), [(4, dict(cfg=2, ulysses=4)), (8, dict(cfg=2, ulysses=2)), (3, dict(cfg=2))])
def test_product_not_the_world_is_refused_with_what_to_launch(world, degrees):
    with pytest.raises(xcfg.SetupError) as err:
        xcfg.plan_layout(world, **degrees)
    text = str(err.value)
    product = degrees.get("cfg", 2) * degrees.get("ring", 1) * degrees.get("ulysses", 1)
    assert f"torchrun --nproc-per-node {product}" in text and f"world has {world}" in text
    assert "parallelize(pipe, degree=" in text  # and a layout that fits this world


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_degree_is_refused(bad):
    with pytest.raises(xcfg.SetupError, match="whole number"):
        xcfg.plan_layout(4, cfg=2, ulysses=bad)


def test_uneven_policy():
    assert xcfg.plan_layout(4, cfg=2, ulysses=2).ulysses_anything
    assert xcfg.plan_layout(4, cfg=2, ring=2).ring_anything
    both = xcfg.plan_layout(8, cfg=2, ring=2, ulysses=2)  # diffusers has no "anything" mode for both
    assert not both.ulysses_anything and not both.ring_anything
    even = xcfg.plan_layout(4, cfg=2, ulysses=2, uneven="even")
    assert not even.ulysses_anything
    with pytest.raises(xcfg.SetupError, match="uneven"):
        xcfg.plan_layout(4, cfg=2, ulysses=2, uneven="pad")


def test_context_parallel_config_round_trip():
    from diffusers import ContextParallelConfig

    layout = layout_from_config(8, 2, ContextParallelConfig(ulysses_degree=4, ulysses_anything=True))
    assert layout.shape == (2, 1, 4) and layout.ulysses_anything
    config = layout.context_parallel_config()
    assert (config.ring_degree, config.ulysses_degree, config.ulysses_anything) == (1, 4, True)
    assert xcfg.plan_layout(2, cfg=2).context_parallel_config() is None
    with pytest.raises(xcfg.SetupError, match="needs 8 ranks"):
        layout_from_config(4, 2, ContextParallelConfig(ulysses_degree=4))


def test_layout_from_mesh():
    layout = xcfg.layout_from_mesh(FakeMesh(("cfg", "ring", "ulysses"), (2, 2, 2)))
    assert layout.shape == (2, 2, 2)
    assert xcfg.layout_from_mesh(FakeMesh(("dp", "ring", "ulysses"), (3, 1, 2))).shape == (1, 1, 2)  # no cfg dim
    with pytest.raises(xcfg.SetupError, match="'ring' and 'ulysses'"):
        xcfg.layout_from_mesh(FakeMesh(("cfg", "sp"), (2, 2)))


@pytest.mark.parametrize(
    ("heads", "degrees", "ok"),
    [
        (48, dict(cfg=2, ulysses=4), True),   # CogVideoX-5B on 8
        (24, dict(cfg=1, ulysses=8), True),   # Mochi-1 on 8
        (40, dict(cfg=2, ulysses=4), True),   # Wan2.1-14B on 8
        (40, dict(cfg=1, ulysses=8), True),
        (2, dict(cfg=1, ulysses=4), False),   # fewer heads than ranks: not even ulysses_anything
        (6, dict(cfg=1, ulysses=4, uneven="even"), False),
        (7, dict(cfg=1, ulysses=4), True),    # ulysses_anything pads 7 heads to 8
        (6, dict(cfg=1, ulysses=4), False),   # ... but not by a whole rank's share (6 -> 8: 2 pads, 2 a rank)
        (6, dict(cfg=1, ring=2, ulysses=2), True),
        (5, dict(cfg=1, ring=2, ulysses=2), False),
    ],
)
def test_heads_no_mode_divides_are_refused(heads, degrees, ok):
    world = degrees.get("cfg", 2) * degrees.get("ring", 1) * degrees.get("ulysses", 1)
    layout = xcfg.plan_layout(world, **degrees)
    if ok:
        layout.check_heads(heads, "the model")
    else:
        with pytest.raises(xcfg.SetupError, match=f"{heads} attention heads.*ring_degree"):
            layout.check_heads(heads, "the model")


def test_backend_refusals():
    ulysses, ring = xcfg.plan_layout(2, cfg=1, ulysses=2), xcfg.plan_layout(2, cfg=1, ring=2)
    check_backend("native", ulysses)
    check_backend("flash", ring)
    with pytest.raises(xcfg.SetupError, match="no context-parallel support.*set_attention_backend"):
        check_backend("_native_math", ulysses)
    with pytest.raises(xcfg.SetupError, match="log-sum-exp.*ulysses_degree=2"):
        check_backend("native", ring)


def test_model_without_plan_is_refused_with_what_to_launch():
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(
        sample_size=8, num_layers=1, attention_head_dim=4, num_attention_heads=2, in_channels=4, out_channels=8,
        cross_attention_dim=8, caption_channels=8,
    )
    layout = xcfg.plan_layout(4, cfg=2, ulysses=2)
    with pytest.raises(xcfg.SetupError, match="no context-parallel plan.*degree=2"):
        check_context_parallel("transformer", model, None, layout)


def test_model_with_diffusers_plan_passes_and_a_wrong_backend_is_refused():
    run = xcfg.build_example("wan", size="tiny")
    model = run.pipe.transformer
    layout = xcfg.plan_layout(4, cfg=2, ulysses=2)
    assert check_context_parallel("transformer", model, None, layout).plan is type(model)._cp_plan
    model.set_attention_backend("_native_math")
    with pytest.raises(xcfg.SetupError, match="_native_math"):
        check_context_parallel("transformer", model, None, layout)


def test_parallelize_refuses_layout_without_process_group():
    run = xcfg.build_example("wan", size="tiny")
    with pytest.raises(xcfg.SetupError, match="torchrun"):
        xcfg.parallelize(run.pipe, ulysses_degree=2)
    assert not hasattr(run.pipe.transformer, "_diffusers_hook") or not run.pipe.transformer._diffusers_hook.hooks


def test_layout_is_frozen():
    layout = Layout(world_size=2, cfg=2)
    with pytest.raises(AttributeError):
        layout.cfg = 1  # type: ignore[misc]
    assert torch.Size(layout.shape) == torch.Size([2, 1, 1])
