"""A DICOM upload without pixel data (an RT plan from pydicom's test files) is a 400 whose JSON
message says so, through the real server (issue 22, item 6); the server stays healthy."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from _server import http
from pydicom.data import get_testdata_file


def test_a_dicom_without_pixel_data_is_a_named_400(server):
    plan = Path(get_testdata_file("rtplan.dcm")).read_bytes()
    assert plan[128:132] == b"DICM"
    url = f"{server.url}/v1/models/{server.name}:predict"
    status, body, _ = http("POST", url, {"instances": [base64.b64encode(plan).decode()]})
    assert status == 400 and isinstance(body, dict), (status, body)
    message = json.dumps(body)
    assert "instances[0]: no pixel data (modality RTPLAN, SOP class RT Plan Storage): the DICOM object holds no image" \
        in message, message
    assert "AttributeError" not in message
    assert http("GET", f"{server.url}/v1/models/{server.name}")[0] == 200
