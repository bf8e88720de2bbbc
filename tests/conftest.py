import http.server
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")

# The user's cache, for downloads worth keeping between runs (the TensorRT binding wheels).
USER_CACHE = Path(os.environ.get("RCAN_DEPLOY_CACHE") or Path.home() / ".cache" / "rcan_deploy")
# Keep the suite away from the user's caches and data: one throw-away cache for the session
# (LR images and crops are reused between tests), and an empty data root.
_SESSION_DIR = tempfile.mkdtemp(prefix="rcan-deploy-tests-")
os.environ["RCAN_DEPLOY_CACHE"] = os.path.join(_SESSION_DIR, "cache")
os.environ["RCAN_DEPLOY_DATA"] = os.path.join(_SESSION_DIR, "no-data")


def tiny_int8_pair(folder: Path, shape: tuple[int, int], **quantize) -> tuple[Path, Path]:
    """A random-weight SR4K RCAN2 x2 graph at ``shape`` (official layout) and its INT8 graph,
    quantized fast on the samples set without a precision search."""
    import rcan_deploy

    fp32, int8 = folder / "rcan.onnx", folder / "rcan_int8.onnx"
    rcan_deploy.export(fp32, source="official", variant="rcan2-sr4k", random_weights=True,
                       shape=shape)
    rcan_deploy.quantize(fp32, int8, **{"dataset": "samples", "selection_images": 1,
                                        "mixed_precision": False, "progress": False, **quantize})
    return fp32, int8


@pytest.fixture
def server(archives):
    """Serves the ``archives`` fixture of the test module (URL path -> bytes) on 127.0.0.1, with
    Range support; ``state["drop"]`` responses stop half-way."""
    state = {"drop": 0, "ranges": [], "paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["paths"].append(self.path)
            data = archives.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            start = 0
            requested = self.headers.get("Range")
            state["ranges"].append(requested)
            if requested:
                start = int(requested.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state["drop"]:
                state["drop"] -= 1
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
