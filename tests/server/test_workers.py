"""--workers: several processes share the REST and gRPC ports and all answer."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from tests.support import ServerProcess, copy_repository


def test_two_workers_share_the_ports(tmp_path: Path) -> None:
    proc = ServerProcess(copy_repository(tmp_path / "repo", ["add_sub"]), ["--workers", "2"]).start()
    try:
        children = [c for c in Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text().split()
                    if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(children) == 2, "the supervisor should run two worker processes"
        body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [3] * 16}
                           for n in ("INPUT0", "INPUT1")]}
        for _ in range(40):
            with httpx.Client() as c:  # a new connection each time, so the kernel can pick either worker
                r = c.post(proc.url + "/v2/models/add_sub/infer", json=body)
                assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [6] * 16
        client = grpcclient.InferenceServerClient(proc.grpc_addr)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(np.full((1, 16), 2, np.int32))
        assert (client.infer("add_sub", inputs).as_numpy("OUTPUT0") == 4).all()
        # the repository API is off with several workers (each worker has its own loaded models)
        r = httpx.post(proc.url + "/v2/repository/models/add_sub/unload")
        assert r.status_code >= 400 and "error" in r.json()
    finally:
        assert proc.stop() == 0
    assert all(not Path(f"/proc/{c}").exists() for c in children), "workers must exit with the supervisor"
