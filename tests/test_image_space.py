"""scripts/containers.sh's room check before an image build, against a fake engine and a fake df.

The dependency layer (about 7 GB) is rebuilt only when its inputs change; a build that the
engine will take from its cache needs little room. The check must tell the two apart, so that a
machine with an older image of the same dependencies is not refused (the failure that kept a
CI run from building the image with 13 GB free).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("Dockerfile", "requirements.lock", "pyproject.toml", "scripts/check_lock.py")

FAKE_ENGINE = """#!/usr/bin/env bash
# podman as the check uses it: `image inspect --format {{.Id}}`, `images -q --filter label=...`, `info`
case "$1 $2" in
  "image inspect") [ "$5" = localhost/base ] && echo "sha256:$BASE_ID" || exit 125 ;;
  "images -q") grep -qx "${4#label=org.medens.deps=}" "$CACHED" && echo 2840e74ba24b ;;
  "info --format") echo "$STORAGE" ;;
  *) exit 2 ;;
esac
"""
FAKE_DF = """#!/usr/bin/env bash
echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
echo "/dev/fake 999999999 1 $FREE_KB 1% /"
"""


@pytest.fixture
def sandbox(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("fake-engine", FAKE_ENGINE), ("df", FAKE_DF)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "repo"
    for f in INPUTS:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / f, work / f)
    (tmp_path / "cached").write_text("")
    (tmp_path / "storage").mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CONTAINER_ENGINE": str(bin_dir / "fake-engine"),
           "CACHED": str(tmp_path / "cached"), "STORAGE": str(tmp_path / "storage"), "BASE_ID": "b1",
           "FREE_KB": str(13 * 1024 * 1024)}

    def call(function: str, *args: str, **overrides: str) -> subprocess.CompletedProcess:
        quoted = " ".join(f"'{a}'" for a in args)
        return subprocess.run(["bash", "-c", f"source {ROOT / 'scripts' / 'containers.sh'} && {function} {quoted}"],
                              cwd=work, env={**env, **overrides}, capture_output=True, text=True)

    return call, work, tmp_path / "cached"


def digest(call, *args, **overrides) -> str:
    out = call("image_deps_digest", *args, **overrides)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_digest_follows_every_input_of_the_dependency_layer_and_nothing_else(sandbox):
    call, work, _ = sandbox
    d = digest(call, "cpu", "localhost/base")
    assert len(d) == 16 and d == digest(call, "cpu", "localhost/base")
    assert d != digest(call, "cuda", "localhost/base")
    assert d != digest(call, "cpu", "localhost/base", BASE_ID="b2")  # the same tag, a new base
    assert d != digest(call, "cpu", "python:3.11-slim")  # not here: its reference stands in
    (work / "README.md").write_text("medens' own files are a later layer")
    assert d == digest(call, "cpu", "localhost/base")
    with (work / "requirements.lock").open("a") as f:
        f.write("extra==1.0\n")
    assert d != digest(call, "cpu", "localhost/base")


def test_a_cached_dependency_layer_needs_3_gb_an_uncached_one_20(sandbox):
    call, _, cached = sandbox
    d = digest(call, "cpu", "localhost/base")
    refused = call("image_space_check", d)  # 13 GB free, nothing cached: the CI failure
    assert refused.returncode == 1
    assert "only 13 GB free" in refused.stderr and "needs about 20 GB" in refused.stderr
    assert f"dependency layer {d} not cached" in refused.stderr

    cached.write_text(d + "\n")  # an image labelled with this digest is here
    ok = call("image_space_check", d)
    assert ok.returncode == 0, ok.stderr
    assert "13 GB free" in ok.stdout and "about 3 GB needed" in ok.stdout and f"{d} cached" in ok.stdout
    tight = call("image_space_check", d, FREE_KB=str(2 * 1024 * 1024))
    assert tight.returncode == 1 and "needs about 3 GB" in tight.stderr
    assert call("image_space_check", "0" * 16).returncode == 1  # another digest is not this cache
    assert call("image_space_check", "0" * 16, FREE_KB=str(20 * 1024 * 1024)).returncode == 0
