"""Random-weight models that mlx-lm and mlx-vlm load like downloaded checkpoints.

Tests need real models (real tokenizers, chat templates, KV caches, batching) without weights
from a hub, and the benchmark needs models of realistic shapes on hosts that reach no hub. Both
write them here, on the spot:

* :func:`make_tiny_llm`: two layers of width 64 and a 512-token BPE, written in well under a
  second, thousands of tokens per second on a CPU; any mlx-lm architecture with Llama-style
  fields (``tokenizer.py`` trains the tokenizer, ``llm.py`` draws the weights).
* :func:`make_random_llama`: the shapes of released models (:data:`LLAMA_3_2_1B`,
  :data:`LLAMA_3_1_8B`) in bfloat16 or 4-bit, for throughput measurements.
* :func:`make_tiny_vlm`: a Qwen2-VL of the same size with its image processor (``vlm.py``).

In every model the output rows of the special tokens are zero, so greedy decoding never picks
EOS and a request for N tokens yields N tokens. Importing this package loads neither MLX nor
``tokenizers`` (a dependency of ``transformers``, which mlx-lm requires): they are imported when
a model is written.
"""

from mlx_router.fabricate.llm import LLAMA_3_1_8B, LLAMA_3_2_1B, LlamaShape, make_random_llama, make_tiny_llm
from mlx_router.fabricate.tokenizer import (
    BOS_TOKEN,
    CHATML_TEMPLATE,
    CORPUS,
    EOS_TOKEN,
    IM_START_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    write_tokenizer,
)
from mlx_router.fabricate.vlm import IMAGE_PAD_TOKEN, QWEN2_VL_CHAT_TEMPLATE, VISION_TOKENS, make_tiny_vlm

__all__ = [
    "BOS_TOKEN",
    "CHATML_TEMPLATE",
    "CORPUS",
    "EOS_TOKEN",
    "IMAGE_PAD_TOKEN",
    "IM_START_TOKEN",
    "LLAMA_3_1_8B",
    "LLAMA_3_2_1B",
    "PAD_TOKEN",
    "QWEN2_VL_CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "VISION_TOKENS",
    "LlamaShape",
    "make_random_llama",
    "make_tiny_llm",
    "make_tiny_vlm",
    "write_tokenizer",
]
