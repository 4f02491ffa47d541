"""Specs and the plugin registry, in one process: validation, lookup, run-time and entry-point plugins."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest
import torch
from toys import TOY_SPEC, ToyDenoiser, ToyPlugin

import xcfg


def test_spec_shorthand_and_lazy_path():
    spec = xcfg.ModelSpec(model="diffusers:SanaTransformer2DModel", batch_inputs=["hidden_states", "timestep"])
    assert [i.name for i in spec.batch_inputs] == ["hidden_states", "timestep"]
    assert spec.name == "SanaTransformer2DModel"
    from diffusers import SanaTransformer2DModel

    assert spec.resolve() is SanaTransformer2DModel


def test_spec_is_frozen():
    with pytest.raises(Exception):
        TOY_SPEC.batch_inputs = ()


@pytest.mark.parametrize(
    "fields, field_name",
    [
        ({"model": "not a path", "batch_inputs": ["hidden_states"]}, "model"),
        ({"model": int, "batch_inputs": ["hidden_states"]}, "model"),
        ({"model": ToyDenoiser, "batch_inputs": [{"name": "hidden_states", "dim": -1}]}, "batch_inputs.0.dim"),
        ({"model": ToyDenoiser, "batch_inputs": [{"dim": 0}]}, "batch_inputs.0.name"),
        ({"model": ToyDenoiser, "batch_inputs": ["hidden states"]}, "batch_inputs.0.name"),
        ({"model": ToyDenoiser, "batch_inputs": ["hidden_states"], "typo_field": 1}, "typo_field"),
        ({"model": ToyDenoiser}, "(spec)"),
        ({"model": ToyDenoiser, "style": "none"}, "(spec)"),
        ({"model": ToyDenoiser, "batch_inputs": ["hidden_states"], "style": "sideways"}, "style"),
    ],
)
def test_malformed_spec_names_the_field(fields, field_name):
    with pytest.raises(xcfg.SpecError) as info:
        xcfg.ModelSpec(**fields)
    assert f"field '{field_name}'" in str(info.value)


def test_spec_naming_a_missing_argument_fails_at_registration(empty_registry):
    class BadPlugin:
        @xcfg.hookimpl
        def register_models(self, register):
            register(xcfg.ModelSpec(model=ToyDenoiser, batch_inputs=["hidden_states", "no_such_argument"]))

    with pytest.raises(xcfg.SpecError) as info:
        empty_registry.register(BadPlugin(), name="bad")
    message = str(info.value)
    assert "plugin 'bad'" in message and "batch_inputs.1.name" in message and "no_such_argument" in message
    assert "bad" not in empty_registry.plugin_names()


def test_malformed_dict_spec_fails_at_registration(empty_registry):
    class DictPlugin:
        @xcfg.hookimpl
        def register_models(self, register):
            register({"model": ToyDenoiser, "batch_inputs": [{"name": "hidden_states", "dim": "first"}]})

    with pytest.raises(xcfg.SpecError, match=r"(?s)plugin 'dicts'.*batch_inputs\.0\.dim"):
        empty_registry.register(DictPlugin(), name="dicts")


def test_misspelt_hook_fails_loudly(empty_registry):
    class Misspelt:
        @xcfg.hookimpl
        def register_model(self, register):  # missing "s"
            pass

    with pytest.raises(xcfg.SpecError, match="register_model"):
        empty_registry.register(Misspelt(), name="misspelt")


def test_runtime_plugin_registers_and_unregisters(empty_registry):
    assert empty_registry.lookup(ToyDenoiser) is None
    name = empty_registry.register(ToyPlugin(), name="toys")
    try:
        assert empty_registry.lookup(ToyDenoiser).spec is TOY_SPEC

        class SubToy(ToyDenoiser):
            pass

        assert empty_registry.lookup(SubToy).spec is TOY_SPEC, "subclasses match through the MRO"
    finally:
        empty_registry.unregister(name=name)
    assert empty_registry.lookup(ToyDenoiser) is None


def test_later_plugin_wins(empty_registry):
    other = xcfg.ModelSpec(model=ToyDenoiser, batch_inputs=["hidden_states"])

    class Override:
        @xcfg.hookimpl
        def register_models(self, register):
            register(other)

    empty_registry.register(ToyPlugin(), name="first")
    empty_registry.register(Override(), name="second")
    assert empty_registry.lookup(ToyDenoiser).spec is other
    assert empty_registry.lookup(ToyDenoiser).plugin == "second"


def test_builtin_plugins_load_through_entry_points(registry):
    assert {"cogvideox", "sd3", "mochi", "flux"} <= set(registry.plugin_names())
    from diffusers import CogVideoXTransformer3DModel, FluxTransformer2DModel, MochiTransformer3DModel, SD3Transformer2DModel

    for cls in (CogVideoXTransformer3DModel, SD3Transformer2DModel, MochiTransformer3DModel, FluxTransformer2DModel):
        assert registry.lookup(cls) is not None, cls


def test_autoload_switches(monkeypatch):
    monkeypatch.setenv("XCFG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert xcfg.Registry().plugin_names() == []
    monkeypatch.delenv("XCFG_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("XCFG_PLUGINS", "sd3")
    assert xcfg.Registry().plugin_names() == ["sd3"]


@pytest.mark.ranks
def test_third_party_entry_point_plugin(tmp_path):
    """A package that declares an `xcfg` entry point is found without any call into xcfg."""
    package = tmp_path / "acme_xcfg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        import torch, xcfg

        class AcmeDenoiser(torch.nn.Module):
            def forward(self, hidden_states, timestep):
                return (hidden_states * 2,)

        @xcfg.hookimpl
        def register_models(register):
            register(xcfg.ModelSpec(model=AcmeDenoiser, batch_inputs=["hidden_states", "timestep"]))
    """))
    info = tmp_path / "acme_xcfg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-xcfg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[xcfg]\nacme = acme_xcfg\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import xcfg, acme_xcfg
        registry = xcfg.Registry()
        assert "acme" in registry.plugin_names(), registry.plugin_names()
        assert registry.lookup(acme_xcfg.AcmeDenoiser).plugin == "acme"
        print("found")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "found" in result.stdout


