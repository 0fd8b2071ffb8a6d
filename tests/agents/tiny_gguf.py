"""A tiny llama-architecture model in GGUF, written with the ``gguf`` package: random weights,
one layer of width 64, a byte-level SentencePiece vocabulary (every byte is a token, so any text
can be written) and a plain chat template. It knows nothing; it exists so that the tests drive a
real inference server (llama.cpp's) through its real protocol: grammars from JSON schemas, tool
calls, streaming, usage. About 330 KB, written in well under a second."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

WIDTH, FFN, HEADS, LAYERS, CONTEXT = 64, 128, 4, 1, 8192
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "<|assistant|>")


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for text, kind in (("<unk>", 2), ("<s>", 3), ("</s>", 3)):  # unknown, control, control
        tokens.append(text.encode())
        scores.append(0.0)
        types.append(kind)
    for b in range(256):  # byte tokens (type 6): any text is some sequence of them
        tokens.append(f"<0x{b:02X}>".encode())
        scores.append(0.0)
        types.append(6)
    for i, piece in enumerate(["▁", "{", "}", '"', ":", ",", "▁the", "e", "a", "t"]):
        tokens.append(piece.encode())
        scores.append(-float(i))
        types.append(1)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("switchyard-tiny")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(WIDTH)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(WIDTH // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(TEMPLATE)

    def random(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    random("token_embd.weight", len(tokens), WIDTH)
    w.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=np.float32))
    random("output.weight", len(tokens), WIDTH)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        for k in ("attn_q", "attn_k", "attn_v", "attn_output"):
            random(f"blk.{i}.{k}.weight", WIDTH, WIDTH)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(WIDTH, dtype=np.float32))
        random(f"blk.{i}.ffn_gate.weight", FFN, WIDTH)
        random(f"blk.{i}.ffn_up.weight", FFN, WIDTH)
        random(f"blk.{i}.ffn_down.weight", WIDTH, FFN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
