"""HookedGemma: a lean Gemma 2 / Gemma 3 text decoder with TransformerLens hook points."""

from __future__ import annotations

import contextlib
import difflib
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from g2interp.config import AttentionType, ModelConfig
from g2interp.model import hook_points, screen
from g2interp.model.attention import AttentionMasks
from g2interp.model.hook_points import listened
from g2interp.model.kernels import Linear, WeightKey, linear, weight_copy
from g2interp.model.kv_cache import KVCache
from g2interp.model.layers import GemmaBlock, RMSNorm, RotaryEmbedding, embed_scale
from g2interp.tokenizer import GemmaTokenizer

if TYPE_CHECKING:
    from g2interp.model.generation import GenerationOutput
    from g2interp.sae.splice import SAEAt, Splice, SteerSpec

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


class CacheResult(NamedTuple):
    """What ``run_with_cache`` returns (unpacks as ``output, cache``)."""

    output: Tensor | None
    """Logits [B, Q, vocab], or the residual stream [B, Q, M] when the run stopped early."""
    cache: dict[str, Tensor]
    """Activation per requested hook name (detached)."""


class TokenBatch(NamedTuple):
    """Padded token ids and their attention mask (1 = real token, 0 = padding)."""

    tokens: Tensor
    attention_mask: Tensor


