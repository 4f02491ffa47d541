"""Tests of the CogView3-Plus plugin, for the plugin's own package (run them with pytest).

``check_example`` starts fresh processes, which find the plugin through its entry point: install the
package first (``pip install -e .``).
"""

import xcfg
from xcfg.testing import check_example


def test_the_spec_is_registered():
    from diffusers import CogView3PlusTransformer2DModel

    entry = xcfg.default_registry().lookup(CogView3PlusTransformer2DModel)
    assert entry is not None and entry.plugin == "cogview3plus"


def test_two_cpu_ranks_equal_one_process_and_split_the_batch():
    report = check_example("cogview3plus", num_inference_steps=2)
    assert report.ok, report  # equal to 1 process, and each rank computed half of every CFG batch
    assert report.single_batches == [2, 2]  # one process: the [uncond, cond] batch at each of 2 steps
    assert report.parallel_batches == [[1, 1], [1, 1]]  # each of the 2 ranks: half of it
