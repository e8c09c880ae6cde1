"""``medens serve --backend onnx``: the same answers as PyTorch through v1 and v2 REST and gRPC v2."""

from __future__ import annotations

import base64
import io
import shutil

import grpc
import numpy as np
import pytest
from _server import ServerProcess, http
from test_grpc_raw import Tensor, grpc_call, grpc_outputs


def _png(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def onnx_ensemble(tiny_ensemble, tmp_path_factory):
    """A copy of the tiny trained ensemble, exported to ONNX on its validation images."""
    import torch

    from medens.data.types import SplitData
    from medens.ensemble.onnx_members import export_onnx

    src, _ = tiny_ensemble
    path = shutil.copytree(src, tmp_path_factory.mktemp("onnx") / "ens")
    val = SplitData.load(src.parent.parent / "data").val.images
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        entry = export_onnx(path, np.asarray(val[:16]))
    finally:
        torch.set_num_threads(threads)
    assert "refused" not in entry, entry.get("refused")
    return path


def test_rest_v1_v2_and_grpc_agree_with_torch(onnx_ensemble, tiny_ensemble, tmp_path):
    from medens.serving.predictor import EnsemblePredictor

    images = tiny_ensemble[1][:5]
    reference = EnsemblePredictor.load(onnx_ensemble, backend="torch")
    expected = reference.forward(reference.prepare(list(images)))
    probs = np.stack([r["probs"] for r in expected])
    members = np.stack([np.stack([r["members"][m] for m in reference.member_ids]) for r in expected])
    log = tmp_path / "server.log"
    with ServerProcess(onnx_ensemble, "tiny-onnx", log=log, extra_args=["--backend", "onnx", "--threads", "1",
                                                                          "--forward-workers", "2"]) as server:
        status, v1, _ = http("POST", f"{server.url}/v1/models/tiny-onnx:predict",
                             {"instances": [_png(img) for img in images], "parameters": {"return_members": True}})
        assert status == 200, v1
        body = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                            "data": [_png(img) for img in images]}], "parameters": {"return_members": True}}
        status, v2, _ = http("POST", f"{server.url}/v2/models/tiny-onnx/infer", body)
        assert status == 200, v2
        # gRPC v2 (the backend is chosen below the protocols): the PNG files as typed BYTES contents
        code, details, resp = grpc_call(server, [Tensor("image", "BYTES", [len(images)],
                                                        [base64.b64decode(_png(img)) for img in images])], raw=False)
        assert code == grpc.StatusCode.OK, details
    # two forwards at once: the five images of one request are split between them (3 + 2)
    assert "onnx backend, 2 forwards at once" in log.read_text()
    # KServe's TimingMiddleware is left out (two getrusage calls and two trace lines per request)
    assert "kserve.trace" not in log.read_text()
    got_v1 = np.array([p["probabilities"] for p in v1["predictions"]])
    assert np.abs(got_v1 - probs).max() <= 1e-5
    assert [p["label"] for p in v1["predictions"]] == list(probs.argmax(1))
    for p, row in zip(v1["predictions"], expected):
        for mid in reference.member_ids:
            assert np.abs(np.array(p["members"][mid]) - row["members"][mid]).max() <= 1e-5
        assert abs(p["entropy"] - row["entropy"]) <= 1e-5
    out = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in v2["outputs"]}
    assert np.abs(out["probabilities"] - probs).max() <= 1e-5
    assert np.abs(out["member_probabilities"] - members).max() <= 1e-5
    assert list(out["label"]) == list(probs.argmax(1))
    over_grpc = grpc_outputs(resp)
    assert np.abs(over_grpc["probabilities"] - probs).max() <= 1e-5
    assert list(over_grpc["label"]) == list(probs.argmax(1))


def test_backend_onnx_without_onnx_files_fails_to_start(tiny_ensemble, tmp_path):
    log = tmp_path / "server.log"
    server = ServerProcess(tiny_ensemble[0], "tiny-no-onnx", log=log, extra_args=["--backend", "onnx"])
    with pytest.raises(RuntimeError, match="exited with"):
        server.wait_ready(timeout=120)
    assert "--backend onnx: the artifact 'weighted-top3' has no ONNX files" in log.read_text()
