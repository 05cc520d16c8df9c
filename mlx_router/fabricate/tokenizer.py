"""A byte-level BPE with ChatML, trained on the spot, for every fabricated model.

The tokenizer is trained on the small corpus below; BPE training breaks ties by pair order, so
the merges never change: same vocabulary size, same bytes on disk. When the corpus runs out of
merges, reserved special tokens fill the vocabulary so every id a model can produce decodes to
something.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

__all__ = [
    "BOS_TOKEN",
    "CHATML_TEMPLATE",
    "CORPUS",
    "EOS_TOKEN",
    "IM_START_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "train_tokenizer",
    "write_json",
    "write_tokenizer",
]

# The ChatML special tokens, in the order of their ids (0, 1, 2), as in SmolLM2 and Qwen.
PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
BOS_TOKEN = PAD_TOKEN
SPECIAL_TOKENS = (PAD_TOKEN, IM_START_TOKEN, EOS_TOKEN)

# ChatML. Content may be a string or a list of OpenAI content parts (only text parts count).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none -%}"
    "{%- set content = '' -%}"
    "{%- else -%}"
    "{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# A few KB of plain English, written for this file, to train the tokenizer on.
CORPUS = """\
The small model lives in a folder with a config file, a tokenizer and a file of weights.
It was made a moment ago, and it will be thrown away when the test is over.
Nobody expects it to say anything useful. It only has to behave like a real model:
it reads a prompt, it writes one token after another, and it stops when it is told to stop.

A server that answers many people at once has to share one machine between them.
Requests arrive at any time. Some are short and some are long. Some people lose patience
and close the connection before the answer is finished, and the server should notice that
quickly and stop working on their behalf. Others ask for a different model, and the server
has to decide which model to keep in memory and which one to unload.

Here is a question: what is the capital of France? The answer is Paris.
Here is another one: how many days are there in a week? There are seven days in a week.
What is two plus two? Two plus two is four. What is ten times ten? It is one hundred.
The numbers 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 10 appear in many sentences, as do 42, 100,
365, 1024, 2048 and 3.14159. A year has 12 months and 52 weeks; a day has 24 hours.

The weather today is mild. In the morning there was fog over the river, but by noon the sun
came out and the streets were full of people walking, talking, eating and laughing.
A child asked her father why the sky is blue. He said that the air scatters blue light more
than red light, so when you look at the sky you see the blue light coming from every side.
She thought about it for a while and then asked why sunsets are red.

Good software is written by people who read it again the next day.
Write small functions. Give them clear names. Test what they do, not how they do it.
When something fails, say what failed and what the person can do about it.
Errors should never pass silently, unless they are explicitly silenced.

def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

{"role": "user", "content": "Hello! Can you help me?"}
{"role": "assistant", "content": "Of course. What do you need?"}
{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}

Once upon a time there was a little house at the edge of a forest. An old woman lived there
with a cat, a dog and a very loud goose. Every morning she opened the window, looked at the
trees and said good morning to the birds. The cat slept, the dog barked, and the goose
complained about everything. One winter night somebody knocked on the door.
"Who is there?" she asked. "A traveller," said a voice, "cold and hungry and lost."
She let him in, gave him soup and bread, and he told stories until the fire burned low.

Lists are useful:
- first, read the question carefully;
- second, think about what is being asked;
- third, answer briefly and clearly;
- finally, check the answer once more.

Thank you! You're welcome. I'm not sure. Let's see. It's fine. Don't worry; we'll fix it.
Yes. No. Maybe. Please wait a second. Sorry, I didn't catch that. Could you say it again?
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump!
"""


@functools.lru_cache(maxsize=8)
def train_tokenizer(vocab_size: int) -> str:
    """Return the tokenizer.json text of a byte-level BPE with exactly ``vocab_size`` ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    # The corpus runs out of merges for large vocabularies: fill up with reserved tokens so that
    # every id the model can produce decodes to something.
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing > 0:
        tokenizer.add_special_tokens(
            [
                AddedToken(f"<|reserved_{i}|>", special=True, normalized=False)
                for i in range(missing)
            ]
        )
    if tokenizer.get_vocab_size() != vocab_size:
        raise AssertionError(f"tokenizer has {tokenizer.get_vocab_size()} ids, not {vocab_size}")
    return tokenizer.to_str()


def write_tokenizer(path: Path, vocab_size: int = 512, max_length: int = 2048) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json (ChatML) and special_tokens_map.json into
    ``path``; return the ids of the special tokens (0, 1, 2)."""
    tokenizer_json = train_tokenizer(vocab_size)
    (path / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    added = json.loads(tokenizer_json)["added_tokens"]
    ids = {t["content"]: t["id"] for t in added}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
        "added_tokens_decoder": {
            str(t["id"]): {
                "content": t["content"],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in added
        },
    }
    write_json(path / "tokenizer_config.json", tokenizer_config)
    write_json(
        path / "special_tokens_map.json",
        {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN},
    )
    return ids


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
