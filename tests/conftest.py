import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")

# The user's cache, for downloads worth keeping between runs (the TensorRT binding wheels).
USER_CACHE = Path(os.environ.get("RCAN_DEPLOY_CACHE") or Path.home() / ".cache" / "rcan_deploy")
# Keep the suite away from the user's caches and data: one throw-away cache for the session
# (LR images and crops are reused between tests), and an empty data root.
_SESSION_DIR = tempfile.mkdtemp(prefix="rcan-deploy-tests-")
os.environ["RCAN_DEPLOY_CACHE"] = os.path.join(_SESSION_DIR, "cache")
os.environ["RCAN_DEPLOY_DATA"] = os.path.join(_SESSION_DIR, "no-data")
