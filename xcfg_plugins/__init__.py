"""xcfg's built-in model plugins, one module per model family.

Each module is an ordinary xcfg plugin, loaded through the ``xcfg`` entry-point group exactly as a
third-party plugin is, and each has the same parts in the same order:

1. the module docstring: the pipelines it covers, how they evaluate CFG, and which forward arguments
   carry the batch and why;
2. ``SPECS``: the :class:`xcfg.ModelSpec` of every denoiser class of the family;
3. the example builders: configs (``"tiny"`` for CPU tests and the demo, ``"full"`` for the published
   sizes the benchmarks use) and the call arguments, with random weights and random prompt embeddings;
4. where the family's VAE has a tiled decode xcfg can split: the VAE section (``tiled_decode`` and
   ``VAE_SPECS``);
5. the hook implementations, ``register_models`` and ``register_examples``.

Nothing here touches process groups; that is the core's job.
"""
