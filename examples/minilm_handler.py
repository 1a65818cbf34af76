"""all-MiniLM-L6-v2 sentence embeddings around the bare transformer (an ONNX graph).

preprocess tokenises the batch's TEXT rows (UTF-8, one sentence per row) into
``input_ids``/``attention_mask``, padded to the longest sentence in the batch and cut at
MAX_TOKENS; postprocess mean-pools the token embeddings over the real (unpadded) tokens
and L2-normalises them, which is what sentence-transformers does for this model.

scripts/build_examples.py copies this file to examples/models/minilm/handler.py, next to
the tokenizer.json that load() reads, so the model directory serves on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

#: Longer sentences are truncated (sentence-transformers allows 256; 128 keeps batches cheap).
MAX_TOKENS = 128

_tokenizer: Tokenizer | None = None


def load(model_dir: Path) -> None:
    global _tokenizer
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    # No fixed length: pad to the longest sentence of each batch.
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    _tokenizer = tokenizer


def preprocess(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if _tokenizer is None:
        raise RuntimeError("handler load() was not called")
    texts = [_text(item) for item in inputs["TEXT"].reshape(-1)]
    encodings = _tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def postprocess(outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tokens = outputs["token_embeddings"]  # [rows, tokens, 384]
    mask = inputs["attention_mask"][..., None].astype(np.float32)
    pooled = (tokens * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return {"EMBEDDING": (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)}


def _text(item: object) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
