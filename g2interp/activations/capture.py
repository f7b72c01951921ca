"""Capture: packed contexts -> one forward pass per batch -> rows per hook -> durable shards.

A capture is resumable and data-parallel. Shard ``i`` always holds the contexts of span ``i`` of
:meth:`PackedContexts.shard_spans` (training contexts first, then the held-out ones, never mixed),
computed in the same batches, so a shard does not depend on which run, rank or restart wrote it. On
start, the shards the manifest (and any rank journals) list are skipped; the rest are split
round-robin over the ranks of a ``torch.distributed`` group (gloo on CPU), each rank writing its own
shards and journal; rank 0 then merges the journals into the one manifest.

:func:`iter_captured_rows` is the one capture loop: the store's shards and the on-the-fly source
(:class:`~g2interp.activations.source.OnTheFlySource`) both run it, so their rows are the same bits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from g2interp.activations.batches import Rows
from g2interp.activations.config import CaptureConfig
from g2interp.activations.corpus import PackedContexts, corpus_files, corpus_fingerprint, prepare_contexts
from g2interp.activations.manifest import (
    CONTEXTS_FILE,
    MANIFEST_FILE,
    HookInfo,
    Manifest,
    ShardCorruptError,
    ShardMissingError,
    ShardRecord,
    StoreError,
    StoreMismatchError,
    durable_write,
    identity_differences,
    journal_bytes,
    journal_records,
    rank_journal_name,
    remove_temp_files,
    sha256_bytes,
)
from g2interp.activations.writer import PendingShard, ShardWriter, WriteFile
from g2interp.distributed import DataParallel, RankFailedError
from g2interp.model.gemma import HookedGemma

logger = logging.getLogger(__name__)
_FP16_MAX = 65504.0


class CaptureResult(NamedTuple):
    """What one call of :func:`capture` did, on this rank."""

    path: Path
    """The store folder."""
    manifest: Manifest
    """The store's manifest after the run."""
    shards_written: int
    """Shards this rank wrote in this run (0 when the store was already complete)."""
    rows_written: int
    """Activation rows (per hook) in those shards."""
    tokens_processed: int
    """Tokens this rank ran through the model."""
    bytes_written: int
    """Bytes of shard files this rank wrote."""
    seconds: float
    """Wall time of the call."""
    loop_seconds: float
    """Wall time from the first forward pass until the last shard was durable (set-up excluded)."""


# ---------------------------------------------------------------------------------------------- compute
def iter_captured_rows(
    model: HookedGemma,
    contexts: PackedContexts,
    hooks: Sequence[str],
    *,
    start: int = 0,
    end: int | None = None,
    batch_contexts: int = 8,
    exclude: Sequence[str] = ("bos", "eos", "pad"),
) -> Iterator[Rows]:
    """Run contexts ``start:end`` in batches, one forward each (stopping at the deepest hook's block); per
    batch, the kept rows (activations flattened per token, in the model's dtype and device; token id,
    context and position of each row as int32 on the CPU)."""
    end = len(contexts) if end is None else end
    device = model.device
    position_Q = torch.arange(contexts.context_length, dtype=torch.int32)
    for s in range(start, end, batch_contexts):
        e = min(s + batch_contexts, end)
        tokens_BQ = contexts.tokens_NL[s:e]
        mask_BQ = contexts.attention_mask(s, e)
        cache = model.capture(
            tokens_BQ.to(device, torch.long), list(hooks), None if mask_BQ is None else mask_BQ.to(device)
        )
        keep_BQ = contexts.keep_mask(s, e, exclude)
        keep_dev_BQ = keep_BQ.to(device)
        B, Q = tokens_BQ.shape
        acts = {h: cache[h].reshape(B, Q, -1)[keep_dev_BQ] for h in hooks}
        context_BQ = torch.arange(s, e, dtype=torch.int32)[:, None].expand(B, Q)
        yield Rows(acts, tokens_BQ[keep_BQ], context_BQ[keep_BQ], position_Q[None].expand(B, Q)[keep_BQ])


