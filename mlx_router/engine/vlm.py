"""The mlx-vlm adapter: a vision model in its worker process, batched like a text model.

Runs only inside a worker process. A vision model is served by the same loop, the same
:class:`~mlx_router.engine.batch.BatchScheduler` contract (admit, step, cancel) and the same
per-sequence text handling as a text model; what differs is below.

* Loading and prompts come from mlx-vlm: its processor expands each image placeholder of the
  model's chat template into the image's tokens, and the model's ``get_input_embeddings`` runs
  the vision tower at admission. Prompt tokens therefore include the image tokens.
* Batching is mlx-vlm's ``BatchGenerator`` (chunked prefill interleaved with decoding, rows
  added and removed at any step), which takes one sampler for the whole batch. Each sequence
  brings its own sampling instead, as its last logits processor (which mlx-vlm applies per row):
  it samples with the sequence's private random key and hands the batch a one-hot row, so the
  batch's greedy pick is that sample. Temperature, top-p/k, min-p, seed, penalties and
  logit_bias thus mean exactly what they mean for text models, whatever runs beside them; an
  output constraint (tool_choice, response_format) is a processor before it, as for text.
* There is no prefix cache: a prompt's KV depends on its images, not only on its token ids.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import mlx.core as mx
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_vlm.generate import BatchGenerator
from mlx_vlm.prompt_utils import apply_chat_template, get_chat_template
from mlx_vlm.utils import load as mlx_vlm_load
from mlx_vlm.utils import load_config, prepare_inputs, should_add_special_tokens
from PIL import Image

from mlx_router.engine.batch import BatchScheduler, _Sequence, canonical_request
from mlx_router.engine.lm import (
    DEFAULT_CONTEXT_LENGTH,
    LMEngine,
    RequestRejected,
    _byte_decoder_for,
    _config_context_length,
    _weight_bytes,
    greedy,
    logits_processors,
    make_sampler,
)
from mlx_router.engine.types import (
    Admission,
    BatchOptions,
    GenerationChunk,
    GenerationParams,
    GenerationRequest,
    LoadInfo,
)
from mlx_router.errors import redact_paths
from mlx_router.text.reasoning import detect_reasoning_format
from mlx_router.text.tools import detect_tool_format, template_renders_tools

__all__ = ["SequencePicker", "VLMEngine", "VisionScheduler"]

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass
class VLMEngine(LMEngine):
    """A loaded mlx-vlm model with its processor; token and text handling as for text models."""

    processor: Any = None
    model_type: str = ""
    _inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Processor outputs of the request being admitted (pixel values next to its token ids)."""

    @classmethod
    def load_vision(cls, model_path: str, *, context_length: int | None) -> VLMEngine:
        """Load weights, processor and tokenizer; measure what it costs."""
        started = time.perf_counter()
        processor: Any  # a transformers processor, to which mlx-vlm attaches a detokenizer
        model, processor = mlx_vlm_load(model_path)
        mx.eval(model.parameters())
        active = int(mx.get_active_memory())
        config = load_config(model_path)
        hf_tokenizer = getattr(processor, "tokenizer", processor)
        criteria = getattr(hf_tokenizer, "stopping_criteria", None)
        eos = frozenset(int(t) for t in getattr(criteria, "eos_token_ids", None) or ())
        if not eos and hf_tokenizer.eos_token_id is not None:
            eos = frozenset({int(hf_tokenizer.eos_token_id)})
        # mlx-lm's wrapper gives the text side what it expects of a tokenizer (a fresh streaming
        # detokenizer per sequence); the detokenizer is the one mlx-vlm chose for this model.
        detokenizer = processor.detokenizer
        tokenizer = TokenizerWrapper(hf_tokenizer, detokenizer_class=lambda _tok: detokenizer, eos_token_ids=eos)
        limit = context_length or _config_context_length(config) or DEFAULT_CONTEXT_LENGTH
        template = _processor_template(processor) or getattr(hf_tokenizer, "chat_template", None)
        source = template if isinstance(template, str) else None
        info = LoadInfo(
            load_seconds=time.perf_counter() - started,
            weight_bytes=active or _weight_bytes(model_path),
            context_length=limit,
            eos_token_ids=tuple(sorted(eos)),
            has_chat_template=bool(template),
            backend="gpu" if mx.default_device() == mx.gpu else "cpu",
        )
        return cls(
            model=model,
            tokenizer=tokenizer,
            context_length=limit,
            eos_token_ids=eos,
            chat_template=None,
            load_info=info,
            _byte_decoder=_byte_decoder_for(tokenizer),
            reasoning_format=detect_reasoning_format(source),
            tool_format=detect_tool_format(source),
            renders_tools=template_renders_tools(source),
            processor=processor,
            model_type=str(config.get("model_type", "")),
        )

    @property
    def vocab_size(self) -> int:
        args = getattr(getattr(self.model, "language_model", None), "args", None)
        text_config = getattr(getattr(self.model, "config", None), "text_config", None)
        return int(getattr(args, "vocab_size", 0) or getattr(text_config, "vocab_size", 0) or 2**31)

    @property
    def vocab_size_for_grammar(self) -> int:
        return self.vocab_size

    def render(self, request: GenerationRequest) -> str:
        """The prompt text: mlx-vlm lays out each message's content parts the way this model
        family expects (image markers in place), then the model's own chat template renders it,
        with the same defaults (thinking switch, tools) as for a text model."""
        messages, kwargs = self.template_input(request)
        formatted = cast(  # with return_messages, the messages laid out for this model family
            "list[dict[str, Any]]",
            apply_chat_template(
                self.processor, self.model.config, messages, return_messages=True, num_images=len(request.images)
            ),
        )
        template = _processor_template(self.processor)
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            return str(get_chat_template(self.processor, formatted, True))  # mlx-vlm's plain layout
        if template is not None:
            kwargs = {**kwargs, "chat_template": template}
        return str(self.tokenizer.apply_chat_template(formatted, tokenize=False, add_generation_prompt=True, **kwargs))

    def encode(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids (image tokens included); the processor's other outputs (pixel
        values, image grids) are kept for :meth:`prepare`."""
        if request.messages is None:
            return super().encode(request)
        images = [_open_png(png) for png in request.images]
        try:
            prompt = self.render(request)
        except Exception as exc:  # noqa: BLE001  # jinja and the formatters raise errors of many types
            raise RequestRejected(
                "invalid_request", redact_paths(f"the chat template rejected the messages: {exc}")
            ) from None
        try:
            inputs = prepare_inputs(
                self.processor,
                images=images or None,
                prompts=prompt,
                image_token_index=getattr(self.model.config, "image_token_index", None),
                add_special_tokens=should_add_special_tokens(self.model_type, self.processor),
            )
        except Exception as exc:  # noqa: BLE001  # the processors raise ValueError, TypeError, IndexError...
            raise RequestRejected(
                "invalid_request", redact_paths(f"the model's processor rejected the input: {exc}")
            ) from None
        self._inputs[request.request_id] = inputs
        return [int(t) for t in inputs["input_ids"][0].tolist()]

    def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens, image tokens included; the processor's outputs are not kept."""
        try:
            return len(self.encode(request))
        finally:
            self._inputs.pop(request.request_id, None)

    def prepare(self, request: GenerationRequest) -> tuple[list[int], int, dict[str, Any]]:
        """Prompt ids, max_tokens bounded by the context, and what the batch needs to prefill
        them: the prompt's embeddings with the image features in place, and its positions."""
        try:
            prompt_ids, max_tokens = self.admit(request)
            inputs = self._inputs.get(request.request_id) or {"input_ids": mx.array([prompt_ids])}
        finally:
            self._inputs.pop(request.request_id, None)
        input_ids = inputs["input_ids"]
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
        try:
            embedded = self.model.get_input_embeddings(
                input_ids, inputs.get("pixel_values"), mask=inputs.get("attention_mask"), **extra
            )
            features = {**extra, **{k: v for k, v in embedded.to_dict().items() if v is not None}}
            mx.eval(features["inputs_embeds"])  # the vision tower's errors belong to this request
        except ValueError as exc:  # e.g. image placeholders and images that do not match
            raise RequestRejected("invalid_request", redact_paths(f"the model could not read the images: {exc}")) from None
        return prompt_ids, max_tokens, features


