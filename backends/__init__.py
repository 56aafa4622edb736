"""The backends: ``aimv2.backends.torch`` and ``aimv2.backends.mlx``, each a package whose
top level is the backend contract (:mod:`aimv2.contract`). Import one through
:func:`aimv2.load_backend`, which names the extra to install when its framework is missing.
"""