def hook_shapes(model: HookedGemma, hooks: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Per-token shape at each hook, from a 7-token dry run; hooks not shaped [batch, pos, ...] are refused."""
    probe = torch.full((1, 7), model.cfg.bos_token_id, dtype=torch.long, device=model.device)
    cache = model.capture(probe, list(hooks))
    shapes = {}
    for h in hooks:
        shape = tuple(cache[h].shape)
        if shape[:2] != (1, 7):
            raise ValueError(
                f"hook {h!r} has shape {list(shape)} for 1 x 7 tokens, not [batch, pos, ...]: only per-token "
                f"hooks (resid, attn.hook_z, mlp_out, ...) can be stored"
            )
        shapes[h] = shape[2:] or (1,)
    return shapes


def model_fingerprint(model: HookedGemma) -> str:
    """sha256 of the config, every parameter's name/shape/dtype and a strided sample of its values, and the tokenizer."""
    # numbers as floats: a config read from JSON may hold 16.0 where one built in code holds 16
    config = {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in model.cfg.to_dict().items()
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].float().cpu().contiguous()
            digest.update(f"{name}:{list(p.shape)}:{p.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    if model.tokenizer is not None:
        digest.update(model.tokenizer.backend.to_str().encode())
    return digest.hexdigest()


def compute_shard(
    model: HookedGemma,
    contexts: PackedContexts,
    hooks: Sequence[str],
    index: int,
    cfg: CaptureConfig,
    on_tokens: Callable[[int], None] = lambda n_tokens: None,
) -> PendingShard:
    """Rows of shard ``index`` for every hook, cast to the storage dtype, with their squared-norm sums."""
    start, end = contexts.shard_spans(cfg.contexts_per_shard)[index]
    dtype = cfg.torch_dtype
    parts: list[Rows] = []
    squares: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for rows in iter_captured_rows(
        model, contexts, hooks, start=start, end=end, batch_contexts=cfg.batch_contexts, exclude=cfg.exclude
    ):
        for h, act_RD in rows.activations.items():
            if dtype == torch.float16 and act_RD.numel() and float(act_RD.abs().max()) > _FP16_MAX:
                raise ValueError(
                    f"activations of {h} reach {float(act_RD.abs().max()):.3g}, past float16's range "
                    f"({_FP16_MAX:g}); store them as bfloat16 or float32"
                )
            squares[h].append(act_RD.double().pow(2).sum(-1).cpu())
        parts.append(rows._replace(activations={h: a.to(dtype).cpu() for h, a in rows.activations.items()}))
    on_tokens(int(contexts.lengths_N[start:end].sum()))  # the shard's real tokens, all through the model
    # fsum: exactly rounded, so the statistic does not depend on batching or thread counts
    norms = {h: math.fsum(torch.cat(squares[h]).tolist()) for h in hooks}
    return PendingShard(index, start, end, Rows.cat(parts), norms)


# ---------------------------------------------------------------------------------------------- store set-up
def _wanted_identity(model: HookedGemma, cfg: CaptureConfig) -> dict:
    identity = cfg.store_identity()
    identity["model_fingerprint"] = model_fingerprint(model)
    identity["corpus_fingerprint"] = corpus_fingerprint(cfg.data, cfg.text_field)
    return json.loads(json.dumps(identity))  # as it reads back from JSON


def _check_leftovers(root: Path, hooks: Sequence[str]) -> None:
    """A folder without a manifest may only hold what a capture killed before its first manifest leaves."""
    ours = {CONTEXTS_FILE, *hooks}
    foreign = sorted(p.name for p in root.iterdir() if p.name not in ours and not p.name.endswith(".tmp"))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise StoreMismatchError(
            f"{root} is not empty and holds no activation store manifest (it holds {shown}); "
            f"capture into a new or empty folder"
        )


def _intact(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _resume(
    root: Path, model: HookedGemma, cfg: CaptureConfig, wanted: dict, write_file: WriteFile
) -> Manifest:
    manifest = Manifest.read(root / MANIFEST_FILE)
    differences = identity_differences(manifest.identity, wanted)
    if differences:
        if any(d.startswith("model_fingerprint") for d in differences):
            differences.append(
                f"(model source: store {manifest.model.get('source')!r}, this run {cfg.model!r})"
            )
        raise StoreMismatchError(
            f"{root} holds an activation store captured with other settings; refusing to mix them:\n  "
            + "\n  ".join(differences)
            + "\nRun with the store's settings to resume it, or capture into another folder."
        )
    path = root / CONTEXTS_FILE
    if not path.is_file() or sha256_bytes(path.read_bytes()) != manifest.corpus["contexts_sha256"]:
        logger.warning("%s is missing or damaged; packing the corpus again", path)
        data = prepare_contexts(model.tokenizer, cfg).to_bytes()
        if sha256_bytes(data) != manifest.corpus["contexts_sha256"]:
            raise StoreError(
                f"re-packing the corpus does not reproduce {path} (was the tokenizer library changed?)"
            )
        write_file(path, data)
    records, journals = journal_records(root)
    present = []
    for record in [*manifest.shards, *records]:
        lost = [f.path for f in record.files.values() if not _intact(root / f.path, f.size)]
        if lost:
            logger.warning(
                "shard %d is listed but %s is missing or truncated: capturing it again", record.index, lost
            )
        else:
            present.append(record)
    merged = replace(manifest, shards=()).with_shards(present)
    write_file(root / MANIFEST_FILE, merged.to_bytes())
    for journal in journals:
        journal.unlink()
    logger.info("resuming %s: %d of %d shards already durable", root, len(merged.shards), merged.n_shards)
    return merged


def _create(
    root: Path,
    model: HookedGemma,
    cfg: CaptureConfig,
    shapes: dict[str, tuple[int, ...]],
    wanted: dict,
    write_file: WriteFile,
) -> Manifest:
    hooks = list(shapes)
    # packed before anything is written: an empty corpus leaves no trace
    contexts = prepare_contexts(model.tokenizer, cfg)
    data = contexts.to_bytes()
    root.mkdir(parents=True, exist_ok=True)
    write_file(root / CONTEXTS_FILE, data)
    n_shards = len(contexts.shard_spans(cfg.contexts_per_shard))
    base = Path(cfg.data).expanduser()
    manifest = Manifest(
        identity=wanted,
        model={
            "source": cfg.model,
            "fingerprint": wanted["model_fingerprint"],
            "architecture": model.cfg.architecture,
            "n_layers": model.cfg.n_layers,
            "d_model": model.cfg.d_model,
        },
        corpus={
            "source": cfg.data,
            "fingerprint": wanted["corpus_fingerprint"],
            "files": [
                p.name if base.is_file() else p.relative_to(base).as_posix() for p in corpus_files(base)
            ],
            "n_documents": contexts.n_documents,
            "n_tokens": contexts.n_tokens,
            "contexts_file": CONTEXTS_FILE,
            "contexts_sha256": sha256_bytes(data),
        },
        hooks={h: HookInfo(folder=h, shape=shapes[h]) for h in hooks},
        context_length=cfg.context_length,
        dtype=cfg.dtype,
        n_contexts=len(contexts),
        n_shards=n_shards,
        n_eval=contexts.n_eval,
    ).with_shards([])
    write_file(root / MANIFEST_FILE, manifest.to_bytes())
    logger.info(
        "created store %s: %d contexts (%d held out) in %d shards, hooks %s",
        root,
        len(contexts),
        contexts.n_eval,
        n_shards,
        list(hooks),
    )
    return manifest


def open_or_create_store(
    model: HookedGemma, cfg: CaptureConfig, write_file: WriteFile = durable_write
) -> Manifest:
    """Validate the request and the output folder; return the manifest, resumed or new (contexts packed)."""
    shapes = check_request(model, cfg)
    hooks = list(shapes)
    root = Path(cfg.out)
    wanted = _wanted_identity(model, cfg)
    if (root / MANIFEST_FILE).is_file():
        manifest = _resume(root, model, cfg, wanted, write_file)
    else:
        if root.exists():
            if not root.is_dir():
                raise StoreMismatchError(f"output {root} exists and is not a folder")
            _check_leftovers(root, hooks)
        manifest = _create(root, model, cfg, shapes, wanted, write_file)
    removed = remove_temp_files(root)
    if removed:
        logger.info("removed %d temp files a previous run left in %s", removed, root)
    return manifest


def _finalise(root: Path, write_file: WriteFile) -> Manifest:
    """Merge the rank journals into the manifest (rank 0, once every rank is done)."""
    manifest = Manifest.read(root / MANIFEST_FILE)
    records, journals = journal_records(root)
    if journals:
        manifest = manifest.with_shards(records)
        write_file(root / MANIFEST_FILE, manifest.to_bytes())
        for journal in journals:
            journal.unlink()
    return manifest


def read_contexts(root: Path, manifest: Manifest) -> PackedContexts:
    """The store's packed contexts, checked against the manifest's checksum."""
    path = Path(root) / CONTEXTS_FILE
    if not path.is_file():
        raise ShardMissingError(f"{path} is missing (the store's packed contexts)")
    data = path.read_bytes()
    if sha256_bytes(data) != manifest.corpus["contexts_sha256"]:
        raise ShardCorruptError(f"{path} does not match the checksum in the manifest")
    return PackedContexts.from_bytes(data)


# ---------------------------------------------------------------------------------------------- capture
def check_request(model: HookedGemma, cfg: CaptureConfig) -> dict[str, tuple[int, ...]]:
    """Per-token shape of each requested hook; unknown or non-per-token hooks and bad lengths raise."""
    hooks = model.resolve_hook_names(list(cfg.hooks))  # KeyError naming close hook names
    bad = [h for h in hooks if "/" in h or h.startswith(".")]
    if bad:
        raise ValueError(f"hook names {bad} cannot be folder names")
    limit = model.cfg.max_position_embeddings
    if cfg.context_length > limit:
        raise ValueError(
            f"context_length {cfg.context_length} exceeds the model's max_position_embeddings ({limit})"
        )
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; capture needs one to pack the corpus")
    return hook_shapes(model, hooks)


def capture(
    model: HookedGemma, cfg: CaptureConfig, *, write_file: WriteFile = durable_write
) -> CaptureResult:
    """Capture ``cfg.hooks`` over the corpus into the store at ``cfg.out`` (creating or resuming it).

    Under an initialised ``torch.distributed`` group every rank calls this with the same arguments;
    each captures a disjoint share of the missing shards. ``write_file`` writes one file durably
    (replace it to simulate disk faults).
    """
    started = time.perf_counter()
    ranks = DataParallel.current()
    hooks = list(check_request(model, cfg))  # on every rank, so that none waits on a refused request
    root = Path(cfg.out)
    manifest = ranks.on_main(lambda: open_or_create_store(model, cfg, write_file))
    contexts = read_contexts(root, manifest)
    todo = manifest.missing_shards()[ranks.rank :: ranks.world_size]

    mine: list[ShardRecord] = []

    def on_durable(record: ShardRecord) -> None:  # in a group, each rank journals its shards for rank 0
        nonlocal manifest
        if ranks.world_size == 1:
            manifest = manifest.with_shards([record])
            write_file(root / MANIFEST_FILE, manifest.to_bytes())
        else:
            mine.append(record)
            write_file(root / rank_journal_name(ranks.rank), journal_bytes(mine))

    spans = contexts.shard_spans(cfg.contexts_per_shard)
    per_shard = [int(contexts.lengths_N[spans[i][0] : spans[i][1]].sum()) for i in todo]
    bar = tqdm(
        total=sum(per_shard),
        unit="tok",
        unit_scale=True,
        desc=f"capture {root.name}"
        + (f" (rank 0's share of {ranks.world_size})" if ranks.world_size > 1 else ""),
        disable=not cfg.progress or ranks.rank != 0,
        dynamic_ncols=True,
    )
    tokens_done = 0

    def on_tokens(n_tokens: int) -> None:
        nonlocal tokens_done
        tokens_done += n_tokens
        bar.update(n_tokens)

    writer = ShardWriter(
        root,
        {h: manifest.hooks[h].folder for h in hooks},
        on_durable,
        queue_size=cfg.queue_size,
        write_file=write_file,
    )
    error: BaseException | None = None
    loop_started = time.perf_counter()
    try:
        for index in todo:
            writer.submit(compute_shard(model, contexts, hooks, index, cfg, on_tokens))
    except BaseException as exc:  # the shards already queued are complete: let the writer finish them
        error = exc
    finally:
        bar.close()
        try:
            writer.close()
        except StoreError as exc:
            error = error or exc
    loop_seconds = time.perf_counter() - loop_started
    try:
        ranks.raise_if_any_failed(error)
    except RankFailedError as exc:
        raise StoreError(f"capture failed on {exc}") from None
    final = ranks.on_main(lambda: _finalise(root, write_file))
    seconds = time.perf_counter() - started
    rows = sum(r.rows for r in writer.records)
    logger.info(
        "rank %d: %d shards, %d rows, %.1f MB in %.1f s (%.0f tokens/s); store %s is %s",
        ranks.rank,
        len(writer.records),
        rows,
        writer.bytes_written / 1e6,
        seconds,
        tokens_done / max(loop_seconds, 1e-9),
        root,
        "complete" if final.complete else "incomplete",
    )
    return CaptureResult(
        root, final, len(writer.records), rows, tokens_done, writer.bytes_written, seconds, loop_seconds
    )
