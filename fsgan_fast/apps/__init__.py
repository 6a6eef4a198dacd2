"""Applications of trained models beyond random generation (``fsgan-fast app MODEL APP``): one module per model.

Each module holds the applications as plain Python functions (tensors in, tensors out) and, for the CLI, an
``APPS`` mapping of :class:`fsgan_fast.models.registry.ModelApp` that the model's spec names.
"""
