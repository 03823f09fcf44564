"""``trilens.load``: any HF checkpoint of the three families, an HF model object, a bridge, or the zoo."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .adapters import build_bridge
from .architectures import Architecture, resolve, supported_summary
from .devices import as_device, as_dtype
from .errors import ModelLoadError, UnsupportedArchitectureError
from .model import Model
from .placement import check_device_map, placement_refused

LANGUAGE_MAP_FILE = "languages.json"  # token -> language, read into Model.language_map

log = logging.getLogger(__name__)


def _architecture(hf_class: str | None, config: Any) -> Architecture:
    arch = resolve(hf_class, bool(getattr(config, "is_encoder_decoder", False))) if hf_class else None
    if arch is None:
        raise UnsupportedArchitectureError(
            f"trilens cannot wrap architecture {hf_class!r} (model type {getattr(config, 'model_type', '?')!r}).\n"
            f"Supported families:\n{supported_summary()}"
        )
    return arch


def _import_class(name: str) -> Any:
    import transformers

    try:
        return getattr(transformers, name)
    except AttributeError as err:
        raise UnsupportedArchitectureError(f"transformers {transformers.__version__} has no class {name!r}.") from err


def _wrap_headless(model: torch.nn.Module, arch: Architecture) -> torch.nn.Module:
    """Put a headless encoder (``BertModel``) inside its MLM class so the bridge can wrap it."""
    cls = _import_class(arch.wrap_as)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the added head is untrained; keep it the same on every load
        wrapped = cls(model.config)
    base = getattr(wrapped, wrapped.base_model_prefix)
    missing, _ = base.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise ModelLoadError(f"could not place the {arch.hf_class} weights in {arch.wrap_as}: missing {missing[:5]}")
    wrapped.tie_weights()
    return wrapped.to(dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)


def _quiet_progress():
    """Silence transformers' own loading progress bars while trilens loads (library code stays quiet)."""
    from contextlib import contextmanager

    from transformers.utils import logging as hf_logging

    @contextmanager
    def ctx():
        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if was:
                hf_logging.enable_progress_bar()

    return ctx()


def _from_directory(path: Path, dtype: torch.dtype | None, trust_remote_code: bool, hf_kwargs: dict) -> tuple[Any, Any, Architecture]:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} does not hold a readable HF config.json: {err}") from err
    hf_class = (config.architectures or [None])[0]
    arch = _architecture(hf_class, config)
    cls = _import_class(arch.hf_class)
    try:
        with warnings.catch_warnings(), _quiet_progress():
            warnings.simplefilter("ignore")
            hf = cls.from_pretrained(path, attn_implementation="eager", dtype=dtype, trust_remote_code=trust_remote_code, **hf_kwargs)
    except (IndexError, KeyError, ValueError) as err:
        if hf_kwargs.get("device_map") is None:
            raise ModelLoadError(f"could not load the weights in {path}: {err}") from err
        raise ModelLoadError(placement_refused(cls, config, err)) from err  # accelerate's planner or the map itself
    except (OSError, RuntimeError) as err:
        raise ModelLoadError(f"could not load the weights in {path}: {err}") from err
    try:
        tokenizer = _load_tokenizer(path, AutoTokenizer)
    except (OSError, ValueError, TypeError):
        log.warning("no tokenizer in %s: this model will take token ids only", path)
        tokenizer = None
    return hf, tokenizer, arch


def _load_tokenizer(path: Path, auto: Any) -> Any:
    # transformers 5 picks the tokenizer class from the model type (Qwen2 -> Qwen2Tokenizer) even
    # when the folder holds a generic tokenizers-library tokenizer; honour what was saved.
    import json

    from transformers import PreTrainedTokenizerFast

    cfg_file = path / "tokenizer_config.json"
    saved = json.loads(cfg_file.read_text()).get("tokenizer_class") if cfg_file.exists() else None
    if saved in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(path)
    return auto.from_pretrained(path)


