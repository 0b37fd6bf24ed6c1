"""What ``bench/gpu_check.sh`` imports, checked before it starts, and which wheels to bring.

The device image the project is checked on has torch and accelerate but not open_clip or
its text dependencies; a missing module would stop the script minutes in. This imports
each module the checks need (standard library only here, so it runs on any Python) and,
when some are missing, prints one line per missing module and the ``pip download`` command
that fetches their wheels for this Python and platform into ``.whl/``, which the script
installs from first. Exit status 3 then.

    python -m bench.gpu_imports
"""

from __future__ import annotations

import importlib
import platform
import sys

# (module, the distribution whose wheel provides it): the trainer, open_clip and what
# open_clip imports when the tokenizer and the model registry load
MODULES = (
    ("torch", "torch"),
    ("torchvision", "torchvision"),
    ("accelerate", "accelerate"),
    ("wcwidth", "wcwidth"),  # before what imports it, so that a missing one is named first
    ("ftfy", "ftfy"),
    ("open_clip", "open_clip_torch"),
    ("regex", "regex"),
    ("huggingface_hub", "huggingface_hub"),
    ("safetensors", "safetensors"),
    ("timm", "timm"),
    ("numpy", "numpy"),
    ("PIL", "pillow"),
    ("yaml", "PyYAML"),
    ("pandas", "pandas"),
    ("filelock", "filelock"),
    ("tqdm", "tqdm"),
)
MISSING_EXIT = 3


def missing_modules() -> list[tuple[str, str | None, str]]:
    """(module, the wheel to bring, why) for each module that does not import; the wheel is
    None where the module is there but needs another missing one (open_clip without ftfy)."""
    listed = dict(MODULES)
    out = []
    for module, dist in MODULES:
        try:
            importlib.import_module(module)
        except ImportError as err:
            needed = (err.name or module).split(".")[0]
            if needed == module:
                out.append((module, dist, f"{type(err).__name__}: {err}".splitlines()[0]))
            else:  # the module is installed; a module it imports is not
                out.append((module, None, f"needs {needed}"))
                if needed not in listed and needed not in {m for m, _, _ in out}:
                    out.append((needed, needed, "imported by " + module))
        except Exception as err:  # a broken install
            out.append((module, dist, f"{type(err).__name__}: {err}".splitlines()[0]))
    return out


def download_command(dists: list[str]) -> str:
    """The ``pip download`` of ``dists``' wheels for this Python and platform, to run on a
    machine with network, from the repository root."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    machine = platform.machine() or "x86_64"
    return (
        f"pip download --no-deps --only-binary=:all: --python-version {version} "
        f"--platform manylinux2014_{machine} -d .whl {' '.join(dists)}"
    )


def main() -> int:
    missing = missing_modules()
    if not missing:
        names = ", ".join(m for m, _ in MODULES)
        print(f"imports: all {len(MODULES)} present ({names})")
        return 0
    for module, dist, why in missing:
        wheel = f"wheel: {dist}" if dist else "installed"
        print(f"missing: {module} ({wheel}) -- {why}", file=sys.stderr)
    dists = list(dict.fromkeys(d for _, d, _ in missing if d))
    print(
        f"bring the wheels of {', '.join(dists)}: on a machine with network run\n"
        f"  {download_command(dists)}\n"
        "and copy .whl/ into this checkout; bench/gpu_check.sh installs .whl/*.whl first "
        "(a wheel that needs others not on the device: download those too)",
        file=sys.stderr,
    )
    return MISSING_EXIT


if __name__ == "__main__":
    raise SystemExit(main())
