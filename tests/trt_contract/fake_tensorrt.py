"""A TensorRT that builds and runs ONNX graphs on the CPU, made of stand-ins held to the real
binding classes of the loaded release (:mod:`trt_contract.standins`).

What it models is what the project relies on, after NVIDIA's documentation:
- OnnxParser: ONNX ops unknown to ONNX are rejected with ParserErrors naming the node; Q/DQ with
  uint8 or non-zero zero points are rejected (TensorRT quantizes symmetric int8 only).
- Builder: precision builder flags on a strongly typed network fail the build (10.x); 11.x
  networks are always strongly typed. A DequantizeLinear feeding anything but a convolution or
  a matrix product gives an "unfused" warning (simpler than TensorRT's fusion rules). INFO and
  VERBOSE chatter is logged too. The serialized engine is JSON (release, I/O, layers with
  precisions, profiling verbosity, typing, flags, memory pools) plus the parsed ONNX graph.
- Timing caches serialize with a header naming the release; other bytes are refused.
- Runtime: an engine of another release is refused with TensorRT's "version tag" error.
- EngineInspector: the JSON schema of the release (10.x "Format/Datatype" and "Bindings", 11.x
  "Format" + "DataType" and "I/O Tensors"), with reformatting copy layers where the precision
  changes.
- IExecutionContext.execute_async_v3: runs the graph on ONNX Runtime over the fake device memory
  of :mod:`trt_contract.fake_cudart`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import onnx

from . import standins
from .standins import HostMemory, StandIn

CUDA = None  # the FakeCuda whose memory engines run on (set by the driver)
ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE "
_FUSED_WITH_DQ = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # (the fake warns on the rest)
_LAYER_TYPES = {"Conv": "CaskConvolution", "ConvTranspose": "CaskDeconvolution",
                "DepthToSpace": "Shuffle", "Reshape": "Shuffle", "Transpose": "Shuffle",
                "Relu": "PointWise", "Add": "PointWise", "Mul": "PointWise", "Sub": "PointWise",
                "Div": "PointWise", "Sigmoid": "PointWise", "Cast": "Cast"}
_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF",
                onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8",
                onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64",
                onnx.TensorProto.BOOL: "BOOL"}
_V10_FORMATS = {"INT8": "Thirty-two wide channel vectorized row major Int8 format",
                "FP16": "Channel major FP16 format where channel % 8 == 0",
                "FP32": "Row major linear FP32"}
_V11_TYPES = {"INT8": "Int8", "FP16": "Half", "FP32": "Float"}
_V11_FORMATS = {"INT8": "Thirty-two wide channel vectorized row major format (kCHW32)",
                "FP16": "Channel major format where channel % 8 == 0 (kHWC8)",
                "FP32": "Row major linear format (kLINEAR)"}


def trt():
    return standins.REAL


def major() -> int:
    return int(trt().__version__.split(".")[0])


def _log(logger, severity: str, message: str) -> None:
    logger.log(getattr(trt().ILogger.Severity, severity), message)


class ITensor(StandIn):
    REAL_NAME = "ITensor"


class ParserError(StandIn):
    REAL_NAME = "ParserError"

    def node(self):
        return self._node

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def desc(self):
        return self._desc

    def code(self):
        return trt().ErrorCode.UNSUPPORTED_NODE


class INetworkDefinition(StandIn):
    REAL_NAME = "INetworkDefinition"

    @property
    def num_inputs(self):
        return len(self._inputs)

    @property
    def num_outputs(self):
        return len(self._outputs)

    def get_input(self, index):
        return self._inputs[index]

    def get_output(self, index):
        return self._outputs[index]


def _tensor(value_info: onnx.ValueInfoProto) -> ITensor:
    kind = value_info.type.tensor_type
    return ITensor.make(name=value_info.name, shape=trt().Dims([d.dim_value for d in
                                                                kind.shape.dim]),
                        dtype=getattr(trt().DataType, _ONNX_TO_TRT[kind.elem_type]))


class OnnxParser(StandIn):
    REAL_NAME = "OnnxParser"

    def _construct(self, network, logger):
        self._network, self._logger, self._errors = network, logger, []

    @property
    def num_errors(self):
        return len(self._errors)

    def get_error(self, index):
        return self._errors[index]

    def parse(self, model, path=None):
        return self._parse(bytes(memoryview(model)))

    def parse_from_file(self, model):
        return self._parse(Path(model).read_bytes())

    def _parse(self, data: bytes) -> bool:
        graph = onnx.load_from_string(data)
        consts = {t.name: t for t in graph.graph.initializer}
        for index, node in enumerate(graph.graph.node):
            desc = None
            if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
                desc = f"No importer registered for op: {node.op_type}"
            elif node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
                zero_point = consts.get(node.input[2])
                if zero_point is not None and (zero_point.data_type == onnx.TensorProto.UINT8
                                               or onnx.numpy_helper.to_array(zero_point).any()):
                    desc = "Assertion failed: TensorRT only supports symmetric quantization"
            if desc:
                self._errors.append(ParserError.make(_node=index, _name=node.name,
                                                     _op=node.op_type, _desc=desc))
        if self._errors:
            return False
        network = self._network
        network._graph = data
        network._inputs = [_tensor(v) for v in graph.graph.input if v.name not in consts]
        network._outputs = [_tensor(v) for v in graph.graph.output]
        return True


class ITimingCache(StandIn):
    REAL_NAME = "ITimingCache"

    def serialize(self):
        header = CACHE_MAGIC + trt().__version__.encode() + b"\n"
        return HostMemory(header + json.dumps(self._entries).encode())


class IBuilderConfig(StandIn):
    REAL_NAME = "IBuilderConfig"

    def set_memory_pool_limit(self, pool, pool_size):
        self._pools[pool.name] = pool_size

    def set_flag(self, flag):
        self._flags.add(flag.name)

    def clear_flag(self, flag):
        self._flags.discard(flag.name)

    def get_flag(self, flag):
        return flag.name in self._flags

    @property
    def profiling_verbosity(self):
        return trt().ProfilingVerbosity.LAYER_NAMES_ONLY

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(memoryview(serialized_timing_cache))
        if not data:
            return ITimingCache.make(_entries=[])
        header = CACHE_MAGIC + trt().__version__.encode() + b"\n"
        if not data.startswith(header):
            _log(self._logger, "ERROR", "ITimingCache::deserialize: Error Code 3: API Usage "
                                        "Error (timing cache is corrupted or was built by another "
                                        "TensorRT version)")
            return None
        return ITimingCache.make(_entries=json.loads(data[len(header):]))

    def set_timing_cache(self, cache, ignore_mismatch):
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


class Builder(StandIn):
    REAL_NAME = "Builder"

    def _construct(self, logger):
        self._logger = logger

    def create_network(self, flags=0):
        strongly = major() >= 11 or bool(
            flags & (1 << int(trt().NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return INetworkDefinition.make(_strongly_typed=strongly, _graph=None, _inputs=[],
                                       _outputs=[])

    def create_builder_config(self):
        return IBuilderConfig.make(_logger=self._logger, _pools={}, _flags={"TF32"}, _cache=None)

    def build_serialized_network(self, network, config):
        logger, flags = self._logger, config._flags
        _log(logger, "VERBOSE", "Original: 42 layers")
        _log(logger, "INFO", "Local timing cache in use. Profiling results in this builder pass "
                             "will not be stored.")
        precision_flags = flags & {"FP16", "INT8", "BF16", "FP8"}
        if network._strongly_typed and precision_flags:
            _log(logger, "ERROR", "IBuilder::buildSerializedNetwork: Error Code 4: API Usage "
                                  f"Error (precision flags {sorted(precision_flags)} cannot be "
                                  "used with a strongly typed network)")
            return None
        if network._graph is None:
            _log(logger, "ERROR", "IBuilder::buildSerializedNetwork: Error Code 4: Network must "
                                  "have at least one output")
            return None
        graph = onnx.load_from_string(network._graph)
        for message in _unfused_qdq(graph):
            _log(logger, "WARNING", message)
        verbosity = config._state.get("profiling_verbosity",
                                      trt().ProfilingVerbosity.LAYER_NAMES_ONLY).name
        cache = config._cache
        if cache is not None:
            cache._entries.append(f"build {len(cache._entries) + 1}: {len(graph.graph.node)} nodes")
        io = [{"name": t.name, "mode": mode, "shape": list(t.shape), "dtype": t.dtype.name}
              for mode, tensors in (("INPUT", network._inputs), ("OUTPUT", network._outputs))
              for t in tensors]
        spec = {"version": trt().__version__, "io": io, "verbosity": verbosity,
                "strongly_typed": network._strongly_typed, "flags": sorted(flags),
                "pools": config._pools,
                "layers": _layers(graph, network._strongly_typed, flags),
                "onnx": base64.b64encode(network._graph).decode()}
        return HostMemory(ENGINE_MAGIC + json.dumps(spec).encode())


def _unfused_qdq(graph: onnx.ModelProto) -> list[str]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    messages = []
    for node in graph.graph.node:
        if node.op_type == "DequantizeLinear":
            for consumer in consumers.get(node.output[0], []):
                if consumer.op_type not in _FUSED_WITH_DQ:
                    messages.append(f"Unfused DequantizeLinear {node.name!r} before "
                                    f"{consumer.op_type} {consumer.name!r}: it runs in float")
    return messages


def _layers(graph: onnx.ModelProto, strongly_typed: bool, flags: set[str]) -> list[dict]:
    """Layers as TensorRT would run them: Q/DQ folded into the convs they feed, a precision per
    layer, and a reformatting copy wherever the precision changes."""
    producers = {out: node for node in graph.graph.node for out in node.output}
    fp16_graph = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    layers, previous = [], None
    for node in graph.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant", "Cast"):
            continue
        quantized = any(getattr(producers.get(name), "op_type", "") == "DequantizeLinear"
                        for name in node.input)
        if quantized and node.op_type in ("Conv", "ConvTranspose") and \
                (strongly_typed or "INT8" in flags):
            precision = "INT8"
        elif fp16_graph or (not strongly_typed and "FP16" in flags):
            precision = "FP16"
        else:
            precision = "FP32"
        if previous is not None and precision != previous:
            layers.append({"name": f"Reformatting CopyNode for Input Tensor 0 to {node.name}",
                           "type": "Reformat", "precision": (previous, precision)})
        layers.append({"name": node.name, "type": _LAYER_TYPES.get(node.op_type, node.op_type),
                       "op": node.op_type, "precision": (precision, precision)})
        previous = precision
    return layers


class IExecutionContext(StandIn):
    REAL_NAME = "IExecutionContext"

    def set_tensor_address(self, name, memory):
        if name not in {t["name"] for t in self._engine._spec["io"]}:
            _log(self._engine._logger, "ERROR", f"setTensorAddress: no tensor named {name}")
            return False
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle):
        import onnxruntime

        spec = self._engine._spec
        if set(self._addresses) != {t["name"] for t in spec["io"]} or \
                int(stream_handle) not in CUDA.streams:
            _log(self._engine._logger, "ERROR", "IExecutionContext::enqueueV3: Error Code 3: "
                                                "an I/O tensor has no address or the stream is "
                                                "invalid")
            return False
        feeds = {}
        for tensor in spec["io"]:
            dtype = np.dtype(trt().nptype(getattr(trt().DataType, tensor["dtype"])))
            if tensor["mode"] == "INPUT":
                count = int(np.prod(tensor["shape"])) * dtype.itemsize
                feeds[tensor["name"]] = np.frombuffer(CUDA.read(self._addresses[tensor["name"]],
                                                                count), dtype).reshape(
                    tensor["shape"])
        if self._session is None:
            self._session = onnxruntime.InferenceSession(base64.b64decode(spec["onnx"]),
                                                         providers=["CPUExecutionProvider"])
        session = self._session
        for meta, value in zip(session.get_outputs(), session.run(None, feeds)):
            CUDA.write(self._addresses[meta.name], np.ascontiguousarray(value).tobytes())
        return True


class EngineInspector(StandIn):
    REAL_NAME = "EngineInspector"

    def get_engine_information(self, format):
        assert format == trt().LayerInformationFormat.JSON, format
        spec = self._engine._spec
        if spec["verbosity"] == "NONE":
            return "{}"
        if spec["verbosity"] == "LAYER_NAMES_ONLY":
            layers: list = [layer["name"] for layer in spec["layers"]]
        else:
            layers = [{"Name": layer["name"], "LayerType": layer["type"],
                       "Inputs": [_tensor_info(layer["precision"][0])],
                       "Outputs": [_tensor_info(layer["precision"][1])],
                       **({"ParameterType": layer["op"]} if "op" in layer else {})}
                      for layer in spec["layers"]]
        if major() >= 11:
            io = [{"Name": t["name"], "IOMode": t["mode"].title(), "DataType": "Float",
                   "Dimensions": t["shape"], "Location": "Device"} for t in spec["io"]]
            return json.dumps({"Layers": layers, "I/O Tensors": io})
        return json.dumps({"Layers": layers, "Bindings": [t["name"] for t in spec["io"]]})


def _tensor_info(precision: str) -> dict:
    if major() >= 11:
        return {"Name": "t", "Location": "Device", "Format": _V11_FORMATS[precision],
                "DataType": _V11_TYPES[precision]}
    return {"Name": "t", "Location": "Device", "Format/Datatype": _V10_FORMATS[precision]}


class ICudaEngine(StandIn):
    REAL_NAME = "ICudaEngine"

    @property
    def num_io_tensors(self):
        return len(self._spec["io"])

    @property
    def num_layers(self):
        return len(self._spec["layers"])

    def _io(self, name):
        return next(t for t in self._spec["io"] if t["name"] == name)

    def get_tensor_name(self, index):
        return self._spec["io"][index]["name"]

    def get_tensor_mode(self, name):
        return getattr(trt().TensorIOMode, self._io(name)["mode"])

    def get_tensor_shape(self, name):
        return trt().Dims(self._io(name)["shape"])

    def get_tensor_dtype(self, name):
        return getattr(trt().DataType, self._io(name)["dtype"])

    def create_engine_inspector(self):
        return EngineInspector.make(_engine=self)

    def create_execution_context(self, strategy=None):
        return IExecutionContext.make(_engine=self, _addresses={}, _session=None)


class Runtime(StandIn):
    REAL_NAME = "Runtime"

    def _construct(self, logger):
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        data = bytes(memoryview(serialized_engine))
        if not data.startswith(ENGINE_MAGIC):
            _log(self._logger, "ERROR", "IRuntime::deserializeCudaEngine: Error Code 1: "
                                        "Serialization (Serialization assertion magicTagRead == "
                                        "kMAGIC_TAG failed.Magic tag does not match)")
            return None
        spec = json.loads(data[len(ENGINE_MAGIC):])
        if spec["version"] != trt().__version__:
            _log(self._logger, "ERROR", "IRuntime::deserializeCudaEngine: Error Code 1: "
                                        "Serialization (Serialization assertion stdVersionRead == "
                                        "kSERIALIZATION_VERSION failed.Version tag does not match. "
                                        f"Note: Current Version: {trt().__version__}, Serialized "
                                        f"Engine Version: {spec['version']})")
            return None
        return ICudaEngine.make(_spec=spec, _logger=self._logger)


STANDINS = {cls.REAL_NAME: cls for cls in (Builder, OnnxParser, Runtime)}
