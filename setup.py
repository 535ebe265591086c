"""Packaging: the tether package, its cffi helper module and the C layer.

``pip install .`` compiles both native parts: ``tether._native`` (a cffi API-mode
extension, via ``cffi_modules``) and ``libtether_layer.so`` (a plain shared object built by
layer/build.py with the same compiler toolchain), shipped inside the package.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "layer"))


class BuildWithLayer(build_ext):
    def run(self) -> None:
        super().run()
        import build as layer_build  # layer/build.py

        dest_root = Path(self.build_lib) if not self.inplace else ROOT / "python"
        layer_build.build_layer(dest_root / "tether" / "libtether_layer.so")
        layer_build.build_launcher(dest_root / "tether" / "tether-launch")
        if os.environ.get("TETHER_BUILD_ASAN"):
            layer_build.build_layer(dest_root / "tether" / "libtether_layer_asan.so", asan=True)


def version() -> str:
    for line in (ROOT / "python" / "tether" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("no __version__")


setup(
    name="tether",
    version=version(),
    description="Run a local process as if it were inside a remote pod",
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"tether": ["protocol.json", "*.so", "tether-launch"]},
    python_requires=">=3.11",
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "msgpack>=1.0", "click>=8.1", "kubernetes>=28", "PyYAML>=6",
                      "h2>=4.1",
                      "google-re2>=1.1", "uvloop>=0.19"],
    cffi_modules=["layer/native_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithLayer},
    entry_points={
        "console_scripts": [
            "tether=tether.entry:main",
            "tether-agent=tether.agent.__main__:main",
        ]
    },
    zip_safe=False,
)