class SequencePicker:
    """The last logits processor of one sequence: picks its next token with its own sampler and
    remembers the log-probabilities it picked from (for ``logprobs``).

    mlx-vlm calls it once per generated token, in order, before the token appears in a step's
    responses (the batch decodes one step ahead), so the remembered vectors are consumed first
    in, first out."""

    def __init__(self, params: GenerationParams, record: bool) -> None:
        self.sampler = make_sampler(params)
        self.record = record
        self.vectors: deque[mx.array] = deque()

    @property
    def needed(self) -> bool:
        """Whether it does anything the batch's greedy pick does not already do."""
        return self.record or self.sampler is not greedy

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if self.record:
            self.vectors.append(logprobs[0])
        if self.sampler is greedy:
            return logits
        token = self.sampler(logprobs)
        return mx.where(mx.arange(logits.shape[-1]) == token[:, None], 0.0, -mx.inf)

    def vector(self) -> mx.array | None:
        return self.vectors.popleft() if self.vectors else None


class VisionScheduler(BatchScheduler):
    """:class:`BatchScheduler` over mlx-vlm's ``BatchGenerator``: the same admission contract,
    steps, stop strings, logprobs and cancellation; no prefix cache."""

    engine: VLMEngine

    def __init__(self, engine: VLMEngine, options: BatchOptions) -> None:
        self._pickers: dict[int, SequencePicker] = {}
        super().__init__(engine, replace(options, prefix_cache_bytes=0))

    @property
    def _batch(self) -> BatchGenerator:
        """The batch, made by :meth:`_new_generator` (the base class types it as mlx-lm's)."""
        return cast(BatchGenerator, self._generator)

    def _new_generator(self) -> Any:
        return BatchGenerator(
            self.engine.model.language_model,
            self.engine.processor,
            stop_tokens=sorted(self.engine.eos_token_ids),  # type: ignore[arg-type]  # mlx-vlm says set; takes ids
            completion_batch_size=self.options.max_batch_size,
            prefill_batch_size=self.options.prefill_batch_size,
            prefill_step_size=self.options.prefill_step_size,
            compute_logprobs=False,
        )

    def add(self, request: GenerationRequest) -> Admission:
        """Tokenize (images expanded), embed, bound by the context and queue the sequence."""
        request = canonical_request(request)
        prompt_ids, max_tokens, features = self.engine.prepare(request)
        processors: list[LogitsProcessor] = list(logits_processors(request.params))
        constraint = self.engine.constraint_processor(request)
        if constraint is not None:
            processors.append(constraint)  # before the picker: it samples from the masked logits
        picker = SequencePicker(request.params, record=request.params.logprobs)
        if picker.needed:
            processors.append(picker)
        (uid,) = self._batch.insert(
            [prompt_ids], max_tokens=[max_tokens], prompt_kwargs=[features], logits_processors=[processors or None]
        )
        self._sequences[uid] = _Sequence(request, self.engine, prompt_ids, max_tokens)
        self._uids[request.request_id] = uid
        self._pickers[uid] = picker
        return Admission(
            request_id=request.request_id,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            reasoning_open=self.engine.reasoning_open(prompt_ids),
            reasoning_format=self.engine.reasoning_format,
            tool_format=self.engine.output_tool_format(request),
        )

    def cancel(self, request_id: str) -> int | None:
        uid = self._uids.pop(request_id, None)
        if uid is None:
            return None
        sequence = self._sequences.pop(uid, None)
        self._pickers.pop(uid, None)
        self._batch.remove(uid)
        return sequence.completion_tokens if sequence is not None else None

    def step(self) -> list[GenerationChunk]:
        """One decode step for every decoding sequence, or one prefill chunk for new ones."""
        # mlx-vlm admits waiting prompts only once prefill_batch_size rows of the batch are free:
        # with a nearly full batch a new request would wait for several others to finish. Ask
        # for no more rows than are free, so it starts as soon as one is.
        decoding = len(self._sequences) - len(self._batch.unprocessed_prompts)
        free = self.options.max_batch_size - decoding
        self._batch.prefill_batch_size = max(1, min(self.options.prefill_batch_size, free))
        _prompt_progress, responses = self._batch.next()
        chunks: list[GenerationChunk] = []
        for response in responses:
            sequence = self._sequences.get(response.uid)
            picker = self._pickers.get(response.uid)
            if sequence is None or picker is None:
                continue
            # no vector only when the sequence asked for no logprobs, and then consume reads none
            vector = cast(mx.array, picker.vector())
            chunk = sequence.consume(int(response.token), vector, response.finish_reason)
            chunks.append(chunk)
            if chunk.finish_reason is None:
                continue
            self._finish(response.uid, sequence)
            self._pickers.pop(response.uid, None)
            if response.finish_reason is None:  # a stop string ended it: the batch still holds it
                self._batch.remove(response.uid)
        return chunks

    def fail_all(self) -> list[str]:
        self._pickers.clear()
        return super().fail_all()


def _processor_template(processor: Any) -> str | None:
    """The processor's own chat template (vision checkpoints often keep it there, not in the
    tokenizer's config)."""
    template = getattr(processor, "chat_template", None)
    return template if isinstance(template, str) and template else None


def _open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")
