"""TensorRT in the runtime: the one `import_tensorrt` (engine building in `deploy/` imports TensorRT through it)
and engines as a Runner: deserialise a .plan/.engine, bind I/O by tensor name (TensorRT 10/11 API) and run
`execute_async_v3` on a CUDA stream.

Device memory and the stream come from torch, which vitdeploy already depends on (its CUDA build), so running an
engine needs nothing beyond the `tensorrt` package. Boards without torch use `profiling/profile_engine.py`, which
talks to the CUDA runtime through ctypes instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdeploy.errors import BackendError, VitDeployError
from vitdeploy.runtime.base import Runner
from vitdeploy.runtime.torch import check_cuda

ENGINE_SUFFIXES = (".plan", ".engine")


RUN_HINT = ("install TensorRT (JetPack, an NGC container, or pip install 'vitdeploy[gpu]') or run the ONNX graph "
            "with ort-cpu")


def import_tensorrt(hint: str = RUN_HINT) -> Any:
    """The tensorrt module, or one BackendError line saying it is missing, ending with `hint` (what to do instead).
    The registry's placeholder wheels import but have no runtime: they fail here too."""
    try:
        import tensorrt as trt

        trt.Runtime  # noqa: B018 - the registry's placeholder packages import but have no runtime
    except Exception as e:  # ImportError, a missing libnvinfer (OSError), a placeholder's AttributeError
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(f"TensorRT is not installed here (import tensorrt failed: {detail}): the 'tensorrt' "
                           f"package with its runtime is not usable here; {hint}") from None
    return trt


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, torch_dtype in table.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise BackendError(f"TensorRT I/O dtype {dtype} is not supported by vitdeploy's runner")


class TrtRunner(Runner):
    """One TensorRT engine with one image input; every output gets a device buffer, the first is returned.

    The input batch is copied to the GPU and cast to the engine's input dtype (fp16 I/O engines take half),
    the input shape is set for each call (dynamic batch within optimisation profile 0), and the logits come back
    as float32 on the host, so the time of a call is the host-to-host time a server would see.
    """

    def __init__(self, engine_path: str | Path) -> None:
        super().__init__()
        self._trt = import_tensorrt()
        check_cuda("trt")
        self.name = "trt"
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise VitDeployError(f"engine file not found: {self.engine_path}")
        self._runtime = self._engine = self._context = self._stream = None
        self._input = ""
        self._outputs: list[str] = []

    def _activate(self) -> None:
        trt = self._trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            self._runtime = None
            raise BackendError(f"TensorRT {trt.__version__} could not deserialise {self.engine_path} (an engine runs only "
                               "with the TensorRT version and GPU it was built for: rebuild it here)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not self._outputs:
            raise VitDeployError(f"{self.engine_path.name}: expected one image input and an output, found inputs {inputs} "
                                 f"and outputs {self._outputs}")
        self._input = inputs[0]
        shape = tuple(engine.get_tensor_shape(self._input))
        if shape[0] == -1:
            low, _, high = engine.get_tensor_profile_shape(self._input, 0)
            self.batch_range = (int(low[0]), int(high[0]))
        else:
            self.batch_range = (int(shape[0]), int(shape[0]))
        self.input_shape = shape[1:]
        self._dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        self._engine, self._context = engine, engine.create_execution_context()
        self._stream = torch.cuda.Stream()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if not self.supports_batch(len(x)):
            low, high = self.batch_range
            raise VitDeployError(f"{self.engine_path.name} takes batches of {low} to {high}, got {len(x)}")
        ctx = self._context
        with torch.cuda.stream(self._stream):
            inp = torch.from_numpy(x).to("cuda").to(self._dtypes[self._input])
            if not ctx.set_input_shape(self._input, tuple(inp.shape)):
                raise VitDeployError(f"{self.engine_path.name} does not take an input of shape {tuple(inp.shape)}")
            ctx.set_tensor_address(self._input, inp.data_ptr())
            outs = []
            for name in self._outputs:
                out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name], device="cuda")
                ctx.set_tensor_address(name, out.data_ptr())
                outs.append(out)
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise BackendError(f"TensorRT failed to run {self.engine_path.name}")
            return outs[0].float().cpu().numpy()  # .cpu() waits for this stream, so the timing covers the whole call

    def _deactivate(self) -> None:
        self._context = self._engine = self._runtime = self._stream = None
        torch.cuda.empty_cache()
