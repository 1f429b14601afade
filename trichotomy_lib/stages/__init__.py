"""Pipeline stages, one module per part of the method; importing this registers them all."""

from importlib import import_module

# Order follows the method (DESIGN.md): data → instruments → encoder → diffusion → ...
_MODULES = ("data", "reid", "classifier", "encoder", "diffusion", "generate", "privacy")

for _name in _MODULES:
    try:
        import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as err:  # a part not written yet
        if err.name != f"{__name__}.{_name}":
            raise
