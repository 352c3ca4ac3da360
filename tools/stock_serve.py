"""Serve requests through sagemaker-pytorch-inference's stock ``HandlerService``, as the SageMaker PyTorch inference
container does, with dogclf importable only from the model's ``code/`` folder (dogclf is not installed there).

Usage (with the inference venv's interpreter): ``python stock_serve.py MODEL_DIR IMAGE.jpg``. Prints one JSON line:
``{"answers": [{"status", "content_type", "body" (hex)}...], "dogclf": <where dogclf was imported from>,
"runtime": <the runtime served>, "module": <the served module's class>, "versions": {...}}`` for a JPEG asking for JSON with ``k=2``, an empty body, and the JPEG asking for ``.npy``.
Standard library only besides what the container has (run by ``tools/compat.py`` in the container's versions,
and by the stock-handler tests in this environment).
"""

import importlib.machinery
import json
import os
import sys

model_dir, image_path = sys.argv[1], sys.argv[2]
code_dir = os.path.join(model_dir, "code")


class OnlyVendoredDogclf:
    """Refuse any dogclf that does not come from ``code/``."""

    def find_spec(self, name, path=None, target=None):
        if name != "dogclf" and not name.startswith("dogclf."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [code_dir] if name == "dogclf" else path)
        if spec is None or not str(spec.origin).startswith(code_dir):
            raise ImportError(f"{name} is not in the archive's code/ folder")
        return spec


sys.meta_path.insert(0, OnlyVendoredDogclf())
sys.path.insert(0, code_dir)  # what the toolkit's DefaultHandlerService.initialize does for the model server

from sagemaker_pytorch_serving_container.handler_service import HandlerService  # noqa: E402


class RequestProcessor:
    def __init__(self, headers):
        self.headers = headers

    def get_request_properties(self):
        return self.headers


class Context:
    model_name = "model"

    def __init__(self, headers):
        self.system_properties = {"model_dir": model_dir}
        self.request_processor = [RequestProcessor(headers)]
        self.status, self.content_type = 200, None

    def set_response_status(self, code, phrase):
        self.status = code

    def set_response_content_type(self, idx, content_type):
        self.content_type = content_type


service = HandlerService()
context = Context({})
service.initialize(context)
with open(image_path, "rb") as f:
    jpeg = f.read()
answers = []
for body, headers in [
    (jpeg, {"Content-Type": "image/jpeg", "Accept": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "k=2"}),
    (b"", {"Content-Type": "image/jpeg", "Accept": "application/json"}),
    (jpeg, {"Content-Type": "image/jpeg", "Accept": "application/x-npy"}),
]:
    context.request_processor = [RequestProcessor(headers)]
    context.status, context.content_type = 200, None
    out = service.handle([{"body": body}], context)[0]
    raw = out.encode() if isinstance(out, str) else out
    answers.append({"status": context.status, "content_type": context.content_type, "body": raw.hex()})

import dogclf  # noqa: E402
import numpy  # noqa: E402
import PIL  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

served = getattr(getattr(service, "_service", None), "_model", None)  # what the entry point's model_fn returned
print(json.dumps({"answers": answers, "dogclf": dogclf.__file__, "runtime": getattr(served, "runtime", None),
                  "module": type(getattr(served, "module", None)).__name__,
                  "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                               "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                               "Pillow": PIL.__version__}}))