def _from_hub(source: str, **kw: Any) -> tuple[Any, Any, Architecture]:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        local = snapshot_download(source, local_files_only=offline, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.bin"] )
    except Exception as err:  # hub errors come in many types; all mean the same to the user
        raise ModelLoadError(
            f"{source!r} is not a local directory, and it could not be fetched from the model hub"
            + (" because HF_HUB_OFFLINE is set" if offline else " (offline, or no such model)")
            + ". Pass the path of a directory holding config.json and the weights, or 'zoo:NAME' for a bundled model."
        ) from err
    return _from_directory(Path(local), **kw)


def _prepare_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is not None and tokenizer.pad_token_id is None:
        # Decoder-only tokenizers (GPT-2) have no pad token; padding is masked anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load(
    source: Any,
    *,
    tokenizer: Any = None,
    device: Any = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    **hf_kwargs: Any,
) -> Model:
    """Load a model of any of the three families as a ``trilens.Model``.

    Args:
        source: a local HF directory, a hub id (only where the hub is reachable), an HF
            ``PreTrainedModel`` (pass ``tokenizer=``), an existing ``TransformerBridge``, or ``"zoo:NAME"``.
        tokenizer: a tokenizer to use instead of the one saved with the model.
        device: where to put the model (``"cpu"``, ``"cuda"``...); checked to exist.
        dtype: the weights' dtype (``"float32"``, ``"bfloat16"``...).
        trust_remote_code: allow custom modelling code from the checkpoint (off by default).
        hf_kwargs: passed to ``from_pretrained``; among them accelerate's big-model placement: ``device_map="auto"``
            or a dict module -> device, ``max_memory={0: "20GiB", "cpu": "60GiB"}`` and ``offload_folder=`` for the
            layers that fit nowhere (``Model.placement()`` says where each part went). Offloaded layers run with
            every analysis, exactly as the model loaded whole; a headless encoder (``BertModel``) cannot be placed.
    """
    from transformer_lens.model_bridge import TransformerBridge

    torch_dtype = as_dtype(dtype)
    torch_device = as_device(device)
    check_device_map(hf_kwargs.get("device_map"), torch_device)
    folder: Path | None = None
    kw = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, hf_kwargs=hf_kwargs)

    if isinstance(source, TransformerBridge):
        hf = source.original_model
        arch = _architecture(type(hf).__name__, hf.config)
        model = Model(source, _prepare_tokenizer(tokenizer or source.tokenizer), arch.family, getattr(source.cfg, "model_name", type(hf).__name__))
        return model.to(torch_device) if torch_device else model
    if isinstance(source, torch.nn.Module):
        hf, tok, arch = source, tokenizer, _architecture(type(source).__name__, getattr(source, "config", None))
        name = getattr(source.config, "name_or_path", "") or type(source).__name__
        if torch_dtype is not None:
            hf = hf.to(torch_dtype)
    elif isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.startswith("zoo:"):
            from .zoo import zoo_path

            folder = zoo_path(text[4:])
            hf, tok, arch = _from_directory(folder, **kw)
        elif Path(text).expanduser().is_dir():
            folder = Path(text).expanduser()
            hf, tok, arch = _from_directory(folder, **kw)
        elif Path(text).expanduser().exists():
            raise ModelLoadError(f"{text} is a file; pass the directory that holds config.json and the weights.")
        else:
            hf, tok, arch = _from_hub(text, **kw)
        name = text
        tok = tokenizer or tok
    else:
        raise ModelLoadError(
            f"cannot load a model from a {type(source).__name__}: pass a directory, a hub id, 'zoo:NAME', "
            "an HF PreTrainedModel or a TransformerBridge."
        )

    has_head = arch.wrap_as is None
    if arch.wrap_as is not None and len(set((getattr(hf, "hf_device_map", None) or {}).values())) > 1:
        raise ModelLoadError(
            f"a headless {arch.hf_class} cannot be placed with a device_map: trilens puts it inside {arch.wrap_as} for "
            f"the bridge, which copies its weights into one module. Load it without device_map (device= chooses "
            f"where), or load the {arch.wrap_as} checkpoint, which places as it is.")
    if arch.wrap_as is not None:
        hf = _wrap_headless(hf, arch)
    if getattr(hf.config, "_attn_implementation", "eager") != "eager":
        hf.set_attn_implementation("eager")  # attention patterns exist only in eager attention
    hf.eval()
    if torch_device is not None:
        hf.to(torch_device)
    offloaded = any(p.device.type == "meta" for p in hf.parameters())
    try:
        bridge = build_bridge(hf, str(name))
        model = Model(bridge, _prepare_tokenizer(tok), arch.family, str(name), has_trained_head=has_head)
    except (RuntimeError, NotImplementedError) as err:
        if not offloaded:
            raise
        raise ModelLoadError(_offload_refused(hf, arch, err)) from err
    model.language_map = _language_map(folder) if folder is not None else None
    return model


def _offload_refused(hf: Any, arch: Architecture, err: Exception) -> str:
    """Why a model whose layers were offloaded (to disk or CPU, by a device_map) cannot be wrapped."""
    return (f"{arch.hf_class} cannot run with offloaded layers: a part of TransformerLens's bridge for it reads weights "
            f"that accelerate holds on disk or CPU outside the HF module that owns them ({type(err).__name__}: {err}). "
            "Give max_memory room for every layer on the devices you have (no 'disk' or 'cpu' offload), or load the "
            "model whole.")


def _language_map(folder: Path) -> dict[str, str] | None:
    """The folder's ``languages.json`` (token -> language, for the language lens), if it has one."""
    path = folder / LANGUAGE_MAP_FILE
    return read_language_map(path) if path.exists() else None


def read_language_map(path: Path) -> dict[str, str]:
    """A JSON file mapping each token to its language (a model folder's ``languages.json``, or the user's own)."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is not JSON ({err}); it should map each token to its language.") from err
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ModelLoadError(f"{path} should be one JSON object mapping each token to its language (a string).")
    return table
