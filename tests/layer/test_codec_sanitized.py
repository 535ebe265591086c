"""The C decoders under AddressSanitizer and UBSan, fed truncated and corrupted vectors."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_decoders_survive_every_truncation_and_corruption(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tether_layer_build", ROOT / "layer/build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.generate_protocol_header(tmp_path)
    exe = tmp_path / "codec_fuzz"
    subprocess.run(["gcc", "-g", "-O1", "-D_GNU_SOURCE", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-I", str(ROOT / "csrc"), "-I",
                    str(ROOT / "layer"), "-I", str(tmp_path), "-o", str(exe),
                    str(Path(__file__).with_name("codec_fuzz.c")), str(ROOT / "csrc/codec.c")],
                   check=True)
    vectors = json.loads((ROOT / "layer/protocol.json").read_text())["vectors"]
    res = subprocess.run([str(exe)] + [v["hex"] for v in vectors], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(res.stdout) > 1000
