"""The worker of :class:`~rcan_deploy.backends.openvino.OpenVINORunner` with an ``isa`` cap.

Started with ONEDNN_MAX_CPU_ISA in its environment; reads pickled ``("load", model, threads)``
then ``("infer", x)`` messages on stdin until EOF and answers each with ``(status, value)`` on
the stdout it was given (its own prints go to stderr); an inference's value is the output and
the seconds it took.
"""

from __future__ import annotations

import os
import pickle
import sys
import time


def main() -> None:
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # library prints must not corrupt the answers
    sys.stdout = sys.stderr
    from ..errors import UserError
    from .openvino import compile_model, run_request

    requests, request = sys.stdin.buffer, None
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            return
        try:
            if message[0] == "load":
                source, threads = message[1], message[2]
                if isinstance(source, bytes):
                    import onnx

                    source = onnx.load_from_string(source)
                request = compile_model(source, threads)
                answer = ("ok", None)
            else:
                start = time.perf_counter()
                output = run_request(request, message[1])
                answer = ("ok", (output, time.perf_counter() - start))
        except UserError as exc:
            answer = ("user-error", str(exc))
        except Exception as exc:  # reported to the parent, which raises it
            answer = ("error", f"{type(exc).__name__}: {exc}")
        pickle.dump(answer, answers, protocol=5)
        answers.flush()


if __name__ == "__main__":
    main()
