"""The census: every pipeline class of the installed diffusers that runs CFG, built tiny and run on 2 gloo ranks.

``cases_*.py`` modules each define ``CASES``, a list of :class:`census.case.Case`; the runner collects them all.
"""