class HookedGemma(HookedRootModule):
    """Gemma 2 / Gemma 3 text model whose activations are reachable by TransformerLens hook names."""

    def __init__(self, cfg: ModelConfig, tokenizer: GemmaTokenizer | None = None):
        with warnings.catch_warnings():  # TransformerLens 3 deprecates subclassing; the API we use stays
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = hook_points.HookPoint()  # [B, Q, M]: embedding times sqrt(d_model)
        self.blocks = nn.ModuleList(GemmaBlock(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.d_model, cfg.vocab_size)
        self.rope_global = RotaryEmbedding(cfg.d_head, cfg.rope_theta_global, cfg.rope_scaling_global)
        self.rope_local = RotaryEmbedding(cfg.d_head, cfg.rope_theta_local, cfg.rope_scaling_local)
        self.screen_greedy = True
        """Greedy decoding on the CPU in fp32 takes its argmax through a half-precision screen of the
        unembedding (:mod:`g2interp.model.screen`: the same tokens, 335 MB more memory for Gemma 3
        270M); False computes every logit."""
        self._screen: tuple[WeightKey, screen.ScreenedUnembedding] | None = None
        self.setup()

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def hook_names(self) -> list[str]:
        """Every hook name (module order: blocks.{l} hooks grouped by layer)."""
        return list(self.hook_dict)

    @property
    def W_U(self) -> Tensor:
        """Unembedding [vocab, M] (the embedding matrix when tied)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        *,
        stop_at_layer: int | None = None,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> Float[Tensor, "batch pos d_vocab_or_d_model"]:
        """Logits [B, Q, vocab]; with ``stop_at_layer=n``, the residual stream after blocks 0..n-1.

        ``last_only``: logits of the last column only, [B, 1, vocab] (what decoding needs; the
        blocks and their hooks run on every position as without it).
        """
        tokens = self._check_tokens(tokens)
        _B, Q = tokens.shape
        if attention_mask is not None:
            attention_mask = self._check_mask(attention_mask, tokens)
        n_blocks = self.cfg.n_layers if stop_at_layer is None else self._check_stop(stop_at_layer)
        valid_BQ = (
            torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        if kv_cache is not None:
            kv_cache.reserve(valid_BQ)
            offset = kv_cache.length
            position_ids = kv_cache.positions_B[:, None] + valid_BQ.long().cumsum(-1) - 1
            key_valid = kv_cache.key_valid_BK[:, : offset + Q]
        else:
            offset = 0
            # Positions count real tokens only, so a padded text gets the RoPE phases it has alone.
            position_ids = valid_BQ.long().cumsum(-1) - 1
            key_valid = None if attention_mask is None else valid_BQ
        if offset + Q > self.cfg.max_position_embeddings:
            raise ValueError(
                f"sequence of {offset + Q} tokens exceeds the model's max_position_embeddings "
                f"({self.cfg.max_position_embeddings})"
            )
        position_ids = position_ids.clamp(min=0)
        masks = AttentionMasks(Q, offset + Q, offset, key_valid, tokens.device)
        dtype = self.dtype
        ropes = {
            AttentionType.GLOBAL: self.rope_global(position_ids, dtype),
            AttentionType.SLIDING: self.rope_local(position_ids, dtype),
        }
        # Gemma multiplies embeddings by sqrt(d_model), rounded to the model dtype.
        resid_BQM = self.hook_embed(
            self.embed_tokens(tokens) * embed_scale(self.cfg.d_model, dtype).to(tokens.device)
        )
        for block in self.blocks[:n_blocks]:
            resid_BQM = block(resid_BQM, ropes[self.cfg.layer_types[block.layer]], masks, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(valid_BQ)
        if stop_at_layer is not None:
            return resid_BQM
        return self.unembed(resid_BQM, last_only=last_only)

    def unembed(
        self, resid_BQM: Float[Tensor, "batch pos d_model"], *, last_only: bool = False
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits from the residual stream after the last block: final norm, unembedding, soft-cap.

        ``last_only`` keeps the last column only ([B, 1, vocab]); ``ln_final``'s hooks, when listened
        to, still see every position.
        """
        x_BQM = self._final_norm_last(resid_BQM) if last_only else self.ln_final(resid_BQM)
        logits_BQV = linear(x_BQM, self.W_U)
        if self.cfg.final_logit_softcap is not None:  # Gemma 2 soft-caps the output logits
            cap = self.cfg.final_logit_softcap
            logits_BQV = torch.tanh(logits_BQV / cap) * cap
        return logits_BQV

    def greedy_tokens(self, resid_BQM: Float[Tensor, "batch pos d_model"]) -> Int[Tensor, " batch"]:
        """The last position's most likely next token [B] from the residual stream after the last block.

        The argmax of :meth:`unembed`'s last logits; on the CPU in fp32 (with :attr:`screen_greedy`)
        found through :class:`~g2interp.model.screen.ScreenedUnembedding` without computing them all.
        """
        scr = self.greedy_screen()
        if scr is None:
            return self.unembed(resid_BQM, last_only=True)[:, -1].argmax(dim=-1)
        x_BM = self._final_norm_last(resid_BQM)[:, -1]
        return scr.argmax(x_BM, self.W_U, self.cfg.final_logit_softcap)

    def greedy_screen(self) -> screen.ScreenedUnembedding | None:
        """The screen :meth:`greedy_tokens` uses for the current unembedding (built if needed); None
        where it does not serve (:attr:`screen_greedy` off, not fp32 on the CPU, no FBGEMM)."""
        if not (self.screen_greedy and screen.supported(self.W_U)):
            return None
        return weight_copy(self, "_screen", self.W_U, screen.ScreenedUnembedding)

    @property
    def pack_decode_weights(self) -> bool:
        """Whether products of fewer than 8 rows without gradients (decoding) run on reordered oneDNN
        copies of the blocks' weights (:class:`~g2interp.model.kernels.Linear`; as much memory again
        as the blocks' weights, 400 MB for Gemma 3 270M). True by default."""
        return all(m.pack_few_rows for m in self._linears())

    @pack_decode_weights.setter
    def pack_decode_weights(self, value: bool) -> None:
        for m in self._linears():
            m.pack_few_rows = bool(value)
            m.clear_packed()

    def clear_decode_cache(self) -> None:
        """Drop the decoding copies of the weights: the greedy screen's and the reordered blocks' ones.

        They are rebuilt when next needed, and whenever a weight changes as PyTorch tracks it; this is
        needed only after editing weights through ``.data``, which PyTorch does not track.
        """
        self._screen = None
        for m in self._linears():
            m.clear_packed()

    def _linears(self) -> Iterator[Linear]:
        return (m for m in self.modules() if isinstance(m, Linear))

    def _apply(self, fn, recurse=True):
        self._screen = None  # .to(), .half(), ...: the screen belongs to the old tensor
        return super()._apply(fn, recurse)

    def __getstate__(self):
        return {**self.__dict__, "_screen": None}  # deepcopy / pickle: the screen is rebuilt instead

    def _final_norm_last(self, resid_BQM: Tensor) -> Tensor:
        """``ln_final`` of the last position [B, 1, M]; its hooks, when listened to, see every position."""
        norm = self.ln_final
        if listened(norm.hook_scale) or listened(norm.hook_normalized):
            return norm(resid_BQM)[:, -1:]
        return norm(resid_BQM[:, -1:])  # the norm works per position, so normalising one is exact

    # ------------------------------------------------------------------ caching
    def resolve_hook_names(
        self, names_filter: NamesFilter, extra: Mapping[str, HookPoint] | None = None
    ) -> list[str]:
        """The hook names a filter selects; unknown names raise with the closest valid names.

        ``extra`` adds hook points outside the model (a spliced SAE's ``<hook>.hook_sae_*``).
        """
        valid = self.hook_names + list(extra or {})
        if names_filter is None:
            return valid
        if callable(names_filter):
            return [n for n in valid if names_filter(n)]
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        known = set(valid)
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
                hint = f"closest valid names: {close}" if close else f"valid names look like {valid[:6]}"
                raise KeyError(
                    f"unknown hook name {name!r}; {hint} (model.hook_names lists all {len(self.hook_dict)})"
                )
        return names

    def deepest_layer(self, names: Sequence[str]) -> int | None:
        """Index of the last block a set of hooks needs; None if any hook is past the blocks."""
        deepest = -1
        for name in names:
            match = _BLOCK_HOOK.match(name)
            if match:
                deepest = max(deepest, int(match.group(1)))
            elif name != "hook_embed":
                return None
        return deepest

    def run_with_cache(
        self,
        tokens: Int[Tensor, "batch pos"],
        names_filter: NamesFilter = None,
        *,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        stop_at_layer: int | Literal["auto"] | None = None,
        device: torch.device | str | None = None,
        saes: SAEAt | Sequence[SAEAt] = (),
        use_error_term: bool = False,
    ) -> CacheResult:
        """Run once, keeping the activations of the selected hooks.

        ``stop_at_layer=None`` computes logits (as TransformerLens); an int stops after that many
        blocks; ``"auto"`` stops after the deepest block the selected hooks live in.

        ``saes`` are spliced in for the run (as :meth:`saes`), and their hook points join the names
        ``names_filter`` selects from: ``<hook>.hook_sae_input``, ``.hook_sae_acts_pre``,
        ``.hook_sae_acts_post``, ``.hook_sae_recons``, ``.hook_sae_error`` (with ``use_error_term``)
        and ``.hook_sae_output``, SAELens's names. The cached ``<hook>`` itself is what flows on
        (the SAE's output).
        """
        cache: dict[str, Tensor] = {}

        def save(tensor: Tensor, hook: HookPoint) -> None:
            cache[hook.name] = tensor.detach() if device is None else tensor.detach().to(device)

        with contextlib.ExitStack() as stack:
            spliced = stack.enter_context(self.saes(saes, use_error_term=use_error_term)) if saes else None
            extra = spliced.hook_dict if spliced is not None else {}
            names = self.resolve_hook_names(names_filter, extra)
            if stop_at_layer == "auto":
                deepest = self.deepest_layer(names)
                stop_at_layer = None if deepest is None else deepest + 1
            hooks = [(n, save) for n in names]
            stack.enter_context(torch.no_grad())
            stack.enter_context(spliced.hooks(hooks) if spliced is not None else self.hooks(fwd_hooks=hooks))
            output = self.forward(tokens, attention_mask, stop_at_layer=stop_at_layer)
        return CacheResult(output, cache)

    # ------------------------------------------------------------------ SAEs inside the model
    def saes(
        self,
        saes: SAEAt | Sequence[SAEAt],
        *,
        use_error_term: bool = False,
        positions: Bool[Tensor, "batch pos"] | None = None,
    ) -> contextlib.AbstractContextManager[Splice]:
        """Context manager: inside it, each SAE's reconstruction replaces its hook's activation.

        SAELens's ``HookedSAETransformer.saes``; see :func:`g2interp.sae.splice.splice`. Always
        detaches on exit, also when the block raises.
        """
        from g2interp.sae.splice import splice

        return splice(self, saes, use_error_term=use_error_term, positions=positions)

    def run_with_saes(
        self,
        tokens: Int[Tensor, "batch pos"],
        saes: SAEAt | Sequence[SAEAt],
        *,
        use_error_term: bool = False,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]] = (),
        **kwargs: Any,
    ) -> Float[Tensor, "batch pos d_vocab_or_d_model"]:
        """Logits with the SAEs spliced in (``kwargs`` go to :meth:`forward`).

        ``fwd_hooks`` may name the SAEs' hook points (``<hook>.hook_sae_acts_post``, ...), e.g. to
        edit latents, as SAELens's ``run_with_hooks_with_saes``.
        """
        with self.saes(saes, use_error_term=use_error_term) as spliced, spliced.hooks(fwd_hooks):
            return self(tokens, **kwargs)

    def steer(self, steer: Sequence[SteerSpec]) -> contextlib.AbstractContextManager[None]:
        """Context manager: every forward pass inside it runs with SAE latents steered.

        ``steer``: :class:`~g2interp.sae.splice.Steering` items, ``(sae, latent, value)`` (clamp) or
        ``(sae, latent, (mode, value))`` with mode ``clamp``, ``add`` or ``scale``.
        """
        from g2interp.sae.splice import steered

        return steered(self, steer)

    def _steering_hooks(self, steer: Sequence[SteerSpec] | None) -> list[tuple[str, Any]]:
        if not steer:
            return []
        from g2interp.sae.splice import steering_hooks

        return steering_hooks(self, steer)

    def capture(
        self, tokens: Int[Tensor, "batch pos"], names: Sequence[str], attention_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Activations of ``names`` only, running no further than the deepest block they need."""
        return self.run_with_cache(
            tokens, list(names), attention_mask=attention_mask, stop_at_layer="auto"
        ).cache

    # ------------------------------------------------------------------ tokens
    def _require_tokenizer(self) -> GemmaTokenizer:
        if self.tokenizer is None:
            raise RuntimeError("this model was built without a tokenizer; pass token ids instead of text")
        return self.tokenizer

    def tokenize(
        self,
        texts: str | Sequence[str],
        *,
        prepend_bos: bool = True,
        padding_side: Literal["right", "left"] = "right",
        special_tokens_as_text: bool = False,
        max_length: int | None = None,
    ) -> TokenBatch:
        """Token ids of one or more texts, padded to equal length, with the attention mask."""
        tok = self._require_tokenizer()
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no text given: pass a non-empty string or a non-empty list of strings")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}; texts must be str")
            if not t:
                raise ValueError(f"text {i} is empty; pass non-empty text (or token ids to run BOS alone)")
        ids = tok.encode_batch(texts, prepend_bos=prepend_bos, special_tokens_as_text=special_tokens_as_text)
        limit = max_length or self.cfg.max_position_embeddings
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                raise ValueError(f"text {i} is {len(seq)} tokens long; the limit is {limit} tokens")
        width = max(len(s) for s in ids)
        tokens = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, seq in enumerate(ids):
            span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
            tokens[i, span] = torch.tensor(seq, dtype=torch.long)
            mask[i, span] = 1
        return TokenBatch(tokens.to(self.device), mask.to(self.device))

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool = True) -> Int[Tensor, "batch pos"]:
        """Token ids [B, Q] (right-padded with the pad id for lists of unequal lengths)."""
        return self.tokenize(text, prepend_bos=prepend_bos).tokens

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Text of a 1-D id sequence, or a list of texts for a 2-D batch."""
        tok = self._require_tokenizer()
        if isinstance(tokens, Tensor) and tokens.dim() == 2:
            return [tok.decode(row.tolist()) for row in tokens]
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        return tok.decode(ids)

    def to_str_tokens(self, text_or_tokens: str | Tensor, prepend_bos: bool = True) -> list[str]:
        """One string per token."""
        tok = self._require_tokenizer()
        ids = (
            self.to_tokens(text_or_tokens, prepend_bos)[0]
            if isinstance(text_or_tokens, str)
            else text_or_tokens
        )
        return [tok.decode([i]) for i in ids.reshape(-1).tolist()]

    # ------------------------------------------------------------------ validation
    def _check_tokens(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor):
            raise TypeError(
                f"tokens must be a torch.Tensor of ids, got {type(tokens).__name__} (use model.to_tokens)"
            )
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must hold integer ids (torch.long), got dtype {tokens.dtype}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, pos] or [pos], got shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}); at least one token is needed")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}); got min {lo}, max {hi}")
        return tokens.to(self.device, torch.long)

    def _check_mask(self, attention_mask: Tensor, tokens: Tensor) -> Tensor:
        if attention_mask.shape != tokens.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from tokens shape {tuple(tokens.shape)}"
            )
        return attention_mask.to(self.device)

    def _check_stop(self, stop_at_layer: int) -> int:
        if not isinstance(stop_at_layer, int) or not 0 <= stop_at_layer <= self.cfg.n_layers:
            raise ValueError(
                f"stop_at_layer must be an int in [0, {self.cfg.n_layers}], got {stop_at_layer!r}"
            )
        return stop_at_layer

    # ------------------------------------------------------------------ generation
    def generate(
        self, *args: Any, steer: Sequence[SteerSpec] | None = None, **kwargs: Any
    ) -> GenerationOutput:
        """Sample a continuation with a KV cache; see :func:`g2interp.model.generation.generate`.

        ``steer`` (as :meth:`steer` takes) steers SAE latents at every position, prompt and
        generated tokens alike.
        """
        from g2interp.model.generation import generate

        hooks = [*kwargs.pop("fwd_hooks", ()), *self._steering_hooks(steer)]
        return generate(self, *args, fwd_hooks=hooks, **kwargs)

    def generate_stream(
        self, *args: Any, steer: Sequence[SteerSpec] | None = None, **kwargs: Any
    ) -> Iterator[int]:
        """Decode one prompt token by token, yielding ids; see :func:`g2interp.model.generation.generate_stream`.

        ``steer`` as for :meth:`generate`.
        """
        from g2interp.model.generation import generate_stream

        hooks = [*kwargs.pop("fwd_hooks", ()), *self._steering_hooks(steer)]
        return generate_stream(self, *args, fwd_hooks=hooks, **kwargs)
