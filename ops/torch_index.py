"""Which build of torch ``make install`` asks pip for: the pip arguments that choose the
package index, printed on one line (nothing: the index pip is configured with).

    python3 ops/torch_index.py [--index auto|cpu|cu128|...|default] [--base-url URL]

``auto`` (the default): on Linux, the CUDA build (``cu128``) where ``nvidia-smi`` lists a
GPU, else the CPU-only build, from PyTorch's own index; PyPI's Linux wheel is the CUDA
build, several GB that a machine without a GPU would never use. Elsewhere (macOS,
Windows) PyPI's wheel is the CPU build, so the default index. ``cpu``, ``cu126``,
``cu128``, … choose a build; ``default`` the configured index. When PyTorch's index does
not answer within ``--timeout`` seconds (a machine that reaches only a mirror of PyPI),
the configured index is used, and this says so on stderr.

Standard library only: it runs before the virtual environment has anything installed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import urllib.request

PYTORCH_INDEX = "https://download.pytorch.org/whl"
CUDA = "cu128"  # the CUDA build of the pinned torch that our GPU images use too
_BUILD = re.compile(r"^(cpu|cu\d{3,}|rocm\d+(\.\d+)*|xpu)$")


def _say(message: str) -> None:
    print(f"torch: {message}", file=sys.stderr)


def gpu_found() -> bool:
    """Whether ``nvidia-smi`` lists a GPU (it is on PATH where the NVIDIA driver is)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and any(
        line.startswith("GPU ") for line in listed.stdout.splitlines()
    )


def reachable(url: str, timeout: float) -> bool:
    """Whether ``url`` answers within ``timeout`` seconds, name lookup included (which
    urllib's own timeout does not bound: hence the thread)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                answered.append(response.status < 400)
        except (OSError, ValueError):
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def choose(index: str, base_url: str, timeout: float) -> list[str]:
    """The pip arguments for ``index`` (see the module's docstring)."""
    if index == "auto":
        if not sys.platform.startswith("linux"):
            _say(f"the default index's build ({sys.platform}: CPU; TORCH_INDEX=auto)")
            return []
        if gpu_found():
            index, why = CUDA, "nvidia-smi lists a GPU"
        else:
            index, why = "cpu", "no NVIDIA GPU found"
        _say(f"the {index} build ({why}; TORCH_INDEX=auto)")
    if index == "default":
        _say("the build of the configured package index (TORCH_INDEX=default)")
        return []
    if not _BUILD.match(index):
        raise SystemExit(f"TORCH_INDEX={index!r}: expected auto, default, cpu, cu128, …")
    url = f"{base_url.rstrip('/')}/{index}"
    if not reachable(f"{url}/torch/", timeout):
        _say(f"{url} did not answer within {timeout:g} s; using the configured package index")
        return []
    return ["--index-url", url]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="auto", help="auto, default, cpu, cu128, …")
    parser.add_argument("--base-url", default=PYTORCH_INDEX, help="PyTorch's wheel index")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for it")
    args = parser.parse_args(argv)
    print(" ".join(choose(args.index.strip() or "auto", args.base_url, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