def test_unknown_class_with_inference_off_is_refused_with_a_guide():
    class Pipe:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(xcfg.UnsupportedModelError) as info:
        xcfg.parallelize(Pipe(), infer=False)
    message = str(info.value)
    assert "torch.nn.modules.linear.Linear" in message and "register_models" in message and "plugins" in message


def test_flux_is_refused_with_the_reason():
    from diffusers import FluxTransformer2DModel

    class Pipe:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4),
            guidance_embeds=True,
        )

    with pytest.raises(xcfg.NoCFGError, match="guidance-distilled"):
        xcfg.parallelize(Pipe())


def test_no_process_group_leaves_the_pipeline_working():
    from toys import ToyPipe, toy_inputs, toy_model

    pipe = ToyPipe(toy_model())
    inputs = toy_inputs(2)
    expected = pipe(**inputs, generator=torch.Generator().manual_seed(0))
    with xcfg.parallelize(pipe, registry=_toy_registry()) as handle:
        assert not handle.active and handle.group.size == 1
        actual = pipe(**inputs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(actual, expected)


def test_wrapper_keeps_the_signature_and_is_removable():
    model = ToyDenoiser()
    before = inspect.signature(model.forward)
    wrapped = xcfg.wrap_denoiser(model, TOY_SPEC, xcfg.CFGGroup.single())
    assert inspect.signature(model.forward) == before
    assert wrapped.installed
    with pytest.raises(xcfg.SetupError, match="already"):
        xcfg.wrap_denoiser(model, TOY_SPEC, xcfg.CFGGroup.single())
    wrapped.remove()
    assert not wrapped.installed
    assert inspect.signature(model.forward) == before
    assert model.forward.__func__ is ToyDenoiser.forward


def _toy_registry() -> xcfg.Registry:
    registry = xcfg.Registry(autoload=False)
    registry.register(ToyPlugin(), name="toys")
    return registry


def test_a_runtime_plugin_overrides_a_builtin_one():
    """Registering before anything was looked up still wins: entry points load first."""
    from diffusers import PixArtTransformer2DModel

    override = xcfg.ModelSpec(model=PixArtTransformer2DModel, batch_inputs=["hidden_states"])

    class Override:
        @xcfg.hookimpl
        def register_models(self, register):
            register(override)

    registry = xcfg.Registry(autoload=True)
    registry.register(Override(), name="override")
    assert registry.lookup(PixArtTransformer2DModel).plugin == "override"
