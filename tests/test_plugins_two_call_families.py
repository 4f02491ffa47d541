"""What the two-call family plugins of issue 10 refuse, and what their examples alone would not show.

Every registered example is checked on 2 gloo ranks by the generic example test; the checks here are the
refusals (no ranks needed: ``parallelize`` refuses before any collective) and the hazards a plain example run
would not exercise.
"""

from __future__ import annotations

import pytest

import xcfg


def test_flux2_klein_step_distilled_pipeline_is_refused_with_the_reason():
    from xcfg_plugins import flux2

    run = flux2.build(distilled=True)
    with pytest.raises(xcfg.UnsupportedPipelineError, match="is_distilled=True") as err:
        xcfg.parallelize(run.pipe)
    assert "Klein base checkpoint" in str(err.value)


@pytest.mark.parametrize("true_cfg", [False, True])
def test_flux2_dev_guidance_distilled_is_refused_even_with_true_cfg(true_cfg):
    from diffusers import Flux2Transformer2DModel

    from xcfg_plugins import flux2

    run = flux2.build()
    run.pipe.transformer = Flux2Transformer2DModel(**flux2.CONFIGS["tiny"]["transformer"], guidance_embeds=True)
    with pytest.raises(xcfg.RefusedError, match="guidance-distilled") as err:
        xcfg.parallelize(run.pipe, true_cfg=true_cfg)
    assert "ContextParallelConfig" in str(err.value)
